"""The official eval computation, level by level: ``forward(points, eval=True)`` of I2P-MAE.

:func:`official_embed` runs the SAME code path as feature extraction
(``HierarchicalEncoder.forward``) and returns, besides the pooled feature, every level's
intermediates in the layout of the official fixtures (``level{l}.*`` of
/work/shared/fixtures/official-i2pmae/small/outputs.pt), so a test can compare centres,
neighbour sets, visibility and tokens, not only the final vector. It is meant for an encoder
with ``eval_mode='official'`` (a converted checkpoint) but works with any.
"""

from __future__ import annotations

import torch

# The one pooling of i2p (the Encoder's, every eval protocol's): max, meanmax (concatenated)
# and mean_plus_max (the SUM of mean and max, the official Point-M2AE SVM feature).
from i2p.api.encoder import POOLS as POOLINGS, pool_levels, pool_tokens  # noqa: F401  (re-exported)


def _encoder(model):
    return model.encoder if hasattr(model, "encoder") and not hasattr(model, "stacks") else model


@torch.no_grad()
def official_embed(model, points: torch.Tensor, pooling: str = "max") -> tuple[torch.Tensor, list[dict]]:
    """``(feature [B, D], levels)`` for ``points [B, N, 3]``; ``model`` is a
    ``HierarchicalEncoder`` or anything with one as ``.encoder``.

    ``levels[l]`` (finest first) holds, as in the official fixtures: ``fps_idx`` [B, G] (into
    the level's input set), ``centers`` [B, G, 3], ``knn_idx`` [B, G, K] (per cloud, nearest
    first), ``masked`` [B, G] (True = not encoded), ``token_embed`` [B, G, D] (the level's
    token embedding; zeros where not computed, which only happens with ``eval_mode='i2p'``),
    ``block_out`` [B, G, D] (transformer output before the LayerNorm, zeros where masked) and
    ``tokens`` [B, G, D] (after the LayerNorm, zeros where masked); ``tokens_raw`` [B, L, D] and
    ``tokens_raw_valid`` [B, L]: the encoded tokens of each cloud packed in ascending token
    order, padded to the longest (the official ``x_vis_list`` / ``mask_vis_list`` entries)."""
    enc = _encoder(model)
    was_training = enc.training
    enc.eval()
    try:
        trace: list[dict] = []
        h, visible = enc.plan(points)
        outs = enc.forward_hierarchy(h, visible, trace=trace)
    finally:
        enc.train(was_training)
    levels = []
    for lvl, (out, tr) in enumerate(zip(outs, trace)):
        levels.append({
            "fps_idx": h.fps[lvl], "centers": h.centers[lvl], "knn_idx": h.groups[lvl],
            "masked": ~out.visible, "token_embed": tr["token_embed"], "block_out": tr["block_out"],
            "tokens": out.full, "tokens_raw": out.tokens, "tokens_raw_valid": out.valid,
        })
    return pool_levels(outs, pooling), levels


def official_outputs(model, points: torch.Tensor, pooling: str = "max") -> dict[str, torch.Tensor]:
    """:func:`official_embed` as one flat dict in the layout of the official fixtures'
    ``outputs.pt``: ``svm_feature`` and ``level{l}.{fps_idx,centers,knn_idx,masked,token_embed,
    block_out,tokens,tokens_raw,tokens_raw_valid}`` (levels numbered from 1, finest first)."""
    feature, levels = official_embed(model, points, pooling)
    out = {"svm_feature": feature}
    for lvl, entries in enumerate(levels, start=1):
        out.update({f"level{lvl}.{k}": v for k, v in entries.items()})
    return out
