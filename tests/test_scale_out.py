"""Issue 22: evaluate and upscale over torchrun processes (finer units merged on rank 0,
resumable evaluation, --skip-existing, several nodes)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from flowsr_lp import save_flow
from flowsr_lp import evaluate as evaluate_module
from flowsr_lp.cli import main
from flowsr_lp.errors import UsageError
from flowsr_lp.shards import Journal, shares

from conftest import DATA, need
from helpers import blocky_linf, natural_images

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in every process: the same last bits
SET5 = ["--prior", "linf-small-lp", "--data", "Set5", "--scale", "4", "--tau", "0.8", "--runs", "2", "--no-lpips",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def flow_file(tmp_path_factory):
    return str(save_flow(blocky_linf(), tmp_path_factory.mktemp("f") / "blocky.safetensors"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three photos, two of one size (a batch) and one of another."""
    d = tmp_path_factory.mktemp("photos") / "set" / "HR"
    natural_images(d, n=2, size=60)
    natural_images(d / "x", n=1, size=48)
    (d / "x" / "img0.png").rename(d / "small.png")
    (d / "x").rmdir()
    return d.parent


def _tiny(flow_file, photos):
    return ["--flow", flow_file, "--data", str(photos), "--scale", "2", "--tau", "0", "0.8", "--runs", "2",
            "--bicubic", "--no-lpips", "--device", "cpu"]


def _same_outputs(a, b):
    """The files of two evaluate folders hold the same bytes (results, table, crops)."""
    assert (a / "results.csv").read_bytes() == (b / "results.csv").read_bytes()
    assert (a / "table.md").read_bytes() == (b / "table.md").read_bytes()
    crops = sorted(p.name for p in (a / "crops").iterdir())
    assert crops and crops == sorted(p.name for p in (b / "crops").iterdir())
    for name in crops:
        assert (a / "crops" / name).read_bytes() == (b / "crops" / name).read_bytes(), name


def _units(out):
    return [r["unit"] for p in sorted((out / "units").glob("rank-*.jsonl"))
            for r in map(json.loads, p.read_text().splitlines()) if "unit" in r]


# ---- fast ----------------------------------------------------------------------------------
def test_shares_are_contiguous_cover_every_unit_and_balance_the_cost():
    costs = [9, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 4]
    parts = shares(costs, 3)
    assert [i for p in parts for i in p] == list(range(len(costs)))  # in order, each once
    sums = [sum(costs[i] for i in p) for p in parts]
    assert max(sums) - min(sums) <= max(costs) and parts[0] == [0]  # the big unit alone
    few = shares([1] * 4, 8)  # more processes than units: some get none
    assert [i for p in few for i in p] == [0, 1, 2, 3] and max(map(len, few)) == 1
    assert shares([0, 0, 0], 2) == [[0], [1, 2]]  # no cost known: by count


def test_journal_skips_a_line_cut_short_and_refuses_other_settings(tmp_path):
    folder = tmp_path / "units"
    j = Journal(folder, {"--runs": 2, "--tau": [0.8]})
    j.record({"unit": "0/0/0", "rows": {}})
    j.close()
    with open(folder / "rank-0.jsonl", "a") as f:
        f.write('{"unit": "0/0/1", "ro')  # killed in the middle of a line
    j = Journal(folder, {"--runs": 2, "--tau": [0.8]}, resume=True)
    assert j.records == [{"unit": "0/0/0", "rows": {}}]
    j.record({"unit": "0/0/1", "rows": {}})
    j.close()
    assert [r["unit"] for r in Journal(folder, {"--runs": 2, "--tau": [0.8]}, resume=True).records] == ["0/0/0", "0/0/1"]
    with pytest.raises(UsageError, match=r"--tau differs .*\[0\.8\] there, \[0\.9\] now"):
        Journal(folder, {"--runs": 2, "--tau": [0.9]}, resume=True)
    Journal(folder, {"--runs": 3}).close()  # without --resume: a new start
    assert Journal(folder, {"--runs": 3}, resume=True).records == []


