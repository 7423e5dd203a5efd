"""Copy trained runs into the package as its bundled models and write weights/TRAINING.md.

`python tools/bundle_weights.py --runs runs` after training with configs/cpu/*.yaml (the
commands are in weights/TRAINING.md). A model may take several stages (the flows: NLL, then
the L1 fine-tune); each stage is a run folder named after its recipe (runs/linf-small-ft for
configs/cpu/linf-small-ft.yaml). A stage whose run folder is gone (trained in an earlier
session) is taken from the training record of the checkpoint the next stage started from.
Each model is re-saved in the project format with its training record in the metadata."""
from __future__ import annotations

import argparse
import csv
import json
import platform
from pathlib import Path

import torch
import yaml

from flowsr_lp.checkpoints import load_flow, load_prior, read_checkpoint, save_flow, save_prior
from flowsr_lp.hub.registry import BUNDLED, WEIGHTS

#: the recipes (configs/cpu/NAME.yaml) of each bundled model, in training order (SRFlow v4: its
#: flow interpolated between the NLL stage and the L1 fine-tune, and a wider module with its
#: head; LINF-LP v4: two more stages of its mu, with a head, and BatchNorm statistics per scale;
#: v5: v4 continued on x4 crops in two stages, then v4 with that module as its specialist at x4;
#: v6: that module continued without the latent L1; v7: v6 with its residual's correlation)
STAGES = {"linf-small": ["linf-small", "linf-small-ft"],
          "linf-small-lp": ["linf-small-lp", "linf-small-lp-ft", "linf-small-lp-ft2", "linf-small-lp-ft3",
                            "linf-small-lp-stats", "linf-small-lp-x4", "linf-small-lp-x4g",
                            "linf-small-lp-x4nl",
                            "linf-small-lp-specialists", "linf-small-lp-residual"],
          "srflow-small": ["srflow-small", "srflow-small-ft", "srflow-small-ft2", "srflow-small-wise"],
          "srflow-small-lp": ["srflow-small-lp-wide", "srflow-small-lp-wise"],
          "hcflow-small": ["hcflow-small"], "hcflow-small-lp": ["hcflow-small-lp", "hcflow-small-lp-residual"]}
HARDWARE = "2-core x86_64 CPU (AVX512-BF16/AMX), float32, shared with other work while training"


def last_row(path: Path) -> dict:
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


def run_record(run: Path, recipe: str, command: str) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    summary = json.loads((run / "summary.json").read_text())
    return {"recipe": f"configs/cpu/{recipe}.yaml", "command": command, "steps": summary["steps"],
            "seconds": round(summary["seconds"], 1), "perceptual": summary["perceptual"],
            "skipped_steps": summary.get("skipped_steps", 0), "data": cfg["data"]["train"]["folders"],
            "final": last_row(run / "log.csv"), "validation": last_row(run / "val.csv"), "hardware": HARDWARE}


def stage_records(runs: Path, name: str, commands: dict) -> list[dict]:
    """One record per stage, oldest first."""
    records, start = [], None
    for recipe in reversed(STAGES[name]):
        run = runs / recipe
        if (run / "summary.json").is_file():
            records.append(run_record(run, recipe, commands.get(recipe, "")))
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            spec = cfg["flow" if cfg["task"] == "flow" else "prior"]
            # an interpolation continues the lineage of the flow it moves toward (whose record
            # holds the other end's stage too)
            start = spec.get("toward") or spec.get("checkpoint")
        elif start:  # an earlier session's stage(s), recorded in the checkpoint this one started from
            old = read_checkpoint(start)[1].get("training", {})
            if "stages" in old:  # every stage before this one: done
                earlier = old["stages"]
                names = [st["recipe"] for st in earlier]
                if records and records[-1]["recipe"] in names:  # it started from its own output (a bundled
                    earlier = earlier[:names.index(records[-1]["recipe"])]  # file): what came before it
                records += [{**st, "session": st.get("session", "earlier")} for st in reversed(earlier)]
                break
            records.append({**old, "session": "earlier"})
            start = None
        else:
            raise FileNotFoundError(f"{name}: no run {run} and no checkpoint that records it")
    return records[::-1]


def describe(rec: dict) -> tuple[str, str]:
    fin, val = rec.get("final", {}), rec.get("validation", {})
    loss = ", ".join(f"{k} {float(fin[k]):.4g}" for k in ("nll", "l1", "l2", "grad", "latent", "scale_nll")
                     if fin.get(k))
    vals = f"PSNR {float(val['val_psnr']):.2f} dB, LR-PSNR {float(val['val_lr_psnr']):.2f} dB" if val else "–"
    if val.get("val_bpd"):
        vals += f", {float(val['val_bpd']):.3f} bits/dim"
    return loss or "–", vals


