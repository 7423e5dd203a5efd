"""Released models by name: the registry (`registry.py`, data in `models.json`), downloads into
a verified cache (`cache.py`, `download.py`), resolution of any checkpoint argument: a path, a
registry name, an http(s) URL or hf://owner/repo/file (`resolve.py`), and conversion of
official pickles to the project's .safetensors (`convert.py`).

    flowsr_lp.load_flow("rrdb-linf")        # fetched, verified, cached: load_flow resolves names
    from flowsr_lp.hub.resolve import resolve
    resolve("https://host/x.pth")           # -> a local path in the cache
"""