def test_resume_after_an_interruption_redoes_nothing_and_gives_the_same_outputs(tmp_path, flow_file, photos,
                                                                               monkeypatch):
    args = _tiny(flow_file, photos)
    assert main(["evaluate", *args, "-o", str(tmp_path / "whole")]) == 0
    total = len(_units(tmp_path / "whole"))
    assert total == 2 * (1 + 1 + 2)  # batches (the two 60x60 photos together, the small one) x units
    run, calls = evaluate_module._Runner.run, []

    def interrupted(self, unit):  # Ctrl-C after 3 units: between the two runs of tau 0.8
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(unit)
        run(self, unit)

    monkeypatch.setattr(evaluate_module._Runner, "run", interrupted)
    assert main(["evaluate", *args, "-o", str(tmp_path / "cut")]) == 130
    assert len(_units(tmp_path / "cut")) == 3 and not (tmp_path / "cut" / "results.csv").exists()
    monkeypatch.setattr(evaluate_module._Runner, "run", lambda self, unit: calls.append(unit) or run(self, unit))
    assert main(["evaluate", *args, "--resume", "-o", str(tmp_path / "cut")]) == 0
    assert len(calls) == total  # 3 before the interruption, the others after it
    assert sorted(_units(tmp_path / "cut")) == sorted(_units(tmp_path / "whole"))  # none recorded twice
    _same_outputs(tmp_path / "whole", tmp_path / "cut")
    assert not list((tmp_path / "cut" / "units" / "samples").iterdir())  # kept only until their runs were all in


