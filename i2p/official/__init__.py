"""Compatibility with the official I2P-MAE / Point-M2AE code.

- :mod:`i2p.official.keys`: state-dict names, official <-> i2p encoder.
- :mod:`i2p.official.config`: official ``model:`` config sections <-> i2p ``ModelConfig``.
- :mod:`i2p.official.convert`: official checkpoints -> i2p encoder exports (``i2p convert``), and back.
  Exports are written and read by :mod:`i2p.api.export` (the one export format) and loaded
  with :func:`i2p.load_encoder`, like an ``i2p export``.
- :mod:`i2p.official.export`: i2p runs and exports -> the official checkpoint layout
  (``i2p export --format i2p-mae|point-m2ae``), whole pre-training model where it is the official one.
- :mod:`i2p.official.eval`: :func:`official_embed`, the official eval computation with every
  level's intermediates.
- :mod:`i2p.official.params`: parameter counts of both architectures.

docs/FIDELITY.md lists every difference between i2p and the official code.
"""

# Lazy: ``i2p convert`` is mounted by ``i2p.cli``, which must not import torch (tests/test_architecture.py).
_WHERE = {"Converted": "convert", "ConversionError": "convert", "convert_checkpoint": "convert",
          "convert_state": "convert", "convert_to_dir": "convert", "export_official": "export",
          "official_embed": "eval",
          "official_outputs": "eval", "pool_tokens": "eval"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'i2p.official' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"i2p.official.{_WHERE[name]}"), name)
