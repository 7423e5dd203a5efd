"""Hostile command lines (issue 11, items 6, 7 and 8): bad options stop with exit 2 before any
work; a failing input is one `error:` line and the other inputs still run; no traceback."""
import errno
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowsr_lp import save_flow, save_prior
from flowsr_lp.cli import main

from helpers import tiny_linf, tiny_linf_prior


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return str(save_flow(tiny_linf(3), d / "flow.safetensors")), str(save_prior(tiny_linf_prior(), d / "prior.safetensors"))


def rgb(path, h=10, w=12, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def upscale(capsys, *args):
    code = main(["upscale", "--quiet", *map(str, args)])
    return code, capsys.readouterr().err


def assert_clean(err: str, n_errors: int = 1) -> list[str]:
    """No traceback; exactly `n_errors` error lines, each a single line."""
    assert "Traceback" not in err and "File \"" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == n_errors, err
    return errors


# ---- item 8: options are validated once, up front (exit 2, nothing written) -----------------------
BAD_OPTIONS = [
    ("--tau", "nan"), ("--tau", "inf"), ("--tau", "-0.5"), ("--tau", "warm"), ("--tau", "1e6"), ("--tau", "10.01"),
    ("--threads", "0"), ("--max-megapixels", "nan"), ("--max-megapixels", "0"), ("--max-megapixels", "-3"), ("--max-megapixels", "inf"),
    ("--seed", "-1"), ("--seed", str(2**63)), ("--seed", "1.5"), ("--seed", "lucky"),
    ("--retries", "-1"), ("--prior-max-pixels", "0"),
    ("--scale", "nan"), ("--scale", "0"), ("--scale", "-2"), ("--scale", "inf"), ("--scale", "2,3,4"),
    ("--size", "0x5"), ("--size", "5x"), ("--size", "axb"),
]


@pytest.mark.parametrize("option,value", BAD_OPTIONS, ids=[f"{o}={v}" for o, v in BAD_OPTIONS])
def test_bad_upscale_options_exit_2_before_any_work(tmp_path, capsys, models, option, value):
    src = rgb(tmp_path / "a.png")
    extra = [] if option in ("--scale", "--size") else ["--scale", "2"]
    with pytest.raises(SystemExit) as info:
        main(["upscale", str(src), "--flow", models[0], *extra, option, value, "-o", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert_clean(err) and option in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device", ["bogus", "cuda:7", "meta", "cpu:x", "xpu"])
def test_unusable_devices_exit_2_before_any_work(tmp_path, capsys, models, device):
    if device == "xpu" and getattr(torch, "xpu", None) is not None and torch.xpu.is_available():
        pytest.skip("this machine has an XPU")
    code, err = upscale(capsys, rgb(tmp_path / "a.png"), "--flow", models[0], "--scale", "2",
                        "--device", device, "-o", tmp_path / "out")
    assert code == 2 and "--device" in assert_clean(err)[0]
    assert not (tmp_path / "out").exists()


def test_o_naming_an_existing_file_with_several_inputs(tmp_path, capsys, models):
    a, b = rgb(tmp_path / "a.png"), rgb(tmp_path / "b.png", seed=1)
    target = rgb(tmp_path / "existing.png", seed=2)
    before = target.read_bytes()
    code, err = upscale(capsys, a, b, "--flow", models[0], "--scale", "2", "-o", target)
    assert code == 2 and "2 inputs need an output folder" in assert_clean(err)[0]
    assert target.read_bytes() == before
    code, err = upscale(capsys, a, b, "--flow", models[0], "--scale", "2", "-o", tmp_path / "new.png")
    assert code == 2 and "named like an image file" in assert_clean(err)[0]
    plain = tmp_path / "notes"
    plain.write_text("a file without suffix")
    code, err = upscale(capsys, a, "--flow", models[0], "--scale", "2", "-o", plain)
    assert code == 2 and "not a folder" in assert_clean(err)[0]


# ---- item 6: per-input failures are one line and the rest still run ---------------------------------
def _png_declaring(path, w, h):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * (w + 1) * 2)) + chunk(b"IEND", b""))
    return path


