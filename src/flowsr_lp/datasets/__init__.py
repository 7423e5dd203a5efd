"""Training and benchmark data sets (the library behind `flowsr-lp data list|download|prepare`):
registry.py (what exists), fetch.py (download), unpack.py (prepare), listing.py (`data list`).

    flowsr-lp data download DIV2K benchmark [--root data] [--mirror URL] [--prepare]
    flowsr-lp data prepare DIV2K benchmark [--root data]

Archives go to ROOT/downloads/ (resumable downloads, sha256-checked: published digests where the
registry has them, otherwise trust on first use with ROOT/.checksums.json), and `prepare` unpacks them
into ROOT/DIV2K/..., ROOT/Flickr2K/Flickr2K_HR, ROOT/benchmark/<set>/{HR,LR_bicubic/X2..X4}.
"""