def mean_loss(stages: list[dict]) -> str:
    """The loss the model's output (mu) was trained with: that of the last stage that trained it
    (a scale-head stage trains sigma only, by likelihood; a stage without steps trains nothing)."""
    return next((st["perceptual"] for st in reversed(stages)
                 if st["steps"] > 0 and not st["perceptual"].endswith("(likelihood only)")), stages[-1]["perceptual"])


def table_rows(name: str, model, stages: list[dict], task: str) -> list[str]:
    """TRAINING.md's rows of one model, a stage each."""
    n = sum(p.numel() for p in model.parameters())
    out = []
    for i, st in enumerate(stages):
        loss, vals = describe(st)
        cmd = st.get("command") or f"flowsr-lp train-{task} {st['recipe']}"
        cmd = f"`{cmd}`" + (" (an earlier session's recipe)" if st.get("session") == "earlier" else "")
        bpd = st.get("held_out_bits_per_dim", {}).get("value")
        out.append(f"| {f'`{name}`' if i == 0 else ''} | {f'{n / 1e6:.2f} M' if i == 0 else ''} | {cmd} "
                   f"| {st['steps']} | {st['seconds'] / 60:.1f} min | {loss} | {vals} | "
                   f"{f'{bpd:.3f}' if bpd is not None else 'not kept'} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--commands", default=None, help="JSON {recipe name: command line} used to train each stage")
    ap.add_argument("--bpd", default=str(Path(__file__).with_name("held_out_bpd.json")),
                    help="held-out bits/dim per (model, stage recipe), recorded in each stage and in TRAINING.md")
    ap.add_argument("--models", nargs="*", default=list(BUNDLED), help="the models to re-save (default: all; a "
                    "model without its last run here is re-saved from its bundled file, weights unchanged); "
                    "TRAINING.md lists every model")
    a = ap.parse_args()
    commands = json.loads(Path(a.commands).read_text()) if a.commands else {}
    held_out = json.loads(Path(a.bpd).read_text()) if Path(a.bpd).is_file() else {"stages": {}}

    def with_bpd(name: str, stages: list[dict]) -> list[dict]:
        seen: dict = {}
        for st in stages:  # key NAME/RECIPE, or NAME/RECIPE#k for the k-th stage of a recipe used twice
            k = seen[st["recipe"]] = seen.get(st["recipe"], -1) + 1
            key = f"{name}/{st['recipe']}"
            v = held_out["stages"].get(f"{key}#{k}", held_out["stages"].get(key) if k == 0 else None)
            if v is not None:
                st["held_out_bits_per_dim"] = {"value": v, "data": held_out["data"], "command": held_out["command"]}
        return stages

    lines = ["# How the bundled models were trained", "",
             "All six were trained on the CPU of a development machine (2 cores, shared with other work, so wall "
             "times are upper bounds), from the recipes in `configs/cpu/`, on T91 (91 images) + BSDS200 (200 "
             "images) from `../shared/data`. The flows were trained in two stages: NLL (`linf-small.yaml`, "
             "`srflow-small.yaml`), then steps alternating between the NLL (x 5e-4) and pixel L1 of the "
             "temperature-0 output (`*-ft.yaml`, LINF's second stage without VGG), which lifts tau = 0 above "
             "bicubic; SRFlow's continued at a lower learning rate (`srflow-small-ft2.yaml`). That made SRFlow's "
             "tau 0 so good a conditional mean that its learned prior had nothing left to add, so SRFlow v4 adds a "
             "stage without steps (`srflow-small-wise.yaml`): its weights moved 0.3 of the way from the NLL stage "
             "toward the fine-tune (weight-space interpolation), a flow with the NLL stage's likelihood and part "
             "of the fine-tune's fidelity. `srflow-small-lp` v4 is a wider module with the LR branch and a scale "
             "head (`srflow-small-lp-wide.yaml`, trained through the NLL-stage flow), continued through that flow "
             "(`srflow-small-lp-wise.yaml`). `linf-small-lp` uses "
             "our every-scale initial prior (`initial_prior: antialiased`, see the README) and a second stage with "
             "scales up to x6 and latent weight 0.02 (`linf-small-lp-ft.yaml`); v4 continues it on 48-pixel LR crops "
             "with MATLAB-bicubic LR and a scale head trained in the same run on detached features "
             "(`linf-small-lp-ft2.yaml`), then with the pixel term in L2 at x1-x6 (`linf-small-lp-ft3.yaml`), and "
             "ends with a stage without steps (`linf-small-lp-stats.yaml`): BatchNorm statistics measured per scale "
             "on training crops and interpolated at the image's scale (`prior.config.scale_stats`; the module trains "
             "on batches of one scale, so one set of running statistics fitted no scale well). v5 continues v4 "
             "on x4 crops alone (`linf-small-lp-x4.yaml`, then with an L1 between image gradients, "
             "`linf-small-lp-x4g.yaml`; v6 continues it without the latent L1, `linf-small-lp-x4nl.yaml`) "
             "and keeps that module as v4's specialist at x4 "
             "(`linf-small-lp-specialists.yaml`, a stage without steps that also measures both modules' statistics): "
             "it serves x4 alone and blends with v4 between x3 and x5.33 (`prior.config.specialists`), while v4 serves "
             "every other scale unchanged. v7 adds a stage without steps (`linf-small-lp-residual.yaml`): the "
             "correlation of the residual around mu over channels and neighbouring positions "
             "(`prior.config.residual_reach`), fitted to the training images' residuals at x4; it changes the "
             "samples around the prior and their density, nothing at t = 0. v8 refits that stage at x2, x3, x4 and x6 "
             "(`prior.config.residual_scales`; between them the fits are interpolated in log scale), its x4 fit "
             "v7's. No VGG19 ImageNet weights were available, so the latent modules "
             "were trained with `--perceptual none` (pixel L1 + 0.1 latent L1) instead of the paper's VGG loss; to "
             "retrain with it add `--perceptual vgg --vgg-weights vgg19-dcbb9e9d.pth --set loss.latent_weight=0 "
             "--set loss.pixel_weight=0` (LINF) or keep `latent_weight` 0.1 (SRFlow). `hcflow-small` (HCFlow's "
             "architecture at CPU size) was trained by NLL alone, in one stage, so its likelihood is that of its "
             "objective (its bits/dim includes HCFlow's Dirac LR term, which textures dominate, so it is not comparable "
             "with SRFlow's); `hcflow-small-lp` (the multi-part UNet of SRFlow-LP, one branch per split-off part) was "
             "trained through it with its scale head in the same run (`hcflow-small-lp.yaml`); its v2 adds the "
             "residual correlation stage (`hcflow-small-lp-residual.yaml`, reach 1 on both latent parts, fitted at x4)."
             , "",
             "Validation: the earlier stages on Set5 (PSNR on RGB with shave = scale, tau 0 for flows; x4, x3 for "
             "`linf-small-lp`); the `-scale` stages, SRFlow v4's and LINF-LP v4's stages by the `evaluate` protocol on 6 Set14 images x4 (PSNR on Y, "
             "8-bit MATLAB-bicubic LR) with the held-out bits/dim under N(mu, sigma^2) (correlated for LINF-LP v7). Bits/dim of every stage "
             "on B100 x4: see the table after this one.", "",
             "| model | parameters | stage: command | steps | wall time | final training loss | last validation | "
             "B100 x4 bits/dim |",
             "|---|---|---|---|---|---|---|---|"]
    for name in BUNDLED:
        dst = WEIGHTS / f"{name}.safetensors"
        run = Path(a.runs) / STAGES[name][-1]
        if (run / "summary.json").is_file():  # trained in this checkout: the run is the model
            stages = with_bpd(name, stage_records(Path(a.runs), name, commands))
            kind = yaml.safe_load((run / "config.yaml").read_text())["task"]
            model = (load_flow if kind == "flow" else load_prior)(run / "model.safetensors")
            last = stages[-1]
            training = {"recipe": stages[0]["recipe"], "stages": stages, "steps": sum(s["steps"] for s in stages),
                        "seconds": round(sum(s["seconds"] for s in stages), 1), "perceptual": mean_loss(stages),
                        "skipped_steps": sum(s.get("skipped_steps", 0) for s in stages), "data": last["data"],
                        "final": last["final"], "validation": last["validation"], "hardware": HARDWARE,
                        "machine": f"{platform.machine()} CPU, torch {torch.__version__}"}
        else:  # the bundled file as it is (an earlier session's run): its own record, bits/dim added
            meta = read_checkpoint(dst)[1]
            kind, training = meta["kind"], meta["training"]
            model = (load_flow if kind == "flow" else load_prior)(dst)
            stages = training["stages"] = with_bpd(name, training["stages"])
        if name in a.models:
            if kind == "flow":
                save_flow(model, dst, training=training)
            else:  # a scale specialist ships in float16: the file stays under 8 MB (benchmarks/README.md)
                save_prior(model, dst, float16=("specialists.",), training=training)
            print(f"{name}: {dst} ({dst.stat().st_size / 1e6:.2f} MB)")
        lines += table_rows(name, model, stages, kind)
    lines += ["", "B100 x4 bits/dim: " + held_out["command"] + ". Flows under N(0, I); the NLL-only first stages "
              "are the baselines issue 19 compares with (the L1 fine-tunes cost LINF 0.022 and SRFlow 0.054 bits/dim; "
              "SRFlow v4's interpolated flow is 0.002 above its NLL stage). "
              "Stages marked 'not kept' left no file to measure (a later stage overwrote it)."]
    (WEIGHTS / "TRAINING.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
