"""Hostile training runs (issue 11, items 7, 12, 13, 15, 16): damaged checkpoints and logs,
bogus devices and fresh runs over old ones are one line and exit 2; distributed training of
every flow family works; fp16 has a gradient scaler; rewritten loss weights are announced."""
import shutil
import struct
import subprocess
import sys
import zipfile

import pytest
import torch
import yaml

from flowsr_lp.cli import main
from flowsr_lp.train.config import load_config
from flowsr_lp.train.run import train
from flowsr_lp.train.trainer import state_digest

from helpers import read_csv, training_fixtures, write_recipe


images, flow_file = training_fixtures(n=4, size=64)


def recipe(tmp_path, images, flow_file, name="r", iterations=4, **extra):
    cfg = dict(task="prior", flow={"checkpoint": flow_file},
               prior={"family": "linf-lp", "config": {"generator": "unet", "dim": 8, "depth": 2}},
               data={"train": {"folders": [images], "repeat": 2},
                     "crop": {"kind": "linf-lp", "lr_size": 16, "window": 16, "scale_min": 1, "scale_max": 2}},
               optim={"batch_size": 2, "iterations": iterations, "lr": 1e-3},
               loss={"perceptual": "none", "pixel_weight": 1.0, "latent_weight": 0.1},
               run={"out": str(tmp_path / name), "log_every": 1, "ckpt_every": 2, "seed": 1, "device": "cpu"})
    for k, v in extra.items():
        cfg[k].update(v)
    return write_recipe(tmp_path / f"{name}.yaml", **cfg)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, images, flow_file):
    """A finished 4-step run: (recipe, its output folder)."""
    tmp = tmp_path_factory.mktemp("finished")
    path = recipe(tmp, images, flow_file, iterations=4)
    assert main(["train-prior", path]) == 0
    return path, tmp / "r"


def _copy_run(finished, tmp_path, images, flow_file, iterations=8):
    """A copy of the finished run with a recipe that asks for more steps (so resuming has work)."""
    _, out = finished
    shutil.copytree(out, tmp_path / "r")
    return recipe(tmp_path, images, flow_file, iterations=iterations)


