"""`flowsr-lp app`: the interactive Gradio app (the `app` extra)."""
from __future__ import annotations

from ..cli_options import add_device, add_precision, inference_device, positive_float
from ..errors import UsageError


def add_parser(sub, parents=()) -> None:
    p = sub.add_parser("app", parents=list(parents),
                       help="the browser app: temperature sampling vs the learned prior on your own image",
                       description="Start a Gradio app: upload an image, compare temperature sampling with the "
                                   "learned prior (slider, zoom, grid-artifact and best-temperature maps, metrics "
                                   "in known-HR mode). Also serves the API endpoint /upscale "
                                   "(image, scale, tau, use_prior, seed) -> PNG file.")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true",
                   help="also open a public Gradio share link (needs the internet; local checkpoint paths are off)")
    p.add_argument("--max-megapixels", type=positive_float, default=4.0,
                   help="refuse inputs or outputs larger than this, before any work (default 4)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="requests running at once on each loaded model; the others wait in its queue (default 1)")
    p.add_argument("--max-models", type=int, default=4, help="models kept loaded (default 4)")
    add_precision(p)
    add_device(p)
    p.set_defaults(run=run)


def run(args) -> int:
    if args.concurrency < 1 or args.max_models < 1 or not 0 < args.port < 65536:
        raise UsageError("--concurrency and --max-models must be >= 1 and --port in 1-65535")
    try:  # imported here: Gradio is an optional extra, and the other commands never need it
        from ..app.ui import AppConfig, launch
    except ImportError as e:
        raise UsageError(f"the app needs Gradio: pip install 'flowsr-lp[app]' ({e})") from None
    device = inference_device(args.device, args.threads)
    config = AppConfig(max_megapixels=args.max_megapixels, concurrency=args.concurrency,
                       device=str(device), max_models=args.max_models, precision=args.precision,
                       allow_local_paths=not args.share)
    launch(config, host=args.host, port=args.port, share=args.share, block=True, quiet=args.quiet > 0)
    return 0
