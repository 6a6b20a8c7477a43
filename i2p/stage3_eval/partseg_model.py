"""The part-segmentation network: the hierarchical encoder plus a per-point head.

The head follows the shape of Point-M2AE's segmentation model (its segmentation/
Point_M2AE_SEG.py, read, not copied): every level's LayerNorm'd tokens are carried back to
every input point by 3-NN inverse-distance interpolation (:func:`three_nn_interpolate`,
PointNet++ feature propagation), each concatenated with the point's xyz and passed through a
per-level point-wise MLP; the levels are concatenated; a global descriptor (max + mean over the
points, summed) and an embedding of the category one-hot are broadcast to every point and put
in front; a point-wise MLP with dropout gives one logit per part (all parts of the data set:
the metric and the loss only look at the parts of the shape's own category).

Sizes live in :class:`SegHeadConfig`; ``paper()`` are Point-M2AE's (1536-1024 per level,
1024-512-256 after, 64 for the category), the default is a smaller head that trains on a CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from i2p.common.point_ops import three_nn_interpolate


@dataclass(frozen=True)
class SegHeadConfig:
    propagation: tuple[int, ...] = (256,)  # per-level point-wise MLP after interpolation
    hidden: tuple[int, ...] = (256, 128)  # point-wise MLP before the part logits
    label_dim: int = 64  # embedding of the category one-hot
    dropout: float = 0.5  # after the first hidden layer, as Point-M2AE

    @classmethod
    def paper(cls) -> "SegHeadConfig":
        return cls(propagation=(1536, 1024), hidden=(1024, 512, 256), label_dim=64, dropout=0.5)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _pointwise(dims: list[int]) -> nn.Sequential:
    """1x1 convolutions with BatchNorm and ReLU between ``dims`` (over [B, C, N])."""
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Conv1d(a, b, 1, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class PartSegmenter(nn.Module):
    """``forward(points [B,N,3], category [B]) -> part logits [B, N, num_parts]``."""

    def __init__(self, encoder: nn.Module, enc_dims: tuple[int, ...], num_classes: int, num_parts: int,
                 head: SegHeadConfig = SegHeadConfig(), local_radii: tuple[float, ...] | None = None):
        super().__init__()
        self.encoder = encoder
        self.num_classes, self.num_parts = num_classes, num_parts
        self.local_radii = tuple(local_radii) if local_radii and any(r > 0 for r in local_radii) else None
        self.propagate = nn.ModuleList(_pointwise([d + 3, *head.propagation]) for d in enc_dims)
        width = head.propagation[-1] * len(enc_dims)
        self.label = nn.Sequential(nn.Conv1d(num_classes, head.label_dim, 1, bias=False),
                                   nn.BatchNorm1d(head.label_dim), nn.LeakyReLU(0.2))
        first, *rest = head.hidden
        self.mlp = nn.Sequential(_pointwise([2 * width + head.label_dim, first]), nn.Dropout(head.dropout),
                                 _pointwise([first, *rest]), nn.Conv1d(head.hidden[-1], num_parts, 1))

    def point_features(self, points: torch.Tensor) -> torch.Tensor:
        """[B, N, 3] -> [B, C, N]: every level's tokens propagated to the points, concatenated."""
        levels = self.encoder(points, local_radii=self.local_radii, finetune=True)
        xyz = points.transpose(1, 2)
        feats = []
        for lv, mlp in zip(levels, self.propagate):
            tokens = lv.tokens.masked_fill(~lv.valid[..., None], 0.0)
            interp = three_nn_interpolate(points, lv.centers, tokens).transpose(1, 2)  # [B, C_l, N]
            feats.append(mlp(torch.cat([xyz, interp], dim=1)))
        return torch.cat(feats, dim=1)

    def forward(self, points: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        x = self.point_features(points)
        n = x.shape[-1]
        glob = (x.amax(dim=-1) + x.mean(dim=-1))[..., None].expand(-1, -1, n)
        onehot = torch.nn.functional.one_hot(category, self.num_classes).to(x.dtype)[..., None]
        lab = self.label(onehot).expand(-1, -1, n)
        return self.mlp(torch.cat([glob, lab, x], dim=1)).transpose(1, 2)
