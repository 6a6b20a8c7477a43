"""Compatibility with the official I2P-MAE / Point-M2AE code.

- :mod:`i2p.official.keys`: state-dict names, official <-> i2p encoder.
- :mod:`i2p.official.config`: official ``model:`` config sections <-> i2p ``ModelConfig``.
- :mod:`i2p.official.convert`: official checkpoints -> i2p encoder exports (``i2p convert``), and back.
  Exports are written and read by :mod:`i2p.api.export` (the one export format) and loaded
  with :func:`i2p.load_encoder`, like an ``i2p export``.
- :mod:`i2p.official.eval`: :func:`official_embed`, the official eval computation with every
  level's intermediates.
- :mod:`i2p.official.params`: parameter counts of both architectures.

docs/FIDELITY.md lists every difference between i2p and the official code.
"""

from i2p.official.convert import Converted, ConversionError, convert_checkpoint, convert_state, convert_to_dir
from i2p.official.eval import official_embed, official_outputs, pool_tokens

__all__ = ["Converted", "ConversionError", "convert_checkpoint", "convert_state", "convert_to_dir",
           "official_embed", "official_outputs", "pool_tokens"]
