"""2D-guided (or random) masking at the coarsest level and its propagation to finer levels.

Sampling ``G`` tokens without replacement from ``softmax(s / T)`` and keeping the first
``n_vis`` drawn is done with the Gumbel-top-k trick: ``argsort(s / T + Gumbel noise)`` is an
exact sample of that sequential draw (Kool et al., 2019), batched, and all its randomness comes
from explicit ``torch.Generator`` state (``rng.Rng``) so that a resumed run reproduces its
masks bit for bit.
With ``T -> 0`` it keeps the ``n_vis`` most salient tokens; random masking is the same draw
with uniform scores.
"""

from __future__ import annotations

import torch

from i2p.stage2_pretrain.model.rng import Rng, uniform


def draw_order(scores: torch.Tensor | None, batch: int, num_tokens: int, temperature: float = 1.0,
               generator: Rng = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """A full draw without replacement, ``[B, G]`` token indices in drawing order.

    ``scores [B, G]`` are logits of the draw (divided by ``temperature``); ``None`` = uniform.
    """
    u = uniform((batch, num_tokens), generator, torch.device(device))
    gumbel = -torch.log(-torch.log(u.clamp(1e-12, 1.0 - 1e-7)))
    keys = gumbel if scores is None else scores.float() / temperature + gumbel
    return torch.argsort(keys, dim=1, descending=True, stable=True)


def visible_from_order(order: torch.Tensor, num_visible: int) -> torch.Tensor:
    """Boolean visibility ``[B, G]``: True for the first ``num_visible`` tokens drawn."""
    vis = torch.zeros(order.shape, dtype=torch.bool, device=order.device)
    return vis.scatter(1, order[:, :num_visible], True)


def coarse_visibility(saliency: torch.Tensor | None, batch: int, num_tokens: int, num_visible: int,
                      mode: str, temperature: float = 1.0, generator: Rng = None,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """Visibility of the coarsest tokens: ``mode='saliency'`` draws from softmax(s/T),
    ``mode='random'`` uniformly (saliency, if given, is ignored)."""
    if mode == "saliency":
        if saliency is None:
            raise ValueError("mask_mode='saliency' needs the saliency cloud (view_saliency + proj)")
        scores = saliency
    elif mode == "random":
        scores = None
    else:
        raise ValueError(f"unknown mask mode {mode!r}")
    order = draw_order(scores, batch, num_tokens, temperature, generator, device)
    return visible_from_order(order, num_visible)


def propagate_visibility(coarse_visible: torch.Tensor, groups: torch.Tensor,
                         num_fine: int) -> torch.Tensor:
    """Finer visibility ``[B, G_fine]``: a fine token is visible iff it is a member of the kNN
    group ``groups [B, G_coarse, K]`` of at least one visible coarse token."""
    bsz, gc, k = groups.shape
    hits = coarse_visible[:, :, None].expand(bsz, gc, k).reshape(bsz, gc * k).to(torch.int32)
    count = torch.zeros(bsz, num_fine, dtype=torch.int32, device=groups.device)
    count.scatter_add_(1, groups.reshape(bsz, gc * k), hits)
    return count > 0


def all_visibilities(coarse_visible: torch.Tensor, groups: list[torch.Tensor],
                     num_groups: tuple[int, ...]) -> list[torch.Tensor]:
    """Visibility for every level (finest first) from the coarsest level's visibility."""
    vis = [coarse_visible]
    for lvl in range(len(num_groups) - 1, 0, -1):
        vis.append(propagate_visibility(vis[-1], groups[lvl], num_groups[lvl - 1]))
    return vis[::-1]


def pack(visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded layout of the visible tokens of each sample.

    Returns ``order [B, L]`` (token indices: the visible ones first, ascending; then padding
    that points at masked tokens) and ``valid [B, L]`` (True on real tokens), where ``L`` is
    the largest visible count in the batch. Row-major ``x[visible]`` and ``y[valid]`` enumerate
    the same tokens in the same order, which is how flat and padded tensors are exchanged.
    """
    count = visible.sum(dim=1)
    length = int(count.max())
    order = torch.argsort((~visible).to(torch.uint8), dim=1, stable=True)[:, :length]
    valid = torch.arange(length, device=visible.device)[None, :] < count[:, None]
    return order, valid


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is True (NaN if empty), for logging."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum()


__all__ = ["draw_order", "visible_from_order", "coarse_visibility",
           "propagate_visibility", "all_visibilities", "pack", "masked_mean"]
