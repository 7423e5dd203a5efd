"""`flowsr-lp app`: a Gradio app to compare temperature sampling with the learned prior on
your own image.

`models` (the model list and a thread-safe cache with one bounded queue per loaded model),
`service` (one request from image to SR outputs and metrics, no Gradio needed) and `views`
(the pictures: exploding-inverse marker, grid heat map, zoomed crops) are plain Python;
`ui` builds the Gradio page around them and is the only module that imports Gradio (the
`app` extra)."""
import os

# No telemetry or version check from Gradio: the app runs offline. Set before `ui` imports it.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
