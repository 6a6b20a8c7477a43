"""Hierarchical encoder: token embedding + transformer blocks over VISIBLE tokens, per level.

This module is everything stage 3 needs (it is saved and loaded on its own): it groups the
cloud (``group``), embeds each level's visible groups, runs that level's blocks on a padded
batch with a key-padding mask, and hands the encoded tokens to the next level's token
merging. With no visibility given every token is visible and no padding happens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from i2p.common.point_ops import gather
from i2p.stage2_pretrain.model.blocks import Stack, init_weights, key_padding_mask, position_mlp
from i2p.stage2_pretrain.model.config import ModelConfig
from i2p.stage2_pretrain.model.embed import TokenEmbed
from i2p.stage2_pretrain.model.masking import all_visibilities, pack
from i2p.stage2_pretrain.model.rng import Rng
from i2p.stage2_pretrain.model.tokenizer import Hierarchy, build_hierarchy


@dataclass
class LevelOutput:
    """One level's encoder output.

    tokens  [B, L, C]  LayerNorm'd encoded visible tokens, padded to the largest count L
    valid   [B, L]     True on real (non-padding) entries
    order   [B, L]     token index (into the level's G tokens) of each padded entry
    centers [B, L, 3]  centre of each padded entry
    full    [B, G, C]  the same LayerNorm'd tokens at their own index, zeros where masked
    visible [B, G]     the visibility the level was encoded with
    """

    tokens: torch.Tensor
    valid: torch.Tensor
    order: torch.Tensor
    centers: torch.Tensor
    full: torch.Tensor
    visible: torch.Tensor


# The pointnet2 FPS kernel of the official code never picks a point whose squared norm is <= this.
OFFICIAL_FPS_SKIP = 1e-3


def official_eval_visibility(h: Hierarchy) -> list[torch.Tensor]:
    """The official eval rule (H_Encoder.forward with eval=True): every coarsest token is
    encoded; going down, a token is encoded only if the kNN group of some encoded coarser token
    holds it. (The official scatter also marks token 0 of cloud 0 visible whenever a coarser
    token is masked; token 0 is always visible anyway -- FPS starts there and every group holds
    its own centre -- so that side effect changes nothing and is not reproduced.)"""
    top = h.centers[-1]
    coarse = torch.ones(top.shape[:2], dtype=torch.bool, device=top.device)
    sizes = tuple(c.shape[1] for c in h.centers)
    return all_visibilities(coarse, h.groups, sizes)


def scatter_full(x: torch.Tensor, order: torch.Tensor, valid: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Padded ``[B, L, C]`` -> ``[B, G, C]`` at the tokens' own indices, zeros elsewhere.
    Padding entries point at masked tokens (distinct indices) and write zeros there."""
    x = torch.where(valid[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    out = x.new_zeros(x.shape[0], num_tokens, x.shape[-1])
    return out.scatter(1, order[..., None].expand(-1, -1, x.shape[-1]), x)


class HierarchicalEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        dims, depths = cfg.enc_dims, cfg.enc_depths
        self.embeds = nn.ModuleList(
            TokenEmbed(lvl, dims[lvl - 1] if lvl else 3, dims[lvl], cfg.embed_hidden, cfg.embed_norm,
                       cfg.token_merge)
            for lvl in range(len(dims)))
        self.pos_embeds = nn.ModuleList(position_mlp(d) for d in dims)
        # Stochastic depth rises linearly over ALL encoder blocks, as in Point-M2AE.
        dpr = torch.linspace(0, cfg.drop_path, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.stacks = nn.ModuleList(
            Stack(d, n, cfg.num_heads, cfg.mlp_ratio, dpr[s:s + n]) for d, n, s in zip(dims, depths, starts))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        init_weights(self)

    def group(self, points: torch.Tensor, generator: Rng = None) -> Hierarchy:
        """FPS + kNN hierarchy of ``points [B, N, 3]`` (the frame the network sees)."""
        gen = generator if self.cfg.fps_random_start else None
        skip = OFFICIAL_FPS_SKIP if self.cfg.eval_mode == "official" else 0.0
        return build_hierarchy(points, self.cfg.num_groups, self.cfg.group_sizes, gen, skip)

    def forward_hierarchy(self, h: Hierarchy, visible: list[torch.Tensor] | None = None,
                          generator: Rng = None,
                          local_radii: tuple[float, ...] | None = None,
                          trace: list[dict] | None = None) -> list[LevelOutput]:
        """Encode a grouped batch. ``visible[l] [B, G_l]`` must be closed under membership
        (every member of a visible token visible, as ``masking.all_visibilities`` makes it);
        None = everything visible. ``local_radii[l] > 0`` restricts attention at level l to
        centres closer than the radius (the fine-tuning option of Point-M2AE).

        With ``eval_mode='official'`` every token is embedded (the official code's way: a
        masked token's members may be masked tokens, which then feed their own embedding), so
        the embeddings of masked tokens are the official ones too. ``trace`` (a list) receives
        one dict per level: ``token_embed`` [B, G, C] (zeros where not computed) and
        ``block_out`` [B, G, C] (the pre-LayerNorm transformer output, zeros where masked)."""
        official = self.cfg.eval_mode == "official"
        outs: list[LevelOutput] = []
        prev_full = None  # previous level's encoded tokens at their own index (pre-norm)
        for lvl in range(h.num_levels):
            centers = h.centers[lvl]
            bsz, g, _ = centers.shape
            vis = visible[lvl] if visible is not None else torch.ones(bsz, g, dtype=torch.bool, device=centers.device)
            order, valid = pack(vis)
            if official:
                k = h.groups[lvl].shape[-1]
                rel = h.neighbors[lvl].reshape(bsz * g, k, 3)
                if lvl == 0:
                    emb_all = self.embeds[lvl](rel)
                else:
                    members = gather(prev_full, h.groups[lvl])  # [B, g, K, C_prev]
                    emb_all = self.embeds[lvl](rel, members.reshape(bsz * g, k, -1))
                emb_all = emb_all.view(bsz, g, -1)
                x = torch.where(valid[..., None], gather(emb_all, order), torch.zeros((), dtype=emb_all.dtype,
                                                                                       device=emb_all.device))
            else:
                rel = h.neighbors[lvl][vis]  # [n, K, 3], row-major over (b, g)
                if lvl == 0:
                    emb = self.embeds[lvl](rel)
                else:
                    b_idx, g_idx = vis.nonzero(as_tuple=True)
                    members = prev_full[b_idx[:, None], h.groups[lvl][b_idx, g_idx]]  # [n, K, C_prev]
                    emb = self.embeds[lvl](rel, members)
                x = emb.new_zeros(bsz, order.shape[1], emb.shape[-1]).masked_scatter(valid[..., None], emb)
                emb_all = scatter_full(x, order, valid, g) if trace is not None else None
            ctr = gather(centers, order)
            mask = key_padding_mask(valid)
            if official:
                ctr, mask = self._official_padding(ctr, valid, mask, lvl, local_radii)
            if local_radii is not None and local_radii[lvl] > 0:
                near = (torch.cdist(ctr, ctr) < local_radii[lvl]) & valid[:, None, :]
                # Every query keeps itself so that no row (padding included) is fully masked.
                near |= torch.eye(near.shape[-1], dtype=torch.bool, device=near.device)
                mask = near[:, None]
            x = self.stacks[lvl](x, self.pos_embeds[lvl](ctr), mask, generator)
            prev_full = scatter_full(x, order, valid, g)
            if trace is not None:
                trace.append({"token_embed": emb_all, "block_out": prev_full})
            if official:  # masked tokens pass their embedding on (group_input_tokens in the official code)
                prev_full = torch.where(vis[..., None], prev_full, emb_all)
            normed = self.norms[lvl](x)
            outs.append(LevelOutput(normed, valid, order, ctr, scatter_full(normed, order, valid, g), vis))
        return outs

    def _official_padding(self, ctr: torch.Tensor, valid: torch.Tensor, mask, lvl: int,
                          local_radii) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Padding rows as the official encoder builds them: centre (0,0,0) (and zero tokens).
        With ``official_local_radius[lvl] > 0`` (and no fine-tuning radii) a pair that involves
        a padding row is masked only when the two centres are at least the radius apart
        (official: ``mask_radius * mask_vis``), so padding near the origin is attended to."""
        ctr = torch.where(valid[..., None], ctr, torch.zeros((), dtype=ctr.dtype, device=ctr.device))
        radii = self.cfg.official_local_radius
        if mask is None or local_radii is not None or not radii or radii[lvl] <= 0:
            return ctr, mask
        near = torch.cdist(ctr, ctr) < radii[lvl]  # torch's default mode, as the official code
        both = valid[:, :, None] & valid[:, None, :]
        return ctr, (both | near)[:, None]

    def forward(self, points: torch.Tensor, local_radii: tuple[float, ...] | None = None,
                generator: Rng = None, finetune: bool = False,
                trace: list[dict] | None = None) -> list[LevelOutput]:
        """Unmasked encoding of ``points [B, N, 3]`` (stage 3 / feature extraction).

        With ``eval_mode='official'`` the feature pass applies the official eval visibility
        rule (:func:`official_eval_visibility`); ``finetune=True`` encodes every token, as the
        official fine-tuning models do. With ``eval_mode='i2p'`` every token is encoded."""
        h, visible = self.plan(points, generator, finetune)
        return self.forward_hierarchy(h, visible, generator, local_radii, trace)

    def plan(self, points: torch.Tensor, generator: Rng = None,
             finetune: bool = False) -> tuple[Hierarchy, list[torch.Tensor] | None]:
        """The grouping and the visibility (None = all) that :meth:`forward` encodes with."""
        h = self.group(points, generator)
        visible = official_eval_visibility(h) if self.cfg.eval_mode == "official" and not finetune else None
        return h, visible

    def global_feature(self, points: torch.Tensor, pool: str = "max") -> torch.Tensor:
        """Shape descriptor for linear probes: the LayerNorm'd coarsest tokens pooled over
        tokens, ``[B, D]`` for ``pool='max'`` or ``[B, 2D]`` (mean then max) for ``'mean+max'``."""
        tokens = self.forward(points)[-1].tokens
        if pool == "max":
            return tokens.amax(dim=1)
        if pool == "mean+max":
            return torch.cat([tokens.mean(dim=1), tokens.amax(dim=1)], dim=-1)
        raise ValueError(f"pool must be 'max' or 'mean+max', got {pool!r}")
