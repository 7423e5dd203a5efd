"""The Gradio page: upload an image, compare temperature sampling with the learned prior.

Runs offline: no analytics, no web fonts, no share link unless asked. Every model-running
event goes through the model's own queue (`models.LoadedModel.call`); the page's other
events only redraw pictures already computed."""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import torch
from PIL import UnidentifiedImageError

from ..demo import sample_photos
from ..errors import FlowSRError, first_line
from ..images import to_uint8, write_png
from . import service, views
from .models import ModelCache, ModelChoice, local_choice, registry_choices

log = logging.getLogger(__name__)

LOCAL = "local checkpoint..."
PAIRS = ("bicubic | tau", "bicubic | learned prior", "tau | learned prior")
MAX_AGE_S = 3600  # request folders (PNG downloads) older than this are removed


@dataclass
class AppConfig:
    max_megapixels: float = 4.0
    concurrency: int = 1  # requests running at once on each loaded model
    device: str = "cpu"
    max_models: int = 4
    precision: str = "fp32"  # of the encoder, conditioning and latent module: fp32, bf16, fp16 or auto
    allow_local_paths: bool = True  # off for --share: no probing of the server's disk
    choices: list[ModelChoice] = field(default_factory=registry_choices)


def image_input(**kwargs) -> gr.Image:
    """gr.Image (a file path) whose unreadable uploads become a message on the page: Gradio
    opens the file with PIL before any handler runs. (Wrapped on the instance: a subclass
    would make Gradio write a .pyi file next to this module.)"""
    component = gr.Image(type="filepath", image_mode=None, **kwargs)
    preprocess = component.preprocess

    def guarded(payload):
        try:
            return preprocess(payload)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            name = getattr(payload, "orig_name", None) or "the file"
            why = first_line(e).replace(str(getattr(payload, "path", "")), name)
            raise gr.Error(f"{name}: not a readable image ({why[:120]})") from None

    component.preprocess = guarded
    return component


@contextmanager
def page_errors():
    """Known failures become one line on the page; anything else is logged here and the page
    gets its type only (never a stack trace)."""
    try:
        yield
    except gr.Error:
        raise
    except (FlowSRError, ValueError, OSError) as e:
        raise gr.Error(first_line(e)) from None
    except torch.OutOfMemoryError:
        raise gr.Error("out of memory: use a smaller image or scale") from None
    except Exception as e:  # noqa: BLE001 - the page must never show a traceback
        log.exception("request failed")
        raise gr.Error(f"internal error ({type(e).__name__}); see the server log") from None