def _one_line_exit_2(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and "Traceback" not in err[0], err
    assert match in err[0], err[0]
    return err[0]


# ---- item 16: fresh run over an old one; torn / garbage logs; bogus devices ----------------------
def test_a_fresh_run_over_an_earlier_checkpoint_is_refused(finished, tmp_path, images, flow_file, capsys):
    path = _copy_run(finished, tmp_path, images, flow_file)
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    _one_line_exit_2(capsys, ["train-prior", path], "--overwrite")
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before
    _one_line_exit_2(capsys, ["train-prior", path, "--resume", "--overwrite"], "give one of them")


def test_overwrite_starts_again(finished, tmp_path, images, flow_file):
    path = _copy_run(finished, tmp_path, images, flow_file, iterations=2)
    assert main(["train-prior", path, "--overwrite"]) == 0
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["step"] == 2
    assert [r["step"] for r in read_csv(tmp_path / "r" / "log.csv")] == ["1", "2"]


def test_a_torn_last_log_row_is_dropped_on_resume(finished, tmp_path, images, flow_file):
    path = _copy_run(finished, tmp_path, images, flow_file, iterations=6)
    log = tmp_path / "r" / "log.csv"
    log.write_text(log.read_text() + "5,1.250,0.0")  # a kill mid-append: no newline, too few fields
    assert main(["train-prior", path, "--resume"]) == 0
    rows = read_csv(log)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(None not in r.values() and r["loss"] for r in rows)


GARBAGE_LOGS = {
    "binary": b"\x00\xff\xfe\x89PNG garbage \x80\x81",
    "no-step-column": b"alpha,beta\n1,2\n3,4\n",
    "torn-middle-row": b"step,epoch,loss\n1,0.5,0.3\n2,0.5\n3,1.5,0.2\n",
    "text-step": b"step,epoch,loss\n1,0.5,0.3\nfoo,1.0,0.2\n4,2.0,0.1\n",
}


@pytest.mark.parametrize("case", sorted(GARBAGE_LOGS))
def test_a_garbage_log_on_resume_is_one_line(finished, tmp_path, images, flow_file, capsys, case):
    path = _copy_run(finished, tmp_path, images, flow_file)
    (tmp_path / "r" / "log.csv").write_bytes(GARBAGE_LOGS[case])
    _one_line_exit_2(capsys, ["train-prior", path, "--resume"], "log.csv")


@pytest.mark.parametrize("device", ["bogus", "cuda:7", "cpu:x", "mps", "gpu"])
def test_an_unusable_training_device_is_one_line(tmp_path, images, flow_file, capsys, device):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    _one_line_exit_2(capsys, ["train-prior", recipe(tmp_path, images, flow_file), "--device", device], "device")
    assert not (tmp_path / "r").exists()


# ---- item 7 (training part): damaged checkpoints ----------------------------------------------
def _flip_a_tensor_byte(path):
    """Flip one bit in the middle of the largest tensor stored in a torch.save zip."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x10]))


def _rewrite(path, edit, checksum=True):
    """Edit a checkpoint's state; with `checksum`, sign it again, as a buggy tool would."""
    state = torch.load(path, weights_only=True)
    edit(state)
    if checksum and "checksum" in state:
        state["checksum"] = state_digest(state)
    torch.save(state, path)


def _replace_state(checksum=True, **changes):
    def edit(state):
        state.update(changes)
        for k in [k for k, v in changes.items() if v is ...]:
            del state[k]
    return lambda path: _rewrite(path, edit, checksum)


def _other_model(path):
    _rewrite(path, lambda st: st.update(model={k + ".x" if i == 0 else k: v for i, (k, v) in enumerate(st["model"].items())}))


def _other_shapes(path):
    _rewrite(path, lambda st: st.update(model={k: torch.zeros([s + 1 for s in v.shape]) for k, v in st["model"].items()}))


DAMAGE = {
    "empty": (lambda p: p.write_bytes(b""), "unreadable"),
    "garbage-bytes": (lambda p: p.write_bytes(b"PK\x03\x04 not really a zip" * 20), "unreadable"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "unreadable"),
    "a-list": (lambda p: torch.save([1, 2, 3], p), "not a flowsr-lp training checkpoint"),
    "a-tensor": (lambda p: torch.save(torch.zeros(3), p), "not a flowsr-lp training checkpoint"),
    "no-model": (_replace_state(model=...), "not a flowsr-lp training checkpoint"),
    "no-optimizer": (_replace_state(optimizer=...), "not a flowsr-lp training checkpoint"),
    "step-a-string": (_replace_state(step="four"), "step 'four'"),
    "step-negative": (_replace_state(step=-3), "step -3"),
    "step-a-float": (_replace_state(step=2.5), "step 2.5"),
    "step-past-the-end": (_replace_state(step=10**9), "step 1000000000"),
    "another-models-keys": (_other_model, "does not fit"),
    "another-models-shapes": (_other_shapes, "does not fit"),
    "rng-garbage": (_replace_state(rng={"torch": "seed"}), "does not fit"),
    "flipped-byte": (_flip_a_tensor_byte, "checksum mismatch"),
    "edited-step": (_replace_state(step=1, checksum=False), "checksum mismatch"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_checkpoint_on_resume_is_one_line(finished, tmp_path, images, flow_file, capsys, case):
    path = _copy_run(finished, tmp_path, images, flow_file)
    damage, match = DAMAGE[case]
    damage(tmp_path / "r" / "checkpoint.pt")
    _one_line_exit_2(capsys, ["train-prior", path, "--resume"], match)


def test_the_checksum_of_a_sound_checkpoint_verifies(finished, tmp_path, images, flow_file):
    path = _copy_run(finished, tmp_path, images, flow_file, iterations=6)
    assert len(torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["checksum"]) == 64
    assert main(["train-prior", path, "--resume"]) == 0
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["step"] == 6


# ---- items 13, 15: fp16 scaler; rewritten loss weights -------------------------------------------
@pytest.mark.parametrize("amp", ["fp16", "bf16", "none"])
def test_fp16_trains_with_a_gradient_scaler(tmp_path, images, flow_file, amp):
    path = recipe(tmp_path, images, flow_file, iterations=2, run={"amp": amp})
    assert main(["train-prior", path]) == 0
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ("scaler" in state) == (amp == "fp16")
    if amp == "fp16":
        assert state["scaler"]["scale"] > 0 and state["scaler"]["_growth_tracker"] >= 0


def test_rewritten_loss_weights_are_announced_and_recorded(tmp_path, images, flow_file, capsys):
    path = recipe(tmp_path, images, flow_file, iterations=2, loss={"pixel_weight": 0.0, "latent_weight": 0.0})
    assert main(["train-prior", path]) == 0
    err = capsys.readouterr().err
    assert "loss weights changed: loss.pixel_weight 0 -> 1, loss.latent_weight 0 -> 0.1" in err
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["loss"]["pixel_weight"] == 1.0 and saved["loss"]["latent_weight"] == 0.1
    assert "pixel_weight 0 -> 1" in saved["loss_weights_changed"]
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert "loss_weights_changed" in state["config"]


def test_explicit_loss_weights_are_not_rewritten(tmp_path, images, flow_file, capsys):
    path = recipe(tmp_path, images, flow_file, iterations=2, loss={"pixel_weight": 2.0, "latent_weight": 0.0})
    assert main(["train-prior", path]) == 0
    assert "loss weights changed" not in capsys.readouterr().err
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["loss"]["pixel_weight"] == 2.0 and "loss_weights_changed" not in saved


# ---- item 12: two-process training of every flow family ----------------------------------------
FAMILIES = {
    "srflow": ({"scale": 4, "nf": 8, "nb": 2, "gc": 4, "K": 1, "taps": [0, 1], "hidden_channels": 8},
               {"kind": "srflow", "hr_size": 32, "scale": 4}, ["RRDB.HRconv", "RRDB.conv_last", "RRDB.upconv2"]),
    "linf-patch": ({"encoder": "rrdb", "encoder_args": {"nf": 8, "nb": 1, "gc": 4}, "patch_size": 3,
                    "hidden_dim": 16, "flow_layers": 2},
                   {"kind": "linf", "lr_size": 12, "scale_min": 1, "scale_max": 3}, ["encoder.HRconv", "encoder.conv_last"]),
    "linf": ({"encoder": "edsr-baseline", "encoder_args": {"n_resblocks": 1, "n_feats": 8}, "hidden_dim": 16,
              "flow_layers": 2}, {"kind": "linf", "lr_size": 12, "scale_min": 1, "scale_max": 3}, []),
}


def flow_recipe(tmp_path, images, family, port):
    config, crop, _ = FAMILIES[family]
    return write_recipe(tmp_path / f"{family}.yaml", task="flow", flow={"family": family, "config": config},
                        data={"train": {"folders": [images], "repeat": 2}, "crop": crop},
                        optim={"batch_size": 4, "iterations": 3, "lr": 5e-4},
                        run={"out": str(tmp_path / family), "log_every": 1, "ckpt_every": 3, "seed": 0,
                             "device": "cpu"})


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_two_process_gloo_training_of_every_flow_family(tmp_path, images, family):
    path = flow_recipe(tmp_path, images, family, 0)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "flowsr_lp", "train-flow", path]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    state = torch.load(tmp_path / family / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3
    for name in FAMILIES[family][2]:  # the layers the flow never reads are frozen, and said so
        assert name in r.stderr
    assert [r["step"] for r in read_csv(tmp_path / family / "log.csv")] == ["1", "2", "3"]


def test_unused_parameters_are_frozen_in_one_process_too(tmp_path, images):
    """The same parameter set trains with 1 or N processes, so checkpoints move between them."""
    path = flow_recipe(tmp_path, images, "srflow", 0)
    cfg = load_config(path, ["optim.iterations=1"], "flow")
    train(cfg)
    state = torch.load(tmp_path / "srflow" / "checkpoint.pt", weights_only=True)
    n_trainable = len(state["optimizer"]["param_groups"][0]["params"])
    assert n_trainable == len(state["model"]) - 8  # HRconv, conv_last, upconv2 (w, b) + the flow's unused f
