"""One device check (issue 23): what the CPU tests cannot show, run on a GPU in a few minutes,
written as one JSON report.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--out report.json] [--quick] [--only a,b]

Checks (each "pass", "fail", "error" or "skip", with its figures):
  parity     bundled LINF / SRFlow, with and without their priors, fp32 (TF32 off), bf16,
             fp16 on the device against fp32 on the CPU
  reference  the official reference vectors (../shared/reference) computed on the device
  seeds      integer seeds, seed lists (a batch gives what each image gives alone) and
             generators on the device
  tiling     forced prior tiling and forced image tiling against whole runs
  oom        out-of-memory recovery of `upscale` under set_per_process_memory_fraction (on
             the CPU: an out-of-memory raised by a stub)
  evaluate   `evaluate` rows on the device against a CPU run
  training   train-prior and train-flow, 10 steps, against 5 + `--resume` 5: equal on the
             CPU; on CUDA (deterministic algorithms where torch has them) within 1 % of what
             steps 6-10 moved the weights, as atomics differ in the last bits
  app        the app's model cache under 2 concurrent requests: one load, equal outputs
  speed      images/s and peak memory, 512x512 LR x4, LINF-LP, RRDB-LINF-LP, SRFlow-LP
             (full-size, random weights), batch 1 and 8, fp32 and bf16
`--device cpu --quick` is the dry run CI takes (small sizes, CPU against CPU).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FLOWSR_LP_SHARED", ROOT.parent / "shared"))


class Run:
    """What every check shares: the device, the mode, a scratch folder."""

    def __init__(self, device: str, quick: bool, tmp: Path):
        self.device, self.quick, self.tmp = torch.device(device), quick, tmp
        self.cpu = torch.device("cpu")

    def photo(self, side: int, i: int = 0) -> torch.Tensor:
        """1 x 3 x side x side crop of a scikit-image photo in [0, 1]."""
        img = [skdata.astronaut(), skdata.coffee(), skdata.chelsea()][i % 3]
        t = torch.from_numpy(np.ascontiguousarray(img[64 : 64 + side, 64 : 64 + side])).permute(2, 0, 1)
        return t[None].float() / 255

    def models(self, name: str, device, with_prior: bool):
        from flowsr_lp import load_flow, load_prior
        return load_flow(name, device=device), load_prior(f"{name}-lp", device=device) if with_prior else None


def _diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a.float().cpu().clamp(0, 1) - b.float().cpu().clamp(0, 1)).abs()
    return {"max": round(d.max().item(), 6), "mean": round(d.mean().item(), 7)}


# ---- checks: each returns (ok, figures) ------------------------------------------------------
def check_parity(run: Run):
    from flowsr_lp import SuperResolver, TemperatureSampling
    lr, out, ok = run.photo(24 if run.quick else 64), {}, True
    tol = {"fp32": 1e-3, "bf16": 4 / 255, "fp16": 4 / 255}  # mean |diff| for bf16 / fp16
    for name in ("linf-small", "srflow-small"):
        for with_prior in (False, True):
            strategy = None if with_prior else TemperatureSampling(0.5, seed=0)
            ref = SuperResolver(*run.models(name, run.cpu, with_prior))(lr, scale=4, strategy=strategy).images
            for prec in ("fp32", "bf16", "fp16"):
                key = f"{name}{'-lp' if with_prior else ''} {prec}"
                try:
                    res = SuperResolver(*run.models(name, run.device, with_prior), precision=prec)(
                        lr, scale=4, strategy=strategy)
                except Exception as e:  # a precision this device lacks: recorded, not fatal
                    out[key] = {"error": str(e).splitlines()[0]}
                    continue
                d = {**_diff(res.images, ref), "finite": res.all_finite}
                d["ok"] = res.all_finite and (d["max"] if prec == "fp32" else d["mean"]) <= tol[prec]
                ok &= d["ok"]
                out[key] = d
    return ok, out


def check_reference(run: Run):
    from flowsr_lp import SuperResolver, load_flow, load_prior
    ref = SHARED / "reference"
    if not ref.is_dir():
        return None, {"skip": f"{ref} is absent"}
    dev, out = run.device, {}

    def vectors(name):
        v = torch.load(ref / f"{name}.vectors.pt", weights_only=True)
        return {k: [x.to(dev) for x in t] if isinstance(t, list) else t.to(dev) if torch.is_tensor(t) else t
                for k, t in v.items()}

    def record(key, a, b, atol=1e-4):
        err = (a - b).abs().max().item()
        out[key] = {"max_abs": err, "ok": bool(torch.allclose(a, b, atol=atol, rtol=1e-4))}

    with torch.no_grad():
        for name in ["linf-patch-edsr-baseline"] + ([] if run.quick else ["linf-patch-rrdb-nb2"]):
            flow, v = load_flow(ref / f"{name}.pth", device=dev), vectors(name)
            prior = load_prior(ref / f"{name}-LP.pth", device=dev)
            lr = v["inp"] * 0.5 + 0.5
            ctx = flow.condition(lr, tuple(v["hr"].shape[-2:]))
            record(f"{name} z_gt", flow.encode(v["hr"][None], ctx)[0][0], v["z_gt"])
            record(f"{name} residual_from_z_fixed", flow.decode_residual((v["z_fixed"],), ctx),
                   v["residual_from_z_fixed"])
            record(f"{name} initial prior", flow.initial_prior(lr, ctx)[0], v["z_initial"])
            record(f"{name} z_prior", prior((v["z_initial"],), lr)[0], v["z_prior"])
            sr = SuperResolver(flow, prior).upscale(lr, tuple(v["hr"].shape[-2:]))
            record(f"{name} sr_lp", (sr - 0.5) / 0.5, v["sr_lp"], atol=1e-3)
        for name in ["srflow-4x-nb4-k2"] + ([] if run.quick else ["srflow-8x-nb4-k1"]):
            opt = json.loads((ref / f"{name}.opt.json").read_text())
            flow = load_flow(ref / f"{name}.pth", device=dev, taps=opt["network_G"]["flow"]["stackRRDB"]["blocks"])
            v = vectors(name)
            ctx = flow.condition(v["lr"], tuple(v["hr"].shape[-2:]))
            for i, (a, b) in enumerate(zip(flow.encode(v["hr"], ctx)[0], v["latents_gt"])):
                record(f"{name} latent {i}", a, b)
            record(f"{name} decode fixed", flow.decode(tuple(v["latents_fixed"]), ctx), v["sr_from_fixed"])
            record(f"{name} decode LP latents", flow.decode(tuple(v["latents_prior"]), ctx), v["sr_lp"])
    return all(r["ok"] for r in out.values()), out


def check_seeds(run: Run):
    from flowsr_lp import SuperResolver, TemperatureSampling
    side = 16 if run.quick else 48
    lr = torch.cat([run.photo(side, 0), run.photo(side, 1)])
    resolver = SuperResolver(run.models("linf-small", run.device, False)[0])
    both = resolver(lr, scale=3, strategy=TemperatureSampling(0.6, seed=[1, 2])).images
    alone = torch.cat([resolver(lr[i : i + 1], scale=3, strategy=TemperatureSampling(0.6, seed=s)).images
                       for i, s in enumerate((1, 2))])
    cpu = SuperResolver(run.models("linf-small", run.cpu, False)[0])(
        lr[:1], scale=3, strategy=TemperatureSampling(0.6, seed=1)).images

    def on_device_generator():
        g = torch.Generator(run.device).manual_seed(7)
        return resolver(lr, scale=3, strategy=TemperatureSampling(0.6, generator=g)).images

    g1, g2 = on_device_generator(), on_device_generator()
    out = {"seed list vs alone": _diff(both, alone), "int seed vs CPU": _diff(alone[:1], cpu),
           "device generator repeatable": bool(torch.equal(g1, g2)),
           "device generator differs from seeds": _diff(g1, both)["max"] > 0.01}
    ok = (out["seed list vs alone"]["max"] <= 1e-4 and out["int seed vs CPU"]["max"] <= 1e-3
          and out["device generator repeatable"] and out["device generator differs from seeds"])
    return ok, out


def check_tiling(run: Run):
    from flowsr_lp import SuperResolver, TemperatureSampling
    lr = run.photo(36 if run.quick else 96)
    flow, prior = run.models("linf-small", run.device, True)
    whole = SuperResolver(flow, prior)(lr, scale=3).images
    tiled_prior = SuperResolver(flow, prior, prior_max_pixels=0, prior_tile=16 if run.quick else 32,
                                prior_overlap=8, prior_margin=8 if run.quick else 16)(lr, scale=3).images
    resolver = SuperResolver(flow)
    at0 = resolver(lr, scale=3, strategy=TemperatureSampling(0.0)).images
    tiles = resolver(lr, scale=3, strategy=TemperatureSampling(0.0), tile=18 if run.quick else 48).images
    out = {"prior tiles vs whole": _diff(tiled_prior, whole), "image tiles vs whole (tau 0)": _diff(tiles, at0)}
    return out["prior tiles vs whole"]["mean"] <= 0.01 and out["image tiles vs whole (tau 0)"]["max"] <= 2e-3, out


def check_oom(run: Run):
    from flowsr_lp import SuperResolver
    from flowsr_lp.upscale import upscale_files
    side, scale = (320, 2) if run.quick else (512, 4)  # over a 256-pixel tile and its margin
    src = run.tmp / "oom" / "in.png"
    src.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((run.photo(side)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(src)
    resolver = SuperResolver(*run.models("linf-small", run.device, True))
    out, restore, logs = {}, None, []
    handler = logging.Handler()
    handler.emit = lambda r: logs.append(r.getMessage())
    logging.getLogger("flowsr_lp").addHandler(handler)
    try:
        if run.device.type == "cuda":
            lr = run.photo(side).to(run.device)
            torch.cuda.reset_peak_memory_stats()
            resolver(lr, scale=scale)
            whole = torch.cuda.max_memory_allocated()
            torch.cuda.empty_cache()
            fraction = 0.6 * whole / torch.cuda.get_device_properties(run.device).total_memory
            out.update(whole_peak_gb=round(whole / 2**30, 2), fraction=round(fraction, 4))
            torch.cuda.set_per_process_memory_fraction(fraction, run.device)
            restore = lambda: torch.cuda.set_per_process_memory_fraction(1.0, run.device)  # noqa: E731
        else:  # no memory limit to set on the CPU: a stub raises the out-of-memory conditioning the whole LR
            cls = type(resolver.flow)
            original, limit = cls.condition, side * side - 1

            def condition(self, lr, *args, **kwargs):
                if lr.shape[-2] * lr.shape[-1] > limit:
                    raise torch.OutOfMemoryError("stub: out of memory")
                return original(self, lr, *args, **kwargs)

            cls.condition = condition
            restore = lambda: setattr(cls, "condition", original)  # noqa: E731
            out["simulated"] = True
        failures = upscale_files(resolver, [src], [run.tmp / "oom" / "out.png"], scale=scale, progress=False)
    finally:
        if restore is not None:
            restore()
        logging.getLogger("flowsr_lp").removeHandler(handler)
    out.update(failures=failures, retried_in_tiles=any("retrying in tiles" in m for m in logs),
               written=(run.tmp / "oom" / "out.png").is_file())
    return failures == 0 and out["retried_in_tiles"] and out["written"], out


def _dataset(run: Run, name: str, n: int, side: int) -> Path:
    folder = run.tmp / name / "HR"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for i in range(n):
            img = (run.photo(side, i)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(img).save(folder / f"img{i}.png")
    return folder.parent


def check_evaluate(run: Run):
    from flowsr_lp.evaluate import EvalOptions, evaluate
    data = _dataset(run, "eval-set", 2, 48 if run.quick else 192)
    opts = EvalOptions(data=[str(data)], scales=[4.0], taus=[0.5], runs=2, use_lpips=False, report_images=0)
    rows = {d: evaluate(*run.models("linf-small", d, True), opts, run.tmp / f"eval-{d.type}", progress=False)[0]
            for d in (run.cpu, run.device)}
    a, b = rows[run.cpu], rows[run.device]
    same = [(r["image"], r["method"], r["run"]) for r in a] == [(r["image"], r["method"], r["run"]) for r in b]
    gap = max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in ("psnr", "ssim", "lr_psnr") if x["finite"])
    out = {"rows": len(b), "same rows": same, "max metric gap": round(gap, 6)}
    return same and gap <= 0.01, out


def check_training(run: Run):
    from flowsr_lp.cli import main as cli
    from flowsr_lp.hub.resolve import bundled_path
    from flowsr_lp.train import trainer
    import yaml

    train = {"folders": [str(_dataset(run, "train-set", 4, 96) / "HR")], "repeat": 4, "cache": True}
    out, ok = {}, True
    recipes = {  # tiny models; the bundled flow for the prior
        "train-prior": {"task": "prior", "flow": {"checkpoint": str(bundled_path("linf-small"))},
                        "prior": {"family": "linf-lp", "config": {"generator": "unet", "dim": 8, "depth": 3}},
                        "loss": {"perceptual": "none", "pixel_weight": 1.0},
                        "data": {"train": train, "crop": {"kind": "linf-lp", "lr_size": 16, "window": None}}},
        "train-flow": {"task": "flow", "stage": "nll",
                       "flow": {"family": "linf-patch", "config": {"encoder": "edsr-baseline", "patch_size": 3,
                                                                   "encoder_args": {"n_resblocks": 1, "n_feats": 8},
                                                                   "hidden_dim": 16, "flow_layers": 2}},
                       "data": {"train": train, "crop": {"kind": "linf", "lr_size": 16, "scale_min": 1.0,
                                                         "scale_max": 4.0}}},
    }
    save = trainer.Trainer.save
    if run.device.type == "cuda":  # deterministic kernels where there are; atomics elsewhere
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        for command, recipe in recipes.items():
            paths = {part: run.tmp / command / f"{part}.yaml" for part in ("full", "cut")}
            for part, path in paths.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(yaml.safe_dump({
                    **recipe, "optim": {"batch_size": 2 if run.quick else 8, "iterations": 10, "lr": 1e-4},
                    "run": {"out": str(run.tmp / command / part), "seed": 0, "workers": 0, "log_every": 5,
                            "ckpt_every": 5, "threads": 1, "device": str(run.device)}}))
            cut = run.tmp / command / "cut"
            at5 = {}

            def keep_step5(self):  # the full run leaves its step-5 checkpoint for the resumed one
                save(self)
                if self.step == 5:
                    cut.mkdir(parents=True, exist_ok=True)
                    shutil.copy(self.out / trainer.CHECKPOINT, cut / trainer.CHECKPOINT)
                    at5.update(torch.load(cut / trainer.CHECKPOINT, weights_only=True)["model"])

            trainer.Trainer.save = keep_step5
            code_full = cli([command, str(paths["full"])])
            trainer.Trainer.save = save
            code_resumed = cli([command, str(paths["cut"]), "--resume"])
            a = torch.load(run.tmp / command / "full" / trainer.CHECKPOINT, weights_only=True)["model"]
            b = torch.load(cut / trainer.CHECKPOINT, weights_only=True)["model"]
            gap = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
            moved = max((a[k] - at5[k]).abs().max().item() for k in a if a[k].is_floating_point())
            equal = all(torch.equal(a[k], b[k]) for k in a)
            # CUDA atomics (grid_sample, interpolate backward) differ in the last bits, which
            # Adam can grow: within 1 % of what the last 5 steps moved the weights
            tol = 0.0 if run.device.type == "cpu" else 0.01 * moved
            out[command] = {"exit codes": [code_full, code_resumed], "bitwise equal": equal, "max abs gap": gap,
                            "max abs change over steps 6-10": moved}
            ok &= code_full == 0 and code_resumed == 0 and gap <= tol and moved > 0
    finally:
        trainer.Trainer.save = save
        torch.use_deterministic_algorithms(False)
    return ok, out


def check_app(run: Run):
    from flowsr_lp.app.models import ModelCache, ModelChoice
    from flowsr_lp.app.service import Settings, upscale_file
    src = run.tmp / "app" / "in.png"
    src.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((run.photo(32 if run.quick else 128)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(src)
    cache = ModelCache(run.device, concurrency=2)
    choice = ModelChoice("linf-small", "linf-small", "linf-small-lp")
    results, errors = {}, []

    def request(i):
        try:
            model = cache.get(choice)
            results[i] = upscale_file(model, src, Settings(scale=4), True, run.tmp / "app" / f"out{i}", 64.0)
        except Exception as e:  # reported, not raised in the thread
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=request, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    same = len(results) == 2 and np.array_equal(*(np.asarray(Image.open(p)) for p in results.values()))
    out = {"loads": cache.loads, "outputs": len(results), "equal outputs": same, "errors": errors}
    return cache.loads == 1 and same and not errors, out


def check_speed(run: Run):
    sys.path.insert(0, str(Path(__file__).parent))
    from common import build
    import flowsr_lp
    side, batches = (32, (1, 2)) if run.quick else (512, (1, 8))
    precisions = ("fp32",) if run.quick else ("fp32", "bf16")
    out = {}
    for case in ("linf-lp", "linf-rrdb-lp", "srflow-lp"):
        torch.manual_seed(0)
        flow, prior = build(flowsr_lp, case)
        flow, prior = flow.to(run.device), prior.to(run.device)
        for prec in precisions:
            resolver = flowsr_lp.SuperResolver(flow, prior, precision=prec)
            for b in batches:
                key = f"{case} {prec} batch {b}"
                lr = torch.rand(b, 3, side, side, device=run.device)
                try:
                    if b == batches[0]:
                        resolver(lr, scale=4)  # warm-up, once per model and precision
                    if run.device.type == "cuda":
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                    t = time.perf_counter()
                    resolver(lr, scale=4)
                    if run.device.type == "cuda":
                        torch.cuda.synchronize()
                    secs = time.perf_counter() - t
                    peak = torch.cuda.max_memory_allocated() / 2**30 if run.device.type == "cuda" else None
                    out[key] = {"images_per_s": round(b / secs, 3), "peak_gb": peak and round(peak, 2)}
                except torch.OutOfMemoryError:
                    out[key] = {"out_of_memory": True}
                finally:
                    if run.device.type == "cuda":
                        torch.cuda.empty_cache()
    return True, out


CHECKS = {"parity": check_parity, "reference": check_reference, "seeds": check_seeds, "tiling": check_tiling,
          "oom": check_oom, "evaluate": check_evaluate, "training": check_training, "app": check_app,
          "speed": check_speed}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--quick", action="store_true", help="small sizes: the CPU dry run")
    ap.add_argument("--only", default=",".join(CHECKS), help="comma-separated checks")
    a = ap.parse_args(argv)
    if torch.device(a.device).type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS for `training`
        if not torch.cuda.is_available():
            print("error: no CUDA device here (use --device cpu for the dry run)", file=sys.stderr)
            return 2
    from flowsr_lp.precision import hardware_line
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    report = {"hardware": hardware_line(), "device": a.device, "quick": a.quick, "checks": {}}
    if torch.device(a.device).type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(a.device)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(a.device, a.quick, Path(tmp))
        for name in a.only.split(","):
            t = time.perf_counter()
            try:
                ok, figures = CHECKS[name](run)
                status = "skip" if ok is None else "pass" if ok else "fail"
            except Exception as e:  # one broken check must not hide the others
                status, figures = "error", {"error": f"{type(e).__name__}: {e}",
                                            "where": traceback.format_exc().splitlines()[-3:]}
            report["checks"][name] = {"status": status, "seconds": round(time.perf_counter() - t, 2), **figures}
            print(f"{name:<10} {status:<5} {report['checks'][name]['seconds']:7.1f} s", flush=True)
    report["seconds"] = round(time.perf_counter() - start, 1)
    Path(a.out).write_text(json.dumps(report, indent=1, default=str))
    print(f"report: {a.out} ({report['seconds']} s)")
    return 0 if all(c["status"] in ("pass", "skip") for c in report["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
