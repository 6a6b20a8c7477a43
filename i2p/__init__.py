"""i2p: 3D point-cloud representations distilled from frozen 2D models (I2P-MAE), as an
offline feature-cache pipeline: stage 1 caches the teacher's view features, stage 2 trains
the 3D masked autoencoder from the cache, stage 3 evaluates it.

Python API (see :mod:`i2p.api`)::

    import i2p
    enc = i2p.load_encoder("runs/pt/last.ckpt")   # or a run directory, or an `i2p export` directory
    z = enc.embed(points)                          # [B, N, 3] -> [B, D], numpy in -> numpy out
    f = enc.point_features(points)                 # [B, N, 3] -> [B, N, D']

``import i2p`` stays light: torch is imported only when ``load_encoder``/``Encoder`` is first
used (module-level ``__getattr__``), so ``i2p --help`` and tooling that only reads
``i2p.__version__`` do not pay for it.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_encoder", "Encoder"]


def __getattr__(name: str):
    if name in ("load_encoder", "Encoder"):
        from i2p import api

        return getattr(api, name)
    raise AttributeError(f"module 'i2p' has no attribute {name!r}")
