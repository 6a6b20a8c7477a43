"""Multi-view depth projection of point clouds and its inverse, back-projection.

The same arithmetic maps a point to its pixel in both directions (:func:`pixel_indices`), from
the per-view parameters that stage 1 stores in the cache (``proj``: min a, min b, cell, shift a,
shift b). That is what keeps cached 2D targets exact: stage 2 never re-renders, it only needs a
point's original coordinates and ``proj`` to find where the teacher saw it.

Conventions (see DESIGN.md, stage 1):

* View v is an axis permutation ``VIEW_AXES[v] = (a, b, d)``: coordinate ``a`` indexes image
  rows, ``b`` image columns, ``d`` is the value written.
* ``cell = max(range_a, range_b) / (S - 3)``; ``pixel = floor((p - min) / cell) + 1``; the
  object's pixel box ``[1, pixel_max]`` is shifted (integer) to the image centre; every point
  is stamped on its 5x5 neighbourhood; indices are clamped to ``[0, S-1]``; a pixel holds the
  SUM of the depth values stamped on it.
* Everything is batched over samples and views and runs on any device; there is no Python
  loop over points or samples.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

VIEW_AXES: tuple[tuple[int, int, int], ...] = ((0, 1, 2), (2, 0, 1), (1, 2, 0))
IMAGE_SIZE = 224
STAMP = 5
PROJ_FIELDS = ("min_a", "min_b", "cell", "shift_a", "shift_b")
# 'sum': the paper's raster (a pixel holds the signed sum of the depths stamped on it);
# 'zbuffer': a pixel holds the nearest surface's depth (largest d), mapped to (1 + d) > 0 so
# that it stays apart from the empty background (0).
PROJECTIONS = ("sum", "zbuffer")


def _view_coords(points: torch.Tensor, views: Sequence[tuple[int, int, int]]) -> torch.Tensor:
    """[B,N,3] -> [B,V,N,3] with the last axis ordered (a, b, d) per view."""
    perm = torch.tensor(views, device=points.device)  # [V,3]
    return points[:, None, :, :].expand(-1, len(views), -1, -1).gather(
        3, perm[None, :, None, :].expand(points.shape[0], -1, points.shape[1], -1)
    )


def projection_params(points: torch.Tensor, size: int = IMAGE_SIZE,
                      views: Sequence[tuple[int, int, int]] = VIEW_AXES) -> torch.Tensor:
    """Per-sample, per-view raster parameters [B,V,5] (float32), see ``PROJ_FIELDS``."""
    vc = _view_coords(points.float(), views)[..., :2]  # [B,V,N,2]
    lo = vc.amin(dim=2)  # [B,V,2]
    extent = (vc.amax(dim=2) - lo).amax(dim=-1)  # [B,V]
    cell = extent.clamp_min(1e-6) / (size - 3)
    # The largest pixel index per axis, computed exactly as pixel_indices does.
    top = torch.floor((vc - lo[:, :, None, :]) / cell[:, :, None, None]).amax(dim=2) + 1  # [B,V,2]
    shift = torch.floor((size - 2 - top) / 2)  # centres the box [1, top] in [0, S-1]
    return torch.cat([lo, cell[..., None], shift], dim=-1)


def pixel_indices(points: torch.Tensor, proj: torch.Tensor, size: int = IMAGE_SIZE,
                  views: Sequence[tuple[int, int, int]] = VIEW_AXES) -> torch.Tensor:
    """The (row, col) pixel of every point in every view, [B,V,N,2] int64, clamped to the image."""
    vc = _view_coords(points.float(), views)[..., :2]
    proj = proj.float()
    lo, cell, shift = proj[..., 0:2], proj[..., 2:3], proj[..., 3:5]
    pix = torch.floor((vc - lo[:, :, None, :]) / cell[:, :, None, :]) + 1 + shift[:, :, None, :]
    return pix.clamp_(0, size - 1).long()


def project(points: torch.Tensor, size: int = IMAGE_SIZE, stamp: int = STAMP,
            views: Sequence[tuple[int, int, int]] = VIEW_AXES, mode: str = "sum") -> tuple[torch.Tensor, torch.Tensor]:
    """Render depth images (``mode``: see ``PROJECTIONS``).

    Returns ``(depth [B,V,S,S] float32, proj [B,V,5] float32)``; ``depth`` is the raw sum of
    stamped depth values, or the nearest depth as ``1 + d`` for ``zbuffer`` (apply
    :func:`to_teacher_input` for the teacher's input). ``proj`` is the same for both modes.
    """
    if mode not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {mode!r}")
    points = points.float()
    bsz, n = points.shape[:2]
    nv = len(views)
    proj = projection_params(points, size, views)
    # The unclamped centre pixel (pixel_indices' arithmetic without its clamp), so that stamps
    # near the border clamp per offset.
    vc = _view_coords(points, views)
    raw = torch.floor((vc[..., :2] - proj[:, :, None, 0:2]) / proj[:, :, None, 2:3]) + 1 + proj[:, :, None, 3:5]
    half = stamp // 2
    off = torch.arange(-half, half + 1, device=points.device, dtype=raw.dtype)
    rows = (raw[..., 0, None, None] + off[:, None]).clamp(0, size - 1).long()  # [B,V,N,s,1]
    cols = (raw[..., 1, None, None] + off[None, :]).clamp(0, size - 1).long()  # [B,V,N,1,s]
    base = (torch.arange(bsz * nv, device=points.device).view(bsz, nv, 1, 1, 1)) * (size * size)
    flat = (base + rows * size + cols).reshape(-1)
    vals = vc[..., 2, None, None].expand(-1, -1, -1, stamp, stamp).reshape(-1)
    depth = torch.zeros(bsz * nv * size * size, device=points.device, dtype=torch.float32)
    if mode == "zbuffer":
        depth.scatter_reduce_(0, flat, vals + 1.0, reduce="amax", include_self=True)  # |d| <= 1
    else:
        depth.index_add_(0, flat, vals)
    return depth.view(bsz, nv, size, size), proj


def to_teacher_input(depth: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[B,V,S,S] depth sums -> [B*V,3,S,S]: sigmoid, 3 channels, normalised by mean/std."""
    img = torch.sigmoid(depth).flatten(0, 1)[:, None].expand(-1, 3, -1, -1)
    m = torch.as_tensor(mean, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    return (img - m) / s


def _cubic_weights(t: torch.Tensor, a: float = -0.75) -> torch.Tensor:
    """Keys' cubic convolution weights for taps at offsets -1, 0, 1, 2 (PyTorch's A=-0.75)."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=-1)


def _bicubic_taps(pix: torch.Tensor, in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices [...,4] and weights [...,4] that F.interpolate(mode='bicubic',
    align_corners=False) uses for output pixel ``pix`` when resizing in_size -> out_size."""
    src = (pix.to(torch.float64) + 0.5) * (in_size / out_size) - 0.5
    base = torch.floor(src)
    w = _cubic_weights(src - base)
    idx = (base.long()[..., None] + torch.arange(-1, 3, device=pix.device)).clamp(0, in_size - 1)
    return idx, w


def back_project(maps: torch.Tensor, points: torch.Tensor, proj: torch.Tensor, size: int = IMAGE_SIZE,
                 views: Sequence[tuple[int, int, int]] = VIEW_AXES) -> torch.Tensor:
    """Value of each view's map at each point's pixel after bicubic upsampling to S x S.

    ``maps`` is [B,V,h,w] or [B,V,h,w,C]; returns [B,V,N] or [B,V,N,C] (float32).
    Identical to upsampling every map with ``F.interpolate(..., (S,S), mode='bicubic',
    align_corners=False)`` and reading the point's pixel, but never materialises the S x S
    maps: each point's 16 bicubic taps become a sparse row of a [N, h*w] weight matrix that is
    multiplied with the [h*w, C] map (one batched matmul; fast on GPU, small in memory).
    """
    squeeze = maps.dim() == 4
    if squeeze:
        maps = maps[..., None]
    bsz, nv, h, w, c = maps.shape
    pix = pixel_indices(points, proj, size, views)  # [B,V,N,2]
    ri, rw = _bicubic_taps(pix[..., 0], h, size)  # [B,V,N,4]
    ci, cw = _bicubic_taps(pix[..., 1], w, size)
    flat = (ri[..., :, None] * w + ci[..., None, :]).flatten(-2)  # [B,V,N,16]
    wt = (rw[..., :, None] * cw[..., None, :]).flatten(-2).to(torch.float32)
    n = points.shape[1]
    dense = torch.zeros(bsz, nv, n, h * w, device=maps.device, dtype=torch.float32)
    dense.scatter_add_(-1, flat, wt)  # clamped taps that coincide add up, as in F.interpolate
    out = torch.matmul(dense, maps.reshape(bsz, nv, h * w, c).float())
    return out[..., 0] if squeeze else out


def upsample_maps(maps: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Reference path: [B,V,h,w] -> [B,V,S,S] bicubic (used by tests and visualisation)."""
    b, v, h, w = maps.shape
    return F.interpolate(maps.reshape(b * v, 1, h, w).float(), size=(size, size), mode="bicubic",
                         align_corners=False).view(b, v, size, size)


OFFICIAL_TEACHER_MEAN = (0.485, 0.456, 0.406)  # ImageNet's: what the official I2P-MAE feeds CLIP
OFFICIAL_TEACHER_STD = (0.229, 0.224, 0.225)


def set_teacher_input(teacher, mode: str = "teacher") -> None:
    """The normalisation of ``teacher``'s input images (``--teacher-input``): 'teacher' keeps the
    teacher's own mean/std; 'official' sets ImageNet's, as the official code does for CLIP
    (I2P_MAE.py:265-266, :329-333)."""
    from i2p.common.errors import UserError

    if mode == "official":
        teacher.mean, teacher.std = OFFICIAL_TEACHER_MEAN, OFFICIAL_TEACHER_STD
    elif mode != "teacher":
        raise UserError(f"--teacher-input must be teacher or official (got {mode!r})")
