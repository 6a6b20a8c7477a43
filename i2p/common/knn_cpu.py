"""k-nearest neighbours on the CPU through a k-d tree library, with exactly the indices of the
pure-PyTorch path of ``point_ops.knn``.

Why: the brute force computes every query-to-point distance (512 x 2048 per cloud at paper
sizes) and a top-k over each row; a k-d tree visits a few dozen points per query. Measured on a
shared 2-core CPU (64 clouds, 512 queries x 2048 points, k = 16): brute force 226-724 ms,
``cKDTree`` 88-158 ms (README, Performance).

The tree: ``pykdtree`` when installed (the ``cpu`` extra; its queries measured ~1.3-1.6x
faster than ``cKDTree``'s on the same points, one thread each, benchmarks/RESULTS.md), else
``scipy.spatial.cKDTree``. Both are given float64 coordinates, so the argument below holds
for either.

Identical indices: the tree ranks by float64 distances, the brute force by float32 ones
(``torch.cdist``, whose rounding even depends on the CPU: FMA or not), and it breaks exact
ties its own way. The two orders can differ only where two float64 distances lie within float32
rounding of each other: the float32 distance of float32 points is within ~1e-6 (relative) of the
exact one, so neighbours whose float64 distances differ by more than ``TIE_TOL`` (relative) are
ranked alike by both. The tree asks for ``k + 1`` neighbours; every query whose ``k + 1``
distances hold such a near-tie (a few hundred of 32768 at paper sizes, and every duplicated
point) is answered by the brute force itself, so the result equals it bit for bit.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

# Adjacent float64 distances closer than this (relative) count as a near-tie: 10x the
# float32 error bound, so the two paths cannot order them differently outside it.
TIE_TOL = 1e-5
# Below this many reference points per cloud the brute force is as fast (and has no per-cloud
# Python loop). Measured, batch 4, tree / brute-force time: 128 queries in 256 points (k=8)
# 0.82, 64 in 256 1.04, 256 in 512 0.33, 256 in 1024 (k=16) 0.47, 512 in 2048 0.27.
MIN_POINTS = 256
LEAFSIZE = 32


def _pykdtree():
    try:
        from pykdtree.kdtree import KDTree
    except ImportError:
        return None
    return KDTree


def available() -> bool:
    if _pykdtree() is not None:
        return True
    try:
        from scipy.spatial import cKDTree  # noqa: F401
    except ImportError:
        return False
    return True


def tree_library() -> str:
    """The k-d tree :func:`knn_kdtree` uses: 'pykdtree', 'scipy' or 'none'."""
    return "pykdtree" if _pykdtree() is not None else ("scipy" if available() else "none")


def _query_fn(workers: int):
    """``query(points [N,3] f64, queries [M,3] f64, c) -> (dist [M,c] f64, idx [M,c])``, one tree
    per call. pykdtree parallelises a query with OpenMP (``OMP_NUM_THREADS``)."""
    kd = _pykdtree()
    if kd is not None:
        return lambda pts, qs, c: kd(pts, leafsize=16).query(qs, k=c)
    from scipy.spatial import cKDTree

    # Unbalanced, non-compacted trees build ~1.5x faster for a few thousand points; the
    # neighbours do not depend on the tree's shape.
    return lambda pts, qs, c: cKDTree(pts, leafsize=LEAFSIZE, balanced_tree=False,
                                      compact_nodes=False).query(qs, k=c, workers=workers)


def knn_kdtree(query: torch.Tensor, ref: torch.Tensor, k: int,
               brute: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """``point_ops.knn`` (``[B, M, k]`` int64, nearest first) through one k-d tree per cloud;
    ``brute(query [1,R,3], ref [1,N,3], k)`` is the brute-force path, used for the near-ties."""
    q = query.detach().float().cpu()
    r = ref.detach().float().cpu()
    qn, rn = q.numpy().astype(np.float64), r.numpy().astype(np.float64)
    bsz, m, _ = qn.shape
    c = min(rn.shape[1], k + 1)
    dist = np.empty((bsz, m, c))
    cand = np.empty((bsz, m, c), dtype=np.int64)
    query_tree = _query_fn(max(1, torch.get_num_threads()))
    for b in range(bsz):
        d, i = query_tree(rn[b], qn[b], c)
        dist[b], cand[b] = d.reshape(m, c), i.reshape(m, c)
    idx = torch.from_numpy(cand[..., :k])
    near = (np.diff(dist, axis=-1) <= TIE_TOL * dist[..., 1:]).any(axis=-1)  # [B, M]
    for b in np.flatnonzero(near.any(axis=-1)):
        rows = torch.from_numpy(np.flatnonzero(near[b]))
        idx[b, rows] = brute(q[b:b + 1, rows], r[b:b + 1], k)[0]
    return idx.to(query.device)


def usable(query: torch.Tensor, ref: torch.Tensor) -> bool:
    """Whether the tree path applies: CPU tensors, enough points to pay off, finite
    coordinates (a k-d tree cannot order NaN), scipy installed."""
    return (query.device.type == "cpu" and ref.device.type == "cpu" and ref.shape[1] >= MIN_POINTS
            and query.shape[-1] == 3 and available()
            and bool(torch.isfinite(ref).all()) and bool(torch.isfinite(query).all()))


__all__ = ["available", "knn_kdtree", "tree_library", "usable", "TIE_TOL", "MIN_POINTS"]
