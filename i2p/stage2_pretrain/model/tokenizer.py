"""Multi-scale tokenisation: the FPS + kNN hierarchy of Point-M2AE.

Level 1 groups the raw points (512 centres x 16 neighbours), level 2 groups level-1 centres
(256 x 8), level 3 groups level-2 centres (64 x 8). Every centre is an input point (FPS picks
points), so each level also records, for every centre, its index into the input cloud: that
is what lets the 2D targets be read at the ORIGINAL (un-augmented) coordinates while the
hierarchy itself is computed on the augmented cloud the network sees.

The tokenizer has no parameters; it lives outside ``nn.Module`` state so checkpoints do not
depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from i2p.common.point_ops import farthest_point_sample, gather, knn
from i2p.stage2_pretrain.model.rng import Rng


@dataclass
class Hierarchy:
    """Grouping of one batch. Lists are indexed by level (0 = finest).

    centers[l]     [B, G_l, 3]   centre coordinates (in the frame the network sees)
    groups[l]      [B, G_l, K_l] member indices into the level below (raw points for l = 0)
    neighbors[l]   [B, G_l, K_l, 3] member coordinates relative to their centre
    point_index[l] [B, G_l]      index of each centre in the input cloud
    fps[l]         [B, G_l]      FPS index of each centre into the level's candidates (the
                                 points for l = 0, the level l-1 centres otherwise)
    """

    centers: list[torch.Tensor]
    groups: list[torch.Tensor]
    neighbors: list[torch.Tensor]
    point_index: list[torch.Tensor]
    fps: list[torch.Tensor] | None = None

    @property
    def num_levels(self) -> int:
        return len(self.centers)

    def select(self, rows: torch.Tensor | slice) -> "Hierarchy":
        """The hierarchy of a subset of the batch (used to check batch independence)."""
        pick = lambda xs: [x[rows] for x in xs]  # noqa: E731
        return Hierarchy(pick(self.centers), pick(self.groups), pick(self.neighbors),
                         pick(self.point_index), pick(self.fps) if self.fps is not None else None)


def build_hierarchy(points: torch.Tensor, num_groups: tuple[int, ...], group_sizes: tuple[int, ...],
                    generator: Rng = None, skip_near_origin: float = 0.0) -> Hierarchy:
    """Group ``points [B, N, 3]`` level by level.

    FPS starts at index 0 of each level's candidates unless ``generator`` is given, in which
    case the start is drawn from it (reproducibly). kNN groups include their own centre.
    ``skip_near_origin`` (official tokenizer: 1e-3) is passed to every level's FPS.
    """
    centers, groups, neighbors, point_index, fps_index = [], [], [], [], []
    cand = points
    cand_index = None  # input-cloud index of each candidate (None = identity at level 0)
    for g, k in zip(num_groups, group_sizes):
        start = generator if generator is not None else 0
        fps = farthest_point_sample(cand, g, start=start, skip_near_origin=skip_near_origin)  # [B, g]
        fps_index.append(fps)
        ctr = gather(cand, fps)  # [B, g, 3]
        members = knn(ctr, cand, k)  # [B, g, k]
        centers.append(ctr)
        groups.append(members)
        neighbors.append(gather(cand, members) - ctr[:, :, None, :])
        pidx = fps if cand_index is None else gather(cand_index, fps)
        point_index.append(pidx)
        cand, cand_index = ctr, pidx
    return Hierarchy(centers, groups, neighbors, point_index, fps_index)
