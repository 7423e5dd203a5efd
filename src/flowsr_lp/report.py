"""Evaluation outputs: results.csv, summary.json, table.md laid out like the paper's tables,
and report.html with image crops and a perception-distortion plot."""
from __future__ import annotations

import csv
import html
import io
import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image

from .images import to_uint8, write_png
from .pipeline import bicubic

COLUMNS = ("psnr", "ssim", "lpips", "lr_psnr", "bpd", "inf_rate", "grid", "diversity", "sr_space")
HEADERS = {"psnr": "PSNR (↑)", "ssim": "SSIM (↑)", "lpips": "LPIPS (↓)", "lr_psnr": "LR-PSNR (↑)",
           "bpd": "bits/dim (↓)", "inf_rate": "%Inf (↓)", "grid": "Grid (↓)", "diversity": "Diversity",
           "sr_space": "SR-space div. (↑)"}
DIGITS = {"psnr": 2, "ssim": 4, "lpips": 3, "lr_psnr": 2, "bpd": 3, "inf_rate": 1, "grid": 3, "diversity": 4,
          "sr_space": 2}


def _fmt(v, key) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{DIGITS[key]}f}"


def detail_window(hr: torch.Tensor, size: int) -> tuple[int, int]:
    """Top-left of the size x size HR window with the most gradient energy (a textured crop)."""
    g = hr[0].mean(0)
    e = (g.diff(dim=0).abs()[:, :-1] + g.diff(dim=1).abs()[:-1]).unsqueeze(0).unsqueeze(0)
    size = min(size, e.shape[-2], e.shape[-1])
    pooled = F.avg_pool2d(e, size, stride=max(1, size // 4))
    idx = int(pooled.flatten().argmax())
    return (idx // pooled.shape[-1]) * max(1, size // 4), (idx % pooled.shape[-1]) * max(1, size // 4)


CROP = 96  # HR pixels on a side of a report crop


def crop_panel(img: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """The report's view of `img` (1 x 3 x H x W): the CROP x CROP window of `hr` with the most
    detail, twice as large (nearest), on the CPU."""
    top, left = detail_window(hr, CROP)
    crop = img[0, :, top : top + CROP, left : left + CROP]
    return F.interpolate(crop[None], scale_factor=2, mode="nearest")[0].cpu()


def png_bytes(img: torch.Tensor) -> bytes:
    """A 3 x H x W image in [0, 1] as the bytes of the 8-bit PNG `write_png` writes."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="PNG")
    return buf.getvalue()


def crop_path(dataset: str, image: str, scale: float, name: str, label: str = "") -> str:
    """Where a panel of the report is written, relative to the output folder."""
    tag = f"{label}_{dataset}_{image}_x{scale:g}".strip("_").replace("/", "_").replace(" ", "_")
    return f"crops/{tag}_{name.replace('=', '').replace(' ', '_')}.png"


def save_crops(out_dir: Path, dataset: str, image: str, scale: float, hr, lr, shown: dict, label: str = "") -> dict:
    """Write HR / bicubic / per-method crops of one image; return their relative paths."""
    made = {} if "bicubic" in shown else {"bicubic": bicubic(lr, tuple(hr.shape[-2:]))}  # evaluate --bicubic made it
    panels = {"HR": hr, **made, **shown}
    entry = {"dataset": dataset, "image": image, "scale": scale, "label": label, "panels": {}}
    for name, img in panels.items():
        entry["panels"][name] = crop_path(dataset, image, scale, name, label)
        write_png(crop_panel(img, hr), Path(out_dir) / entry["panels"][name])
    return entry


def by_set(summary: list[dict]) -> dict[tuple, list[dict]]:
    """Summary entries grouped by (data set, scale), in order."""
    groups: dict[tuple, list[dict]] = {}
    for e in summary:
        groups.setdefault((e["dataset"], e["scale"]), []).append(e)
    return groups


PARTIAL = "†"
PARTIAL_NOTE = (f"{PARTIAL} the mean covers fewer images than the row evaluated: images whose every run exploded "
                "(inf/NaN) have no metric values, and %Inf counts them. Means over different images are not "
                "directly comparable.")


def covered(e: dict, metric: str = "psnr") -> int:
    """How many images the row's mean of `metric` covers (all of them for older summaries)."""
    return e.get("covers", {}).get(metric, e["images"] if e.get(metric) is not None else 0)


def coverage(e: dict) -> str:
    """The Images cell: '10', or '8 of 10†' when only 8 images have a finite run."""
    n = covered(e)
    return f"{e['images']}" if n == e["images"] else f"{n} of {e['images']}{PARTIAL}"


def _cell(e: dict | None, metric: str) -> str:
    if e is None:
        return _fmt(None, metric)
    partial = e.get(metric) is not None and metric in e.get("covers", {}) and covered(e, metric) < e["images"]
    return _fmt(e.get(metric), metric) + (PARTIAL if partial else "")


def shown_columns(entries: list[dict]) -> list[str]:
    return [c for c in COLUMNS if any(e.get(c) is not None for e in entries)]


def write_rows(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)


def markdown(summary: list[dict]) -> str:
    """One table per data set and scale (rows: methods; columns: metrics, as the paper's
    Tables 1/3), then, for each metric, a Table-2-like grid of methods x (data set, scale)."""
    out = []
    groups = by_set(summary)
    for (ds, scale), es in groups.items():
        cols = shown_columns(es)
        out.append(f"### {ds} x{scale:g} ({max(e['images'] for e in es)} images)\n")
        out.append("| Method | Images | " + " | ".join(HEADERS[c] for c in cols) + " |")
        out.append("|---|---|" + "---|" * len(cols))
        for e in es:
            out.append(f"| {e['method']} | {coverage(e)} | " + " | ".join(_cell(e, c) for c in cols) + " |")
        if any(PARTIAL in coverage(e) for e in es):
            out.append(f"\n{PARTIAL_NOTE}")
        out.append("")
    if len(groups) > 1:
        keys = list(groups)
        methods = list(dict.fromkeys(e["method"] for e in summary))
        for metric in ("psnr", "lpips"):
            if not any(e.get(metric) is not None for e in summary):
                continue
            out.append(f"### {HEADERS[metric]} across data sets and scales\n")
            out.append("| Method | " + " | ".join(f"{d} x{s:g}" for d, s in keys) + " |")
            out.append("|---|" + "---|" * len(keys))
            cells = []
            for m in methods:
                entries = [next((e for e in groups[k] if e["method"] == m), None) for k in keys]
                cells.append([_cell(e, metric) for e in entries])
                out.append(f"| {m} | " + " | ".join(cells[-1]) + " |")
            if any(PARTIAL in c for row in cells for c in row):
                out.append(f"\n{PARTIAL_NOTE}")
            out.append("")
    return "\n".join(out)


def perception_distortion_plot(summary: list[dict], path: Path) -> str:
    """PSNR (distortion) against LPIPS (perception; the grid score when LPIPS is absent)."""
    x_key = "lpips" if any(e.get("lpips") is not None for e in summary) else "grid"
    fig = Figure(figsize=(6.4, 4.4), dpi=110)
    ax = fig.subplots()
    groups: dict[tuple, list[dict]] = {}
    for e in summary:  # one curve per data set, scale and flow ("LINF tau=0.8" -> flow "LINF")
        flow = re.sub(r"\s*(tau=\S+|LP|bicubic)$", "", e["method"])
        groups.setdefault((e["dataset"], e["scale"], flow), []).append(e)
    for (ds, scale, flow), es in groups.items():
        es = [e for e in es if e.get(x_key) is not None and e.get("psnr") is not None]
        name = f"{ds} x{scale:g}" + (f" {flow}" if flow else "")
        taus = [e for e in es if "tau=" in e["method"]]
        line = ax.plot([e[x_key] for e in taus], [e["psnr"] for e in taus], "o-", label=f"{name}: tau")
        for e in taus:
            ax.annotate(e["method"].split("tau=")[1], (e[x_key], e["psnr"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
        for e in es:
            if e["method"].endswith("bicubic"):
                ax.plot(e[x_key], e["psnr"], "s", ms=7, color=line[0].get_color(), label=f"{name}: bicubic")
            elif "tau=" not in e["method"]:
                ax.plot(e[x_key], e["psnr"], "*", ms=13, color=line[0].get_color(), label=f"{name}: learned prior")
    ax.set_xlabel(("LPIPS" if x_key == "lpips" else "grid-artifact score") + " (lower is better)")
    ax.set_ylabel("PSNR (dB, higher is better)")
    ax.set_title("Perception-distortion")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return x_key


def write_html(path: Path, title: str, summary: list[dict], crops: list[dict], meta: dict, plot: str | None,
               x_key: str, notes: list[str], extra: list[tuple[str, str]] = ()) -> None:
    """`extra`: (heading, trusted HTML) sections appended after the crops."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
             "body{font-family:sans-serif;margin:24px;color:#222} table{border-collapse:collapse;margin:8px 0 20px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f3f3f3}"
             "td:first-child{text-align:left} figure{display:inline-block;margin:4px;text-align:center}"
             "figure img{image-rendering:pixelated;border:1px solid #999} figcaption{font-size:12px}"
             ".note{color:#855}</style></head><body>",
             f"<h1>{esc(title)}</h1>", f"<p>{esc(meta.get('description', ''))}</p>"]
    for n in notes:
        parts.append(f"<p class='note'>{esc(n)}</p>")
    for (ds, scale), es in by_set(summary).items():
        cols = shown_columns(es)
        parts.append(f"<h2>{esc(ds)} ×{scale:g}</h2><table><tr><th>Method</th><th>Images</th>"
                     + "".join(f"<th>{esc(HEADERS[c])}</th>" for c in cols) + "</tr>")
        for e in es:
            parts.append(f"<tr><td>{esc(e['method'])}</td><td>{esc(coverage(e))}</td>"
                         + "".join(f"<td>{esc(_cell(e, c))}</td>" for c in cols) + "</tr>")
        parts.append("</table>")
        if any(PARTIAL in coverage(e) for e in es):
            parts.append(f"<p class='note'>{esc(PARTIAL_NOTE)}</p>")
    if plot:
        parts.append(f"<h2>Perception-distortion</h2><img src='{esc(plot)}' alt='perception-distortion plot'>"
                     + ("" if x_key == "lpips" else "<p class='note'>LPIPS was not computed; the x axis is the grid score.</p>"))
    if crops:
        parts.append("<h2>Crops (nearest-neighbour x2)</h2>")
        for c in crops:
            flow = f"{esc(c['label'])}: " if c.get("label") else ""
            parts.append(f"<h3>{flow}{esc(c['dataset'])} / {esc(c['image'])} ×{c['scale']:g}</h3><div>")
            for name, src in c["panels"].items():
                parts.append(f"<figure><img src='{esc(src)}' alt='{esc(name)}'><figcaption>{esc(name)}</figcaption></figure>")
            parts.append("</div>")
    for heading, body in extra:
        parts.append(f"<h2>{esc(heading)}</h2>{body}")
    parts.append("<h2>Run</h2><pre>" + esc(json.dumps(meta, indent=1)) + "</pre>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")


def write_outputs(out_dir: Path, rows: list[dict], summary: list[dict], crops: list[dict], meta: dict,
                  notes: list[str], title: str, extra: list[tuple[str, str]] = ()) -> dict:
    """All evaluation outputs; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "results.csv", "json": out_dir / "summary.json", "markdown": out_dir / "table.md",
             "html": out_dir / "report.html", "plot": out_dir / "perception_distortion.png"}
    write_rows(rows, paths["csv"])
    paths["json"].write_text(json.dumps({"meta": meta, "notes": notes, "summary": summary}, indent=1))
    paths["markdown"].write_text(f"## {title}\n\n" + markdown(summary))
    x_key = perception_distortion_plot(summary, paths["plot"])
    write_html(paths["html"], title, summary, crops, meta, paths["plot"].name, x_key, notes, extra)
    return paths
