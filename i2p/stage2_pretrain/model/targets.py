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
def feature_targets(view_features: torch.Tensor, points: torch.Tensor, h: Hierarchy, level: int,
                    proj: torch.Tensor, size: int, b_idx: torch.Tensor, g_idx: torch.Tensor) -> torch.Tensor:
    """Teacher features of the members of tokens ``(b_idx, g_idx)`` at ``level``:
    ``[n, K, V*C]``, views concatenated in order along the last axis.

    The members' candidates (level-1 centres for level 2) are back-projected once per sample
    and then indexed, since neighbouring groups share members.
    """
    cand = points if level == 0 else gather(points, h.point_index[level - 1])
    with torch.autocast(points.device.type, enabled=False):
        f = back_project(view_features, cand.float(), proj.float(), size=size)  # [B, V, N', C], fp32
    f = f.permute(0, 2, 1, 3).flatten(2)  # [B, N', V*C]
    members = h.groups[level][b_idx, g_idx]  # [n, K]
    return f[b_idx[:, None], members]
