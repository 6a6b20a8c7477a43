"""Batched point-cloud primitives in pure PyTorch (no custom CUDA extensions).

Point-M2AE / I2P-MAE rely on compiled kernels (pointnet2 FPS, knn_cuda, chamfer_dist). These
are the same operations written with plain tensor ops so that i2p installs anywhere, runs on
CPU for tests and on any accelerator in production, and is deterministic given its inputs.
Every function is vectorised over the batch; only farthest point sampling loops (over the
``k`` picks, which is inherent to the greedy algorithm).
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["farthest_point_sample", "knn", "gather", "square_distance", "chamfer_l2",
           "three_nn_interpolate"]


def farthest_point_sample(xyz: torch.Tensor, k: int,
                          start: int | torch.Generator | Sequence[torch.Generator] | torch.Tensor | None = 0,
                          skip_near_origin: float = 0.0) -> torch.Tensor:
    """Greedy farthest point sampling: indices ``[B, k]`` (int64) into ``xyz [B, N, 3]``.

    ``start`` picks the first index: an int (the same for every sample; 0 matches the
    pointnet2 kernel that Point-M2AE uses), a ``torch.Generator`` for a random, reproducible
    start per sample, or one generator per sample (each draws its own sample's start). Each next pick maximises the squared distance to the picks so far; ties
    go to the lowest index (``argmax`` returns the first maximum), so results are reproducible.

    ``skip_near_origin > 0`` reproduces the pointnet2 CUDA kernel of the official code: points
    whose squared norm ``x*x + y*y + z*z`` (float32) is ``<= skip_near_origin`` (the kernel's
    1e-3) are never picked, except as the start; if nothing else is left, index 0 is repeated.
    """
    bsz, n, _ = xyz.shape
    if not 0 < k <= n:
        raise ValueError(f"farthest_point_sample: need 0 < k <= N, got k={k}, N={n}")
    # On the CPU the loop is memory-bound: clouds in blocks whose buffers (~32 bytes a point)
    # stay in a ~1 MiB cache run ~15% faster than the whole batch at once (paper sizes); picks
    # are per cloud, so the result is the same. Starts are drawn first, for the whole batch.
    block = max(1, (1 << 20) // (32 * n))
    if xyz.device.type == "cpu" and bsz > block:
        starts = _fps_starts(xyz, start)
        return torch.cat([farthest_point_sample(xyz[lo:lo + block], k, starts[lo:lo + block], skip_near_origin)
                          for lo in range(0, bsz, block)])
    # Selection only: no gradient, fp32 even under bf16. Coordinate-major [B,3,N] so each step
    # is a few contiguous elementwise ops (a reduction over a size-3 last axis is far slower).
    pts = xyz.detach().float().transpose(1, 2).contiguous()
    cur = _fps_starts(xyz, start)
    # The loop is latency-bound (k steps of small ops; a kernel launch each on GPU), so every
    # step is 7 ops into preallocated buffers: gather the current point, square the differences
    # in place, add the three coordinates in the order (x + y) + z, fold into the running
    # minimum, argmax. Bit-identical to computing dx*dx + dy*dy + dz*dz directly.
    out = torch.empty(k, bsz, dtype=torch.long, device=xyz.device)
    out[0] = cur
    best = torch.full((bsz, n), float("inf"), device=xyz.device)
    if skip_near_origin > 0:
        # -inf stays -inf under the running minimum, so skipped points never win the argmax
        # (and when every remaining point is skipped, argmax returns index 0, as the kernel).
        sq = (pts[:, 0] * pts[:, 0] + pts[:, 1] * pts[:, 1]) + pts[:, 2] * pts[:, 2]
        best.masked_fill_(sq <= skip_near_origin, float("-inf"))
    diff = torch.empty_like(pts)
    d = torch.empty(bsz, n, device=xyz.device)
    ctr = torch.empty(bsz, 3, 1, device=xyz.device)
    first_max = _first_max_cpu(best) if xyz.device.type == "cpu" else None
    for i in range(1, k):
        torch.gather(pts, 2, out[i - 1].view(bsz, 1, 1).expand(bsz, 3, 1), out=ctr)
        torch.sub(pts, ctr, out=diff)
        diff.mul_(diff)
        torch.add(diff[:, 0], diff[:, 1], out=d)
        d.add_(diff[:, 2])
        torch.minimum(best, d, out=best)
        if first_max is None:
            torch.argmax(best, dim=1, out=out[i])
        else:
            first_max(out[i])
    return out.t().contiguous()


# Measured on the CPU, one thread (argmax vs two stages, us): 16 x 2048 75 / 33, 8 x 2048 37 / 28,
# 64 x 512 73 / 52, 4 x 2048 21 / 24, 256 x 128 90 / 127: two stages win from 16k values in
# rows of >= 512.
ARGMAX_BLOCK = 64
ARGMAX_MIN_ROW = 512
ARGMAX_MIN_VALUES = 1 << 14


def _first_max_cpu(best: torch.Tensor):
    """``argmax(best, dim=1)`` in two stages, or None where that does not pay (fewer than
    ``ARGMAX_MIN_VALUES`` values or rows shorter than ``ARGMAX_MIN_ROW``: the five calls cost
    more than they save) or does not apply (rows not a multiple of ``ARGMAX_BLOCK``).

    Why: on the CPU ``argmax`` over a row costs ~10x ``amax`` and was over half of FPS's time.
    Stage 1 takes the max of each block of the row and the first block holding the row's max;
    stage 2 the first maximum inside that block: the row's first maximum, as ``argmax``
    returns it (ties to the lowest index; a NaN counts as the maximum in ``amax`` and
    ``argmax`` alike)."""
    bsz, n = best.shape
    bs = ARGMAX_BLOCK
    if n % bs or n < ARGMAX_MIN_ROW or bsz * n < ARGMAX_MIN_VALUES:
        return None
    blocks = best.view(bsz, n // bs, bs)
    peaks = torch.empty(bsz, n // bs, dtype=best.dtype, device=best.device)
    j = torch.empty(bsz, dtype=torch.long, device=best.device)
    inner = torch.empty(bsz, dtype=torch.long, device=best.device)
    one = torch.empty(bsz, 1, bs, dtype=best.dtype, device=best.device)

    def first_max(out: torch.Tensor) -> None:
        torch.amax(blocks, dim=2, out=peaks)
        torch.argmax(peaks, dim=1, out=j)
        torch.gather(blocks, 1, j.view(bsz, 1, 1).expand(bsz, 1, bs), out=one)
        torch.argmax(one.view(bsz, bs), dim=1, out=inner)
        torch.add(inner, j, alpha=bs, out=out)

    return first_max


def _fps_starts(xyz: torch.Tensor, start) -> torch.Tensor:
    """The first pick of every cloud, ``[B]`` int64 (see ``farthest_point_sample``'s ``start``;
    a tensor is taken as the starts themselves)."""
    bsz, n, _ = xyz.shape
    if isinstance(start, torch.Tensor):
        return start.to(xyz.device)
    if isinstance(start, torch.Generator):
        return torch.randint(n, (bsz,), generator=start, device=start.device).to(xyz.device)
    if isinstance(start, Sequence):
        if len(start) != bsz:
            raise ValueError(f"{len(start)} per-sample generators for a batch of {bsz}")
        # Drawn per sample on each generator's device, moved to the data's device once.
        return torch.stack([torch.randint(n, (), generator=g, device=g.device) for g in start]).to(xyz.device)
    return torch.full((bsz,), int(0 if start is None else start), dtype=torch.long, device=xyz.device)


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a.float(), b.float(), compute_mode="donot_use_mm_for_euclid_dist")


def square_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ``[B, M, K]`` between ``a [B,M,3]`` and ``b [B,K,3]``.

    Uses ``torch.cdist`` in its direct (non-matmul) mode: no [B,M,K,3] intermediate, and a
    point's distance to itself is exactly 0 (the matmul expansion |a|^2+|b|^2-2ab is not),
    which keeps kNN orderings and 3-NN weights exact and batch-size independent.
    """
    return _cdist(a, b).pow(2)


def knn(query: torch.Tensor, ref: torch.Tensor, k: int, backend: str = "auto") -> torch.Tensor:
    """Indices ``[B, M, k]`` of the ``k`` points of ``ref [B,N,3]`` nearest to each ``query``
    point ``[B,M,3]``, sorted nearest first. A query that is itself in ``ref`` gets itself
    first (distance 0), which is how the tokenizer's groups contain their own centre.

    ``backend``: 'torch' is the brute force below (every device); 'auto' (the default) uses a
    ``scipy`` k-d tree for CPU tensors of at least ``knn_cpu.MIN_POINTS`` points, which returns
    the same indices bit for bit (see ``knn_cpu``), and the brute force otherwise."""
    if k > ref.shape[1]:
        raise ValueError(f"knn: k={k} exceeds the {ref.shape[1]} reference points")
    if backend not in ("auto", "torch"):
        raise ValueError(f"knn: backend must be 'auto' or 'torch', got {backend!r}")
    if backend == "auto":
        from i2p.common import knn_cpu

        if knn_cpu.usable(query, ref):
            return knn_cpu.knn_kdtree(query, ref, k, _knn_brute)
    return _knn_brute(query, ref, k)


def _knn_brute(query: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    d = _cdist(query.detach(), ref.detach())
    return d.topk(k, dim=-1, largest=False, sorted=True).indices


def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per-sample indexing: ``x [B, N, *F]`` and ``idx [B, *I]`` -> ``[B, *I, *F]``.

    ``out[b, i...] = x[b, idx[b, i...]]``; differentiable with respect to ``x``.
    """
    bsz = x.shape[0]
    rows = torch.arange(bsz, device=x.device).view(bsz, *([1] * (idx.dim() - 1)))
    return x[rows, idx]


def chamfer_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Chamfer-L2 distance per sample, ``[B]``, between ``a [B,M,3]`` and ``b [B,K,3]``.

    Convention (that of Point-MAE / Point-M2AE's ``ChamferDistanceL2``, squared distances, no
    square root, no 1/2 factor)::

        cd(a, b) = mean_i min_j |a_i - b_j|^2  +  mean_j min_i |a_i - b_j|^2

    The reference implementation averages over all points of the batch, which equals the
    ``.mean()`` of this vector when every sample has the same M and K.
    """
    if a.shape[1] * b.shape[1] <= 4096:
        # Exact difference form for the small groups the MAE compares (8 x 8 points).
        d = (a[:, :, None, :] - b[:, None, :, :]).pow(2).sum(-1)
        return d.min(dim=2).values.mean(dim=1) + d.min(dim=1).values.mean(dim=1)
    # Large clouds: Euclidean distances in row blocks of ``a`` (bounded memory: 2048 x 2048 at
    # batch 64 would be 1 GiB per [B,M,K] tensor), nearest distances reduced per block, squared
    # last. Squaring is monotone, so min(d)^2 == min(d^2) exactly: same values as squaring the
    # whole matrix first, without writing it.
    bsz, m, k = a.shape[0], a.shape[1], b.shape[1]
    rows = max(1, min(m, (1 << 24) // max(1, bsz * k)))
    a_min, b_min = [], None
    for lo in range(0, m, rows):
        d = _cdist(a[:, lo:lo + rows], b)  # [B, rows, K]
        a_min.append(d.amin(dim=2))
        blk = d.amin(dim=1)
        b_min = blk if b_min is None else torch.minimum(b_min, blk)
    return torch.cat(a_min, dim=1).pow(2).mean(dim=1) + b_min.pow(2).mean(dim=1)


def three_nn_interpolate(query: torch.Tensor, ref: torch.Tensor, feats: torch.Tensor,
                         eps: float = 1e-8) -> torch.Tensor:
    """PointNet++ feature propagation: ``feats [B,N,C]`` living on ``ref [B,N,3]`` carried to
    ``query [B,M,3]`` -> ``[B,M,C]``.

    Each query takes the weighted mean of its 3 nearest reference features with weights
    ``1 / (d + eps)`` normalised to sum to one, where ``d`` is the SQUARED Euclidean distance
    (the convention of Point-M2AE's ``PointNetFeaturePropagation``). With fewer than 3
    reference points all of them are used.
    """
    k = min(3, ref.shape[1])
    d = square_distance(query.detach(), ref.detach())  # weights are geometry: no gradient
    dist, idx = d.topk(k, dim=-1, largest=False, sorted=True)
    w = 1.0 / (dist + eps)
    w = (w / w.sum(dim=-1, keepdim=True)).to(feats.dtype)
    return (gather(feats, idx) * w[..., None]).sum(dim=2)
