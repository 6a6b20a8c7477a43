"""Reading the cached 2D teacher at 3D points: the saliency cloud and the 2D feature targets.

Both are gathered at the ORIGINAL coordinates of the points the hierarchy picked (centres are
input points, so their input-cloud index is known): the cache's projection parameters
describe the un-augmented cloud, so this keeps targets exact whatever augmentation the
network sees. Nothing here needs gradients, and autocast is switched off: under a bf16
autocast the back-projection matmul would otherwise round the targets to bf16.
"""

from __future__ import annotations

import torch

from i2p.common.point_ops import gather
from i2p.stage1_project.projection import back_project
from i2p.stage2_pretrain.model.tokenizer import Hierarchy


@torch.no_grad()
def saliency_cloud(view_saliency: torch.Tensor, points: torch.Tensor, h: Hierarchy, proj: torch.Tensor,
                   size: int) -> torch.Tensor:
    """Back-projected saliency at the coarsest centres, averaged over views: ``[B, G_top]``."""
    xyz = gather(points, h.point_index[-1])
    with torch.autocast(points.device.type, enabled=False):
        return back_project(view_saliency.float(), xyz.float(), proj.float(), size=size).mean(dim=1)


@torch.no_grad()
def project_channels(view_features: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``[..., C]`` maps -> ``[..., r]``: their coordinates on the columns of ``basis [C, r]``,
    in fp32 whatever the autocast. Back-projection is linear, so projecting the maps and then
    back-projecting equals back-projecting and then projecting (up to rounding), at r/C of the
    back-projection's cost."""
    with torch.autocast(view_features.device.type, enabled=False):
        return view_features.float() @ basis.float()


@torch.no_grad()
def feature_targets(view_features: torch.Tensor, points: torch.Tensor, h: Hierarchy, level: int,
                    proj: torch.Tensor, size: int, b_idx: torch.Tensor, g_idx: torch.Tensor) -> torch.Tensor:
    """Teacher features of the members of tokens ``(b_idx, g_idx)`` at ``level``:
    ``[n, K, V*C]``, views concatenated in order along the last axis.

    Only the candidates (level-1 centres for level 2) that are members of some requested token
    are back-projected, each once per sample (neighbouring groups share members): at the tiny
    sizes ~57% of the 256 level-1 centres, which makes the back-projection ~1.6x faster (the
    values are those of back-projecting every candidate: each point's row is independent).
    """
    cand = points if level == 0 else gather(points, h.point_index[level - 1])
    members = h.groups[level][b_idx, g_idx]  # [n, K] candidate indices
    need = torch.zeros(cand.shape[:2], dtype=torch.bool, device=cand.device)
    need[b_idx[:, None], members] = True
    width = max(1, int(need.sum(dim=1).max()))
    # each sample's needed candidates first, in index order (padding: unneeded ones, unread)
    order = torch.argsort((~need).to(torch.uint8), dim=1, stable=True)[:, :width]
    slot = torch.cumsum(need, dim=1) - 1  # a needed candidate's place in ``order``
    with torch.autocast(points.device.type, enabled=False):
        f = back_project(view_features, gather(cand, order).float(), proj.float(), size=size)  # [B, V, W, C]
    # indexing dims 0 and 2 puts the index dims first: [n, K, V, C], views in order (no
    # permuted copy of every candidate's features, only the gathered members are written)
    return f[b_idx[:, None], :, slot[b_idx[:, None], members]].flatten(2)
