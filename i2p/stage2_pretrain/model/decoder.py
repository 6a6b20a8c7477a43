"""Hierarchical decoder: coarsest level with mask tokens, then 3-NN propagation upwards.

Level 3 (coarsest): the encoder's visible tokens stay at their own index, masked indices get
a learned mask token, every token gets the decoder's position embedding of its centre, and a
transformer stack (dim 384, depth 1) fills the masked ones in. To go one level finer, the
decoded tokens are carried to the finer centres by inverse-distance 3-NN interpolation and
fused with a skip connection from that level's encoder output (zeros at masked tokens), as in
Point-M2AE's ``PointNetFeaturePropagation``; then that level's stack (dim 192, depth 1) runs
and a final LayerNorm feeds the reconstruction heads.

Two styles (``ModelConfig.decoder_style``):

* ``'i2p'`` (default): the fusion is Linear-LayerNorm-GELU, every linear truncated-normal(0.02).
  LayerNorm (not BatchNorm) keeps the decoder independent of batch composition, so a DDP run
  equals a single-process run.
* ``'official'``: the official ``PointNetFeaturePropagation`` (models/modules.py:118-169): a
  Conv1d-BN-GELU fuse, then ``up_blocks`` residual blocks ``GELU(BN(W2 GELU(BN(W1 x))) + x)``
  (``ConvBNReLURes1D``, modules.py:68-96), kernel-1 convs written as Linear layers; BatchNorm
  over all tokens of the batch. Initialised as officially: xavier-uniform linears with zero
  bias in the transformer stacks (``Decoder_Block._init_weights``, modules.py:386-395),
  PyTorch's default init for the position embeddings and the fusion, the mask token
  truncated-normal(0.02). Its parameters have the official shapes (``official.keys``).
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


def _tokens_bn(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm1d over the channel (last) axis of ``[B, G, C]`` tokens: statistics over all
    B*G tokens, as the official Conv1d + BatchNorm1d on ``[B, C, G]``."""
    b, g, c = x.shape
    return bn(x.reshape(b * g, c)).view(b, g, c)


class _ConvBN(nn.Module):
    """Linear (= Conv1d kernel 1) then BatchNorm1d over tokens, then GELU when ``act``."""

    def __init__(self, c_in: int, c_out: int, act: bool):
        super().__init__()
        self.linear = nn.Linear(c_in, c_out)
        self.bn = nn.BatchNorm1d(c_out)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(_tokens_bn(self.bn, self.linear(x)))


class _ResBlock(nn.Module):
    """The official ``ConvBNReLURes1D`` (groups 1, expansion 1): GELU(net2(net1(x)) + x)."""

    def __init__(self, c: int):
        super().__init__()
        self.net1 = _ConvBN(c, c, act=True)
        self.net2 = _ConvBN(c, c, act=False)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.net2(self.net1(x)) + x)


class OfficialFuse(nn.Module):
    """The official token propagation after the interpolation: Conv-BN-GELU from the
    concatenated ``[skip, interpolated]`` channels, then ``blocks`` residual blocks."""

    def __init__(self, c_in: int, c_out: int, blocks: int):
        super().__init__()
        self.fuse = _ConvBN(c_in, c_out, act=True)
        self.extraction = nn.ModuleList(_ResBlock(c_out) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fuse(x)
        for blk in self.extraction:
            x = blk(x)
        return x


def _official_init(dec: "HierarchicalDecoder") -> None:
    """Official decoder init: xavier-uniform linears, zero biases and unit LayerNorms in the
    transformer stacks only; everything else keeps PyTorch's default init."""
    for m in dec.stacks.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class HierarchicalDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        dims, depths, enc = cfg.dec_dims, cfg.dec_depths, cfg.enc_dims
        top = cfg.num_levels - 1
        official = cfg.decoder_style == "official"
        self.levels = [top - i for i in range(len(dims))]  # decoded levels, coarsest first
        self.in_proj = nn.Identity() if enc[top] == dims[0] else nn.Linear(enc[top], dims[0])
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dims[0]))
        self.pos_embeds = nn.ModuleList(position_mlp(d) for d in dims)
        self.fuse = nn.ModuleList(
            OfficialFuse(enc[lvl] + dims[i - 1], dims[i], cfg.dec_up_blocks) if official else
            nn.Sequential(nn.Linear(enc[lvl] + dims[i - 1], dims[i]), nn.LayerNorm(dims[i]), nn.GELU())
            for i, lvl in enumerate(self.levels) if i > 0)
        dpr = torch.linspace(0, cfg.drop_path, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.stacks = nn.ModuleList(
            Stack(d, n, cfg.num_heads, cfg.mlp_ratio, dpr[s:s + n]) for d, n, s in zip(dims, depths, starts))
        self.norm = nn.LayerNorm(dims[-1])
        if official:
            _official_init(self)
        else:
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