class App:
    """The page's state shared by every session: model cache, sample photos, output folder."""

    def __init__(self, config: AppConfig):
        self.config = config
        self.cache = ModelCache(config.device, config.concurrency, config.max_models, config.precision)
        self.work = Path(tempfile.mkdtemp(prefix="flowsr-lp-app-"))
        self.samples = sample_photos(self.work / "samples", 4, 144)
        self.choices = {c.name: c for c in config.choices}
        self.default = config.choices[0]

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def request_dir(self) -> Path:
        """A fresh folder for one request's PNGs; folders older than MAX_AGE_S are removed."""
        now = time.time()
        out = self.work / "out"
        out.mkdir(exist_ok=True)
        for old in out.iterdir():
            if now - old.stat().st_mtime > MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        d = out / uuid.uuid4().hex
        d.mkdir()
        return d

    def choice(self, name: str, flow_path: str, prior_path: str) -> ModelChoice:
        if name == LOCAL:
            if not self.config.allow_local_paths:
                raise gr.Error("local checkpoints are off on this server")
            if not flow_path.strip():
                raise gr.Error("give the flow checkpoint's path")
            return local_choice(flow_path.strip(), prior_path.strip() or None)
        if name not in self.choices:
            raise gr.Error(f"unknown model {name!r}")
        return self.choices[name]

    def model_for(self, image, name: str, flow_path: str, prior_path: str):
        if not image:
            raise gr.Error("upload, paste or pick an image first")
        return self.cache.get(self.choice(name, flow_path, prior_path))

    # ---- events ---------------------------------------------------------------------
    def on_model(self, name: str, flow_path: str, prior_path: str):
        """Model picked: its scale rules and precision (loads it once, for every session)."""
        local = gr.update(visible=name == LOCAL)
        if name == LOCAL and not flow_path.strip():
            return local, gr.update(interactive=True), gr.update(interactive=True), "Give a checkpoint path."
        with page_errors():
            model = self.cache.get(self.choice(name, flow_path, prior_path))
        fixed = model.fixed_scale
        prior = "with its learned prior" if model.prior is not None else "no learned prior"
        info = (f"**{model.choice.name}**: {model.flow.kind}, {prior}, "
                f"{f'fixed x{fixed}' if fixed else 'any scale 1-8'}; {model.precision} on {self.cache.device}")
        scale = gr.update(value=fixed, interactive=False) if fixed else gr.update(interactive=True)
        size = gr.update(value="", interactive=not fixed)
        return local, scale, size, info

    def on_run(self, image, name, flow_path, prior_path, known_hr, scale, size_text, tau, seed, draws,
               variation=0.0, progress=gr.Progress()):
        with page_errors():
            model = self.model_for(image, name, flow_path, prior_path)
            s = service.Settings(scale=float(scale), out_size=service.parse_size(size_text), tau=float(tau),
                                 seed=int(seed or 0), draws=int(draws), known_hr=bool(known_hr),
                                 variation=float(variation or 0))
            plan = service.plan(image, model, s, self.config.max_megapixels)
            res = service.run(model, plan, s, progress=lambda f, text: progress(f, desc=text))
            return self._show(res, Path(image).stem)

    def _show(self, res: service.Result, stem: str):
        inputs = res.inputs
        shown = {"bicubic": to_uint8(res.bicubic)}
        if inputs.hr is not None:
            shown["HR"] = to_uint8(inputs.hr[0])
        files, notes = [], list(inputs.notes)
        out = self.request_dir()

        def draws_gallery(draws, caption: str, name: str) -> list:
            """(picture, caption) per draw; finite draws saved as PNGs, exploded ones noted."""
            pictures = []
            for d in draws:
                pictures.append((views.display(d.sr, d.finite), f"{caption}, seed {d.seed}"))
                if d.finite:
                    files.append(write_png(d.sr, out / f"{stem}_{name}_seed{d.seed}.png"))
                else:
                    notes.append(service.exploding_message(d))
            return pictures

        gallery = draws_gallery(res.draws, f"tau {res.tau:g}", f"tau{res.tau:g}")
        if gallery:
            shown["tau"] = gallery[0][0]  # the first draw's picture, already made for the gallery
        prior_img = None
        if res.prior is not None:
            prior_img = shown["learned prior"] = views.display(res.prior.sr, res.prior.finite)
            if res.prior.finite:
                files.append(write_png(res.prior.sr, out / f"{stem}_prior.png"))
            else:
                notes.append(service.exploding_message(res.prior))
        else:
            notes.append(f"{res.model} has no learned prior")
        prior_gallery = draws_gallery(res.prior_draws, f"variation {res.variation:g}", f"prior_var{res.variation:g}")
        sy, sx = inputs.scale
        each = "; ".join([f"draws {sum(d.seconds for d in res.draws) / max(1, len(res.draws)):.2f} s each"] +
                         ([f"prior {res.prior.seconds:.2f} s"] if res.prior else []))
        div = service.draw_diversity(res)
        div_prior = service.draw_diversity(res, around_prior=True)
        status = (f"**{res.model}** x{sx:.3g} ({inputs.lr.shape[-2]}x{inputs.lr.shape[-1]} -> "
                  f"{inputs.out_size[0]}x{inputs.out_size[1]}) on {res.device}, precision **{res.precision}**: "
                  f"{res.seconds:.2f} s ({each})" +
                  (f"; diversity of {len(res.finite_draws)} draws: {div:.2f} gray levels" if div is not None else "") +
                  (f"; around the prior: {div_prior:.2f}" if div_prior is not None else "") +
                  "".join(f"\n\n- {n}" for n in notes))
        heat_panels = [(f"tau {res.tau:g} (seed {d.seed})", views.grid_map(d.sr, inputs.lr))
                       for d in res.finite_draws[:1]]
        if res.prior is not None and res.prior.finite:
            heat_panels.append(("learned prior", views.grid_map(res.prior.sr, inputs.lr)))
        heat = (views.heat_figure(res.bicubic, heat_panels, "grid score (gray levels)") if heat_panels else None)
        pick = prior_img if prior_img is not None else shown.get("tau")
        return (status, gallery, prior_img, metrics_table(service.scores(res)), self.pair(shown, PAIRS[2]),
                shown, heat, [str(f) for f in files], pick, prior_gallery)

    @staticmethod
    def pair(shown: dict, which: str):
        a, b = (k.strip() for k in which.split("|"))
        if a not in shown or b not in shown:
            return None
        return shown[a], shown[b]

    @staticmethod
    def on_zoom(shown: dict, evt: gr.SelectData):
        if not shown:
            return None
        x, y = evt.index[:2]
        return views.zoom([(k, v) for k, v in shown.items()], int(x), int(y))

    def on_temperature_map(self, image, name, flow_path, prior_path, scale, seed, progress=gr.Progress()):
        with page_errors():
            model = self.model_for(image, name, flow_path, prior_path)
            progress(0.0, desc="decoding 11 temperatures")
            r = service.best_temperatures(model, image, service.Settings(scale=float(scale), seed=int(seed or 0)),
                                          self.config.max_megapixels)
            fig = views.heat_figure(r["_hr"][0], [("best tau per 24x24 region", torch.tensor(r["map"]))], "tau",
                                    vmin=0.0, vmax=1.0, cmap="viridis")
            text = (f"The image (its centre, at most 192x192) taken as the HR, downscaled x{r['scale']:g}, decoded from "
                    f"one noise draw at tau 0-1. Best single tau {r['best_single_tau']:g}: PSNR "
                    f"{r['best_single_score']:.2f} dB; best tau per region: {r['per_region_score']:.2f} dB.")
            return fig, text

    def on_api(self, image, scale, tau, use_prior, seed, progress=gr.Progress()):
        """/upscale: (image, scale, tau, use_prior, seed) -> the SR image as a PNG file."""
        with page_errors():
            if not image:
                raise gr.Error("no image given")
            model = self.cache.get(self.default)
            s = service.Settings(scale=float(scale), tau=float(tau), seed=int(seed or 0))
            path = service.upscale_file(model, image, s, bool(use_prior), self.request_dir(),
                                        self.config.max_megapixels, lambda f, text: progress(f, desc=text))
            return str(path)


