"""The augmentation-aware cache: the transforms of the K augmented renders of each shape.

A cache built with ``--aug-renders K`` holds, besides the render of the stored cloud, K renders
of transformed copies of it (``aug_features``, ``aug_saliency``, ``aug_proj``) and the
parameters of each transform (``aug_params [N,K,7]``: per-axis scale, shift, angle about the up
axis in radians). The transform is ``rotate_up(p * scale, angle) + shift``.

Both stage 1 (rendering the transformed cloud) and the training reader (the points a sample
shows the network) call :func:`apply_transform` on the stored float32 points with the stored
float32 parameters, so the cloud the network sees is bit for bit the cloud the teacher saw.
Because the network then receives the transformed cloud itself with that render's raster
parameters, the back-projection is exact for any transform, rotation included.
"""

from __future__ import annotations

import math

import numpy as np

from i2p.common.geometry import stable_seed

NUM_PARAMS = 7  # sx, sy, sz, tx, ty, tz, angle (radians, about UP_AXIS)
UP_AXIS = 1  # y: the up axis of ShapeNet / ModelNet clouds
AUG_ARRAYS = ("aug_features", "aug_saliency", "aug_proj", "aug_params")


def render_params(seed: int, index: int, k: int, scale_range: tuple[float, float] = (2 / 3, 3 / 2),
                  shift: float = 0.2, rotate_deg: float = 0.0) -> np.ndarray:
    """``[7]`` float32 parameters of augmented render ``k`` of sample ``index``: per-axis scale
    U[scale_range], shift U[-shift, shift], angle U[-rotate_deg, rotate_deg] (in radians),
    drawn from ``('aug-render', seed, index, k)``."""
    rng = np.random.default_rng(stable_seed("aug-render", seed, int(index), int(k)))
    scale = rng.uniform(*scale_range, size=3)
    move = rng.uniform(-shift, shift, size=3)
    angle = rng.uniform(-1.0, 1.0) * math.radians(rotate_deg)
    return np.concatenate([scale, move, [angle]]).astype(np.float32)


def apply_transform(points: np.ndarray, params: np.ndarray) -> np.ndarray:
    """``points [..., P, 3]`` transformed by ``params [..., 7]``: ``rotate_up(p * s, a) + t``,
    computed in float64 and returned as float32 (NaN rows stay NaN)."""
    p = np.asarray(points, dtype=np.float64)
    q = np.asarray(params, dtype=np.float32).astype(np.float64)
    p = p * q[..., None, 0:3]
    a = q[..., None, 6]
    c, s = np.cos(a), np.sin(a)
    i, j = (UP_AXIS + 1) % 3, (UP_AXIS + 2) % 3  # the plane the rotation turns (z, x for y up)
    pi, pj = p[..., i].copy(), p[..., j].copy()
    p[..., i] = c * pi - s * pj
    p[..., j] = s * pi + c * pj
    return (p + q[..., None, 3:6]).astype(np.float32)