BAD_INPUTS = {
    "symlink-loop": lambda d: (os.symlink(d / "loop.png", d / "loop.png"), d / "loop.png")[1],
    "dangling-symlink": lambda d: (os.symlink(d / "gone.png", d / "dangling.png"), d / "dangling.png")[1],
    "missing": lambda d: d / "missing.png",
    "empty-file": lambda d: (d / "empty.png").write_bytes(b"") and d / "empty.png" or d / "empty.png",
    "text-file": lambda d: (d / "text.png").write_text("not an image") and d / "text.png",
    "truncated-png": lambda d: (d / "cut.png").write_bytes(rgb(d / "full.png", 40, 40).read_bytes()[:300]) and d / "cut.png",
    "12000x12000-header": lambda d: _png_declaring(d / "bomb.png", 12000, 12000),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_a_bad_input_is_one_error_line_and_the_others_run(tmp_path, capsys, models, case):
    good = rgb(tmp_path / "good.png")
    bad = BAD_INPUTS[case](tmp_path)
    code, err = upscale(capsys, bad, good, "--flow", models[0], "--scale", "2", "-o", tmp_path / "out")
    assert code == 1
    assert str(bad) in assert_clean(err)[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]


def test_a_folder_with_a_symlink_loop_in_it(tmp_path, capsys, models):
    folder = tmp_path / "in"
    folder.mkdir()
    rgb(folder / "good.png")
    os.symlink(folder / "loop.png", folder / "loop.png")
    os.symlink(folder, folder / "self")  # a directory loop
    code, err = upscale(capsys, folder, "--flow", models[0], "--scale", "2", "-o", tmp_path / "out")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.png"]


def test_a_full_disk_is_one_line_per_input_and_the_rest_still_run(tmp_path, capsys, models, monkeypatch):
    import flowsr_lp.upscale as up

    real = up.write_png

    def fill_up(img, path):
        if path.name == "a.png":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(img, path)

    monkeypatch.setattr(up, "write_png", fill_up)
    a, b = rgb(tmp_path / "a.png"), rgb(tmp_path / "b.png", seed=1)
    code, err = upscale(capsys, a, b, "--flow", models[0], "--scale", "2", "-o", tmp_path / "out")
    assert code == 1 and "No space left on device" in assert_clean(err)[0]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b.png"]


def test_an_unwritable_output_folder_is_one_line_per_input(tmp_path, capsys, models):
    a, b = rgb(tmp_path / "a.png"), rgb(tmp_path / "b.png", seed=1)
    out = "/proc/flowsr-lp-cannot-write-here"  # not writable, even by root
    code, err = upscale(capsys, a, b, "--flow", models[0], "--scale", "2", "-o", out)
    assert code == 1
    assert all("cannot write" in line for line in assert_clean(err, 2))


def _official_prior(tmp_path, **changes):
    spec = {"name": "unet", "args": {"dim": 8, "depth": 3}, "sd": tiny_linf_prior().state_dict()}
    spec.update(changes)
    torch.save({"prior_model": spec}, tmp_path / "prior.pth")
    return tmp_path / "prior.pth"


MALFORMED = {
    "args-a-list": lambda d: _official_prior(d, args=[8, 3]),
    "missing-prior-keys": lambda d: _official_prior(d, sd={k: v for k, v in tiny_linf_prior().state_dict().items()
                                                           if not k.startswith("input_proj.")}),
    "sd-a-string": lambda d: _official_prior(d, sd="weights"),
    "not-a-dict": lambda d: (torch.save([1, 2], d / "prior.pth"), d / "prior.pth")[1],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_checkpoint_fields_exit_2(tmp_path, capsys, models, case):
    prior = MALFORMED[case](tmp_path)
    code, err = upscale(capsys, rgb(tmp_path / "a.png"), "--flow", models[0], "--prior", prior, "--scale", "2",
                        "-o", tmp_path / "out")
    assert code == 2 and "prior.pth" in assert_clean(err)[0]
    assert not (tmp_path / "out").exists()


def test_a_flow_with_args_of_the_wrong_type(tmp_path, capsys):
    flow = tiny_linf(3)
    torch.save({"model": {"name": "linf-patch", "args": "patch_size=3", "sd": flow.state_dict()}}, tmp_path / "f.pth")
    code, err = upscale(capsys, rgb(tmp_path / "a.png"), "--flow", tmp_path / "f.pth", "--scale", "2",
                        "-o", tmp_path / "out")
    assert code == 2 and "malformed checkpoint fields" in assert_clean(err)[0]


# ---- items 7, 8: evaluate, temperature-map, demo ----------------------------------------------------
@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("set") / "Mini" / "HR"
    d.mkdir(parents=True)
    for i in range(2):
        rgb(d / f"img{i}.png", 24, 24, seed=i)
    return d.parent


def evaluate(capsys, *args):
    code = main(["evaluate", "--quiet", "--no-lpips", "--device", "cpu", *map(str, args)])
    return code, capsys.readouterr()


BAD_EVAL_OPTIONS = [("--tau", "nan"), ("--tau", "inf"), ("--tau", "-1"), ("--tau", "1e6"), ("--scales", "nan"), ("--scales", "0"),
                    ("--scales", "inf"), ("--max-images", "0"), ("--max-images", "-2"), ("--runs", "0"),
                    ("--seed", "-5"), ("--report-images", "-1")]


@pytest.mark.parametrize("option,value", BAD_EVAL_OPTIONS, ids=[f"{o}={v}" for o, v in BAD_EVAL_OPTIONS])
def test_bad_evaluate_options_exit_2(tmp_path, capsys, models, small_set, option, value):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--flow", models[0], "--data", str(small_set), option, value, "-o", str(tmp_path / "ev")])
    assert info.value.code == 2
    assert_clean(capsys.readouterr().err)
    assert not (tmp_path / "ev").exists()


def test_evaluate_reports_a_corrupt_image_and_finishes(tmp_path, capsys, models, small_set):
    data = tmp_path / "Mini"
    import shutil

    shutil.copytree(small_set, data)
    (data / "HR" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    code, out = evaluate(capsys, "--flow", models[0], "--data", data, "--scales", "2", "--tau", "0.5",
                         "-o", tmp_path / "ev")
    assert code == 1, out.err  # some inputs failed; the report is still written
    assert "broken.png" in assert_clean(out.err)[0]
    assert "1 input(s) could not be used" in out.err
    md = (tmp_path / "ev" / "table.md").read_text()
    assert "Mini x2 (2 images)" in md and "| tau=0.5 | 2 |" in md
    import json

    notes = json.loads((tmp_path / "ev" / "summary.json").read_text())["notes"]
    assert any("broken.png left out of every mean" in n for n in notes)


@pytest.mark.parametrize("action", ["download", "prepare", "list"])
def test_a_data_root_that_is_a_file_is_one_line_exit_2(tmp_path, capsys, action):
    root = tmp_path / "afile"
    root.write_text("not a folder")
    assert main(["data", action, *(["benchmark"] if action != "list" else []), "--root", str(root)]) == 2
    assert assert_clean(capsys.readouterr().err)[0] == f"flowsr-lp: error: --root {root}: not a folder"


def test_an_os_error_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    """What the system refuses (here a folder that cannot be made) is one line, never a traceback."""
    def refuse(*args, **kwargs):
        raise NotADirectoryError(20, "Not a directory", str(tmp_path / "x" / "downloads"))

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert main(["data", "download", "benchmark", "--root", str(tmp_path / "x")]) == 2
    err = assert_clean(capsys.readouterr().err)[0]
    assert err == f"flowsr-lp: error: {tmp_path / 'x' / 'downloads'}: Not a directory"


def test_temperature_map_on_a_1x1_image_is_one_line(tmp_path, capsys, models):
    img = rgb(tmp_path / "one.png", 1, 1)
    code = main(["temperature-map", str(img), "--flow", models[0], "--metric", "psnr", "-o", str(tmp_path / "tm")])
    assert code == 2 and "too small" in assert_clean(capsys.readouterr().err)[0]


@pytest.mark.parametrize("image", [b"", b"not a png"], ids=["empty", "text"])
def test_temperature_map_on_a_broken_image_is_one_line(tmp_path, capsys, models, image):
    (tmp_path / "x.png").write_bytes(image)
    code = main(["temperature-map", str(tmp_path / "x.png"), "--flow", models[0], "--metric", "psnr",
                 "-o", str(tmp_path / "tm")])
    assert code == 2 and "x.png" in assert_clean(capsys.readouterr().err)[0]


@pytest.mark.parametrize("option,value", [("--region", "0"), ("--seed", "-1"), ("--scale", "nan"), ("--taus", "nan")])
def test_bad_temperature_map_options_exit_2(tmp_path, capsys, models, option, value):
    img = rgb(tmp_path / "a.png", 24, 24)
    with pytest.raises(SystemExit) as info:
        main(["temperature-map", str(img), "--flow", models[0], option, value, "-o", str(tmp_path / "tm")])
    assert info.value.code == 2
    assert_clean(capsys.readouterr().err)


@pytest.mark.parametrize("args", [["--images", "0"], ["--size", "0"], ["--images", "5"], ["--size", "20"],
                                  ["--size", "5000"], ["--runs", "0"]], ids=lambda a: "=".join(a))
def test_bad_demo_options_are_one_line(tmp_path, capsys, args):
    try:
        code = main(["demo", "--quiet", *args, "-o", str(tmp_path / "demo")])
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert_clean(capsys.readouterr().err)
    assert not (tmp_path / "demo").exists()


def test_max_megapixels_above_the_api_default_is_honoured(tmp_path, capsys, models, monkeypatch):
    """--max-megapixels sets the SuperResolver's limit too (its default is 64 MP)."""
    import flowsr_lp.pipeline as pipeline

    # as if the API default were 100 pixels: only the CLI's limit can let a 20x24 output through
    monkeypatch.setitem(pipeline.SuperResolver.__init__.__kwdefaults__, "max_output_pixels", 100)
    code, err = upscale(capsys, rgb(tmp_path / "a.png"), "--flow", models[0], "--scale", "2",
                        "--max-megapixels", "1", "-o", tmp_path / "out")
    assert code == 0, err
