"""The user's surface of i2p: a pretrained encoder as a plain Python object.

``i2p.load_encoder(path)`` (also reachable as ``i2p.api.load_encoder``) turns a run's checkpoint,
a run directory or an export directory into an :class:`~i2p.api.encoder.Encoder` with
``embed`` and ``point_features``; :func:`~i2p.api.export.write_export` writes the portable
export directory (safetensors + json, no pickle). Every ``i2p eval`` protocol, ``i2p export``
and ``i2p embed`` build their encoder through the same loader, so a number in a report and an
embedding a user computes come from the same code path.

This package's ``__init__`` imports nothing heavy: torch is imported only when an encoder is
loaded (see the module-level ``__getattr__``).
"""

from __future__ import annotations

_LAZY = {"Encoder": "i2p.api.encoder", "load_encoder": "i2p.api.loading",
         "write_export": "i2p.api.export", "read_export": "i2p.api.export"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'i2p.api' has no attribute {name!r}")
