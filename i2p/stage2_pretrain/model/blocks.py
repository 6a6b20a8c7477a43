"""Transformer building blocks: pre-norm ViT blocks with stochastic depth and padding masks.

Visible-token counts differ between samples at the finer levels, so sequences are padded and
attention takes a boolean mask (True = may attend) through
``F.scaled_dot_product_attention``; that keeps one batched call per block instead of a Python
loop over samples, and uses the fused kernels where the backend has them. Stochastic depth
draws from an optional ``torch.Generator`` so training is reproducible from explicit state.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from i2p.stage2_pretrain.model.rng import Rng, uniform


def drop_path(x: torch.Tensor, p: float, training: bool,
              generator: Rng = None) -> torch.Tensor:
    """Stochastic depth: zero a residual branch for whole samples with probability ``p``."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    u = uniform((x.shape[0],), generator, x.device)
    mask = (u < keep).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return x * mask / keep


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class Attention(nn.Module):
    """Multi-head self-attention (no qkv bias, as in Point-MAE / Point-M2AE)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        bsz, n, c = x.shape
        qkv = self.qkv(x).view(bsz, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(bsz, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + DP(MHSA(LN(x))), then x + DP(MLP(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                generator: Rng = None) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x), attn_mask), self.drop_path, self.training, generator)
        x = x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training, generator)
        return x


class Stack(nn.Module):
    """Blocks of one level. As in Point-M2AE the position embedding is added to the input of
    EVERY block (not only the first), so position stays visible at every depth."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float,
                 drop_paths: list[float]):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, drop_paths[i]) for i in range(depth))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, attn_mask: torch.Tensor | None = None,
                generator: Rng = None) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x + pos, attn_mask, generator)
        return x


def key_padding_mask(valid: torch.Tensor) -> torch.Tensor | None:
    """[B, L] validity -> boolean SDPA mask [B, 1, 1, L] (None when nothing is padded, so the
    unmasked fast path is used)."""
    if bool(valid.all()):
        return None
    return valid[:, None, None, :]


def position_mlp(dim: int) -> nn.Sequential:
    """Learned position embedding of a centre: Linear(3, d) -> GELU -> Linear(d, d)."""
    return nn.Sequential(nn.Linear(3, dim), nn.GELU(), nn.Linear(dim, dim))


def init_weights(module: nn.Module) -> None:
    """Truncated-normal(0.02) linears with zero bias, unit LayerNorms (the ViT/MAE recipe)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
