"""Hierarchical decoder: coarsest level with mask tokens, then 3-NN propagation upwards.

Level 3 (coarsest): the encoder's visible tokens stay at their own index, masked indices get
a learned mask token, every token gets the decoder's position embedding of its centre, and a
transformer stack (dim 384, depth 1) fills the masked ones in. To go one level finer, the
decoded tokens are carried to the finer centres by inverse-distance 3-NN interpolation and
fused with a skip connection from that level's encoder output (zeros at masked tokens), as in
Point-M2AE's ``PointNetFeaturePropagation``; then that level's stack (dim 192, depth 1) runs
and a final LayerNorm feeds the reconstruction heads.

LayerNorm (not BatchNorm) in the fusion keeps the decoder independent of batch composition.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from i2p.common.point_ops import three_nn_interpolate
from i2p.stage2_pretrain.model.blocks import Stack, init_weights, position_mlp
from i2p.stage2_pretrain.model.config import ModelConfig
from i2p.stage2_pretrain.model.encoder import LevelOutput
from i2p.stage2_pretrain.model.rng import Rng
from i2p.stage2_pretrain.model.tokenizer import Hierarchy


class HierarchicalDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        dims, depths, enc = cfg.dec_dims, cfg.dec_depths, cfg.enc_dims
        top = cfg.num_levels - 1
        self.levels = [top - i for i in range(len(dims))]  # decoded levels, coarsest first
        self.in_proj = nn.Identity() if enc[top] == dims[0] else nn.Linear(enc[top], dims[0])
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dims[0]))
        self.pos_embeds = nn.ModuleList(position_mlp(d) for d in dims)
        self.fuse = nn.ModuleList(
            nn.Sequential(nn.Linear(enc[lvl] + dims[i - 1], dims[i]), nn.LayerNorm(dims[i]), nn.GELU())
            for i, lvl in enumerate(self.levels) if i > 0)
        dpr = torch.linspace(0, cfg.drop_path, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.stacks = nn.ModuleList(
            Stack(d, n, cfg.num_heads, cfg.mlp_ratio, dpr[s:s + n]) for d, n, s in zip(dims, depths, starts))
        self.norm = nn.LayerNorm(dims[-1])
        init_weights(self)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, h: Hierarchy, enc: list[LevelOutput],
                generator: Rng = None) -> torch.Tensor:
        """All tokens of the finest decoded level, ``[B, G_head, dec_dims[-1]]``, LayerNorm'd."""
        top = self.levels[0]
        x = self.in_proj(enc[top].full)
        x = torch.where(enc[top].visible[..., None], x, self.mask_token.to(x.dtype))
        x = self.stacks[0](x, self.pos_embeds[0](h.centers[top]), None, generator)
        for i, lvl in enumerate(self.levels[1:], start=1):
            up = three_nn_interpolate(h.centers[lvl], h.centers[lvl + 1], x)
            x = self.fuse[i - 1](torch.cat([enc[lvl].full, up], dim=-1))
            x = self.stacks[i](x, self.pos_embeds[i](h.centers[lvl]), None, generator)
        return self.norm(x)
