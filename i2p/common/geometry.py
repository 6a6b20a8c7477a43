"""Small numpy geometry helpers shared by every reader.

Every reader returns clouds in one frame (centred, unit sphere) and with exactly P points, so
that stage 1 projections and stage 2 targets never depend on which file format a shape came in.
"""

from __future__ import annotations

import hashlib

import numpy as np

from i2p.common.errors import SampleError


def stable_seed(*parts: object) -> int:
    """A 32-bit seed derived from ``parts`` that is identical across processes and runs
    (Python's ``hash`` is salted per process, so it cannot be used)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def check_cloud(points: np.ndarray) -> np.ndarray:
    """Validate a raw cloud: finite, at least 3 distinct points. Raises :class:`SampleError`."""
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < 3 or pts.shape[0] == 0:
        raise SampleError(f"empty or malformed cloud (shape {tuple(pts.shape)})")
    pts = pts[:, :3].astype(np.float64)
    if not np.isfinite(pts).all():
        raise SampleError("NaN/Inf coordinates")
    differs0 = (pts != pts[0]).any(axis=1)  # O(N) test for >= 3 distinct points
    if not differs0.any() or not (differs0 & (pts != pts[np.argmax(differs0)]).any(axis=1)).any():
        raise SampleError("fewer than 3 distinct points")
    return pts


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centre on the centroid and scale so the farthest point lies on the unit sphere."""
    pts = check_cloud(points)
    pts = pts - pts.mean(axis=0, keepdims=True)
    radius = np.sqrt((pts**2).sum(axis=1)).max()
    if not radius > 0:
        raise SampleError("degenerate cloud (zero extent)")
    return (pts / radius).astype(np.float32)


def resample(points: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Exactly ``count`` points: a seeded subset without replacement when there are enough,
    otherwise all points plus seeded repeats (so small files still give [count, 3])."""
    return points[resample_indices(len(points), count, seed)]


def resample_indices(n: int, count: int, seed: int) -> np.ndarray:
    """The indices :func:`resample` takes, so per-point attributes (part labels) can follow
    the points they belong to."""
    rng = np.random.default_rng(seed)
    if n >= count:
        return np.sort(rng.choice(n, size=count, replace=False))
    return np.concatenate([np.arange(n), rng.choice(n, size=count - n, replace=True)])