def metrics_table(rows: list[dict]) -> str:
    cols = [c for c in ("PSNR", "SSIM", "LR-PSNR", "bits/dim", "diversity", "grid") if any(c in r for r in rows)]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        if "note" in r:
            lines.append(f"| {r['method']} | {r['note']} |" + " |" * (len(cols) - 1))
            continue
        cells = [("–" if c not in r else f"{r[c]:.4f}" if c == "SSIM" else f"{r[c]:.3f}" if c == "bits/dim"
                  else f"{r[c]:.2f}") for c in cols]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    known = "PSNR/SSIM against the known HR (RGB, scale pixels shaved); " if "PSNR" in cols else ""
    bpd = ("bits/dim: the HR's negative log2-likelihood per sub-pixel under the method's latent distribution "
           "(lower: the method explains the real image better); " if "bits/dim" in cols else "")
    div = "diversity: per-pixel std over the draws, gray levels; " if "diversity" in cols else ""
    return ("\n".join(lines) + f"\n\n{known}LR-PSNR: the output downscaled vs the LR; {bpd}{div}grid: excess jump "
            "across 3x3 patch borders, in gray levels (0 = none).")


def build(app: App) -> gr.Blocks:
    c = app.config
    names = list(app.choices) + ([LOCAL] if c.allow_local_paths else [])
    with gr.Blocks(title="FlowSR-LP", analytics_enabled=False) as demo:
        gr.Markdown("# FlowSR-LP: temperature sampling vs the learned prior\nUpscale an image with a flow "
                    "model, by sampling its latent at a temperature and with the latent module's prediction.")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                image = image_input(sources=["upload", "clipboard"], label="Image (upload or paste)",
                                    elem_id="input-image", height=260)
                gr.Examples([[str(p)] for p in app.samples], inputs=[image], label="Sample photos")
                known_hr = gr.Checkbox(False, label="Known HR: downscale it first, then score against it")
                model = gr.Dropdown(names, value=app.default.name, label="Model")
                with gr.Group(visible=False) as local_box:
                    flow_path = gr.Textbox(label="Flow checkpoint path")
                    prior_path = gr.Textbox(label="Latent module path (optional)")
                model_info = gr.Markdown()
                scale = gr.Slider(1, 8, value=4, step=0.1, label="Scale")
                size = gr.Textbox(label="or output size HxW (LINF)", placeholder="e.g. 512x768")
                tau = gr.Slider(0, 1.5, value=0.8, step=0.05, label="Temperature tau")
                variation = gr.Slider(0, 1.5, value=0, step=0.05, label="Variation around the prior",
                                      info="0: the prior's prediction; > 0: Draws samples mu + t sigma eps")
                with gr.Row():
                    seed = gr.Number(0, precision=0, label="Seed")
                    draws = gr.Slider(1, service.MAX_DRAWS, value=4, step=1, label="Draws")
                run = gr.Button("Upscale", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                with gr.Row():
                    gallery = gr.Gallery(label="Temperature sampling", columns=2, height=360, elem_id="draws",
                                         format="png")
                    prior_img = gr.Image(label="Learned prior (click to zoom)", interactive=False, height=360,
                                         elem_id="prior", format="png")
                prior_gallery = gr.Gallery(label="Samples around the prior", columns=4, height=200,
                                           elem_id="prior-draws", format="png")
                metrics = gr.Markdown(elem_id="metrics")
                with gr.Tabs():
                    with gr.Tab("Compare"):
                        which = gr.Radio(list(PAIRS), value=PAIRS[2], label="Left | right")
                        slider = gr.ImageSlider(label="Drag to compare", height=420, elem_id="compare")
                    with gr.Tab("Zoom"):
                        pick = gr.Image(label="Click a point", interactive=False, height=300, format="png")
                        zoomed = gr.Image(label="Zoomed crops", interactive=False, format="png", elem_id="zoom")
                    with gr.Tab("Grid artifacts"):
                        heat = gr.Image(label="Grid score per 24x24 block", interactive=False, format="png")
                    with gr.Tab("Best temperature"):
                        tmap_run = gr.Button("Compute the best-temperature map (Fig. 2)")
                        tmap = gr.Image(label="Best temperature per region", interactive=False, format="png")
                        tmap_text = gr.Markdown()
                files = gr.File(label="PNG downloads", file_count="multiple", elem_id="downloads")
        shown = gr.State({})
        with gr.Row(visible=False):  # the /upscale API's own inputs and output
            api_in = [image_input(), gr.Number(4.0), gr.Number(0.8),
                      gr.Checkbox(True), gr.Number(0, precision=0)]
            api_out = gr.File()
            api_go = gr.Button()

        model_inputs = [model, flow_path, prior_path]
        model_outputs = [local_box, scale, size, model_info]
        demo.load(app.on_model, model_inputs, model_outputs, queue=False, api_visibility="private")
        # queued: picking a registry name may download it first
        model.change(app.on_model, model_inputs, model_outputs, concurrency_limit=None, api_visibility="private")
        flow_path.submit(app.on_model, model_inputs, model_outputs, concurrency_limit=None, api_visibility="private")
        run.click(app.on_run, [image] + model_inputs + [known_hr, scale, size, tau, seed, draws, variation],
                  [status, gallery, prior_img, metrics, slider, shown, heat, files, pick, prior_gallery],
                  concurrency_limit=None, api_visibility="private")
        which.change(app.pair, [shown, which], slider, queue=False, api_visibility="private")
        for source in (prior_img, pick):
            source.select(app.on_zoom, shown, zoomed, queue=False, api_visibility="private")
        tmap_run.click(app.on_temperature_map, [image] + model_inputs + [scale, seed], [tmap, tmap_text],
                       concurrency_limit=None, api_visibility="private")
        api_go.click(app.on_api, api_in, api_out, api_name="upscale", concurrency_limit=None)
    return demo


def theme():
    """The default look with the system's fonts (nothing fetched from the web)."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def launch(config: AppConfig, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           block: bool = True, quiet: bool = False):
    """Start the app; returns (App, gr.Blocks, local URL). With block=False it serves in a
    background thread until `blocks.close()`."""
    app = App(config)
    demo = build(app)
    demo.queue(max_size=64)
    try:
        _, url, _ = demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                                quiet=quiet, show_error=False, ssr_mode=False, allowed_paths=[str(app.work)],
                                max_file_size="100mb", theme=theme(), footer_links=["api"])
    finally:
        if block:
            app.close()
    return app, demo, url