def test_resume_with_another_option_is_refused_naming_it(tmp_path, flow_file, photos, capsys):
    args = ["--flow", flow_file, "--data", str(photos), "--scale", "2", "--tau", "0", "--no-lpips", "--device", "cpu"]
    assert main(["evaluate", *args, "-o", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["evaluate", *args, "--runs", "2", "--resume", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--runs differs" in err and "1 there, 2 now" in err


def test_upscale_skip_existing_keeps_whole_pngs_and_redoes_the_others(tmp_path, flow_file, photos):
    args = ["upscale", str(photos / "HR"), "--flow", flow_file, "--scale", "2", "--tau", "0.8", "--device", "cpu"]
    assert main([*args, "-o", str(tmp_path / "ref")]) == 0
    out = tmp_path / "out"
    assert main([*args, "-o", str(out)]) == 0
    whole, cut, gone = (out / n for n in ("img0.png", "img1.png", "small.png"))
    cut.write_bytes(cut.read_bytes()[:-40])  # the end chunk missing
    gone.unlink()
    stamp = whole.stat().st_mtime_ns
    time.sleep(0.01)
    assert main([*args, "-o", str(out), "--skip-existing"]) == 0
    assert whole.stat().st_mtime_ns == stamp  # left alone
    for p in (whole, cut, gone):
        assert p.read_bytes() == (tmp_path / "ref" / p.name).read_bytes()


# ---- torchrun (slow) -----------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_process(args, out):
    r = subprocess.run([sys.executable, "-m", "flowsr_lp", *args, "-o", str(out)], env=ENV, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]


def _torchrun(args, out, *extra, procs=2, logs=None):
    cmd = TORCHRUN + ["--standalone", "--nproc_per_node", str(procs), *extra]
    if logs is not None:
        cmd += ["--log-dir", str(logs), "--redirects", "3"]
    return subprocess.run(cmd + ["-m", "flowsr_lp", *args, "-o", str(out)], env=ENV, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def set5_one(tmp_path_factory):
    """Set5 x4, tau 0.8 (2 runs) and the bundled prior, in one process."""
    need(DATA / "Set5")
    out = tmp_path_factory.mktemp("set5") / "one"
    _one_process(["evaluate", *SET5], out)
    return out


@pytest.mark.slow
def test_two_process_evaluate_of_set5_gives_one_process_values(tmp_path, set5_one):
    r = _torchrun(["evaluate", *SET5], tmp_path / "two", logs=tmp_path / "logs")
    assert r.returncode == 0, r.stderr[-2000:]
    _same_outputs(set5_one, tmp_path / "two")  # every per-image value, bit for bit
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["meta"]["processes"] == 2
    ranks = {p.parent.name: p.read_text() for p in (tmp_path / "logs").rglob("stderr.log")}
    assert "evaluate: 100%" in ranks["0"] and "15/15" in ranks["0"]  # one bar: 5 images x 3 units
    assert ranks["1"] == ""  # the other rank stays quiet
    done = {p.name: [json.loads(line) for line in p.read_text().splitlines()]
            for p in (tmp_path / "two" / "units").glob("rank-*.jsonl")}
    split = [r["group"] for r in done["rank-0.jsonl"] if "group" in r and "unit" not in r
             and any(u.get("unit", "").startswith(r["group"] + "/") for u in done["rank-1.jsonl"])]
    assert split  # a group of runs done by both ranks: its diversity computed on rank 0 at the end


def _rank_pid(torchrun: subprocess.Popen, rank: int) -> int | None:
    kids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(torchrun.pid)], capture_output=True, text=True).stdout
    for pid in map(int, kids.split()):
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


@pytest.mark.slow
def test_sigkill_of_one_rank_then_resume_gives_the_same_results(tmp_path, set5_one):
    out = tmp_path / "killed"
    cmd = TORCHRUN + ["--standalone", "--nproc_per_node", "2", "-m", "flowsr_lp", "evaluate", *SET5, "-o", str(out)]
    job = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    journal = out / "units" / "rank-1.jsonl"
    deadline = time.time() + 300
    while not (journal.is_file() and journal.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.02)
    os.kill(_rank_pid(job, 1), signal.SIGKILL)  # rank 1, mid-way through its share
    assert job.wait(timeout=300) != 0
    assert not (out / "results.csv").exists()
    before = len(_units(out))
    assert 0 < before < 15
    r = _torchrun(["evaluate", *SET5, "--resume"], out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(_units(out)) == sorted(_units(set5_one))  # what was recorded was not done again
    _same_outputs(set5_one, out)


@pytest.mark.slow
def test_two_node_job_over_a_loopback_rendezvous(tmp_path, flow_file, photos):
    args = _tiny(flow_file, photos)
    _one_process(["evaluate", *args], tmp_path / "one")
    port = _free_port()
    agents = [subprocess.Popen(TORCHRUN + ["--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node),
                                           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
                                           "--rdzv_id", "flowsr-lp-test", "-m", "flowsr_lp", "evaluate", *args,
                                           "-o", str(tmp_path / "two")],
                               env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for node in (0, 1)]
    for agent in agents:
        _, err = agent.communicate(timeout=600)
        assert agent.returncode == 0, err[-2000:]
    _same_outputs(tmp_path / "one", tmp_path / "two")
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["meta"]["processes"] == 2
    assert {p.name for p in (tmp_path / "two" / "units").glob("rank-*.jsonl")} == {"rank-0.jsonl", "rank-1.jsonl"}


@pytest.mark.slow
def test_two_process_upscale_of_a_folder_writes_the_files_of_one_process(tmp_path, flow_file, photos):
    args = ["upscale", str(photos / "HR"), "--flow", flow_file, "--scale", "2", "--tau", "0.8", "--seed", "3",
            "--draws", "2", "--device", "cpu"]
    _one_process(args, tmp_path / "one")
    r = _torchrun(args, tmp_path / "two", logs=tmp_path / "logs")
    assert r.returncode == 0, r.stderr[-2000:]
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(names) == 6 and names == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    ranks = {p.parent.name: p.read_text() for p in (tmp_path / "logs").rglob("stderr.log")}
    assert "6/6" in ranks["0"] and "3 of 3 image(s) written" in ranks["0"] and ranks["1"] == ""
