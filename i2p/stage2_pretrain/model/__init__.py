"""The I2P-MAE 3D network: tokenizer, 2D-guided masking, hierarchical encoder/decoder, losses.

Public entry points: :class:`ModelConfig` (``paper()`` / ``tiny()``), :func:`build_model`,
:class:`I2PMAE` (``forward`` for pre-training, ``encode`` for features),
:class:`HierarchicalEncoder` (``I2PMAE.encoder``, what stage 3 loads) and
:func:`optimizer_groups` (AdamW groups without decay on norms and biases).
"""

from i2p.stage2_pretrain.model.config import ModelConfig
from i2p.stage2_pretrain.model.encoder import HierarchicalEncoder, LevelOutput
from i2p.stage2_pretrain.model.mae import I2PMAE, build_model, optimizer_groups

__all__ = ["ModelConfig", "HierarchicalEncoder", "LevelOutput", "I2PMAE", "build_model", "optimizer_groups"]
