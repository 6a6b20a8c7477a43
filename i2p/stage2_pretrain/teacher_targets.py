"""What stage 2 derives from the cached teacher maps before the network sees them.

* :func:`target_stats`: per-channel statistics of the maps (target standardisation) and of
  the per-shape global target, from the first samples of each cache;
* :func:`principal_basis`: the top principal directions of the (standardised) 2D targets,
  which ``model.target_dims`` projects them onto;
* :func:`select_norm`: the part of those statistics a run uses (only what its objective
  needs, so nothing is computed per step for a term that is off);
* :func:`apply_norm`: standardised maps and the global target of one batch;
* :func:`teacher_bank` / :func:`bank_keys`: the global teacher feature of every training
  shape (the 'nce' global term's candidates) and each batch sample's row in it.

Everything is deterministic (first samples, fixed order), so every rank and every resume
gets the same numbers.
"""

from __future__ import annotations

import bisect

import torch

from i2p.stage1_project.projection import back_project


def global_target(features: torch.Tensor) -> torch.Tensor:
    """``[B, V, h, w, C]`` teacher maps -> ``[B, V*C]``: each view's mean-pooled feature, views
    side by side. Chosen by 5-fold CV on SHREC'16 train (linear SVM on the teacher's own
    pooled features): per-view mean 75%, per-view max 73%, max over everything 57%."""
    return features.float().mean(dim=(2, 3)).flatten(1)


def _first_blocks(part, samples: int, names: tuple[str, ...] = ("features",)):
    """Arrays ``names`` of ``part``'s first ``samples`` samples, 32 samples at a time: a tuple
    of tensors (one per name, as stored)."""
    root = part._arrays()
    idx = part.indices[:max(1, samples)]
    for start in range(0, len(idx), 32):
        sel = idx[start:start + 32]
        out = []
        for name in names:
            try:
                out.append(torch.from_numpy(root[name].get_orthogonal_selection(sel)))
            except Exception:  # noqa: BLE001 - damaged bytes: read one by one, the culprit raises a CacheError
                out.append(torch.stack([part._read(name, int(i)) for i in sel]))
        yield tuple(out)


def target_stats(ds, samples: int, weights: list[float] | None = None) -> dict[str, torch.Tensor]:
    """Per-channel mean and std of the cached teacher features over the first valid samples of
    each cache of ``ds`` (a ``MultiCacheDataset``; ``samples`` in all, split evenly; all views
    and pixels), and of the per-sample global target. Back-projection is linear with weights
    summing to 1, so standardising the maps equals standardising the targets.

    With ``weights`` (``data.cache_weights``) the caches' moments are combined as the mixture a
    training epoch draws: cache i counts in proportion to ``weights[i] * len(cache i)``."""
    total = sq = None  # over every sample read (the unweighted statistics)
    count = 0
    moments = []  # per cache: (sum, sum of squares, count, pooled targets)
    for part in ds.parts:
        p_total = p_sq = None
        pooled, p_count = [], 0
        for (block,) in _first_blocks(part, samples // len(ds.parts)):
            block = block.double()
            pooled.append(global_target(block))
            block = block.reshape(-1, block.shape[-1])
            b_sum, b_sq = block.sum(0), (block ** 2).sum(0)
            total = b_sum if total is None else total + b_sum
            sq = b_sq if sq is None else sq + b_sq
            p_total = b_sum if p_total is None else p_total + b_sum
            p_sq = b_sq if p_sq is None else p_sq + b_sq
            count += block.shape[0]
            p_count += block.shape[0]
        moments.append((p_total, p_sq, p_count, torch.cat(pooled)))
    if weights is None:
        mean = total / count
        std = (sq / count - mean ** 2).clamp_min(0).sqrt().clamp_min(1e-6)
        pooled = torch.cat([m[3] for m in moments])
        g_mean, g_std = pooled.mean(0), pooled.std(0, unbiased=False).clamp_min(1e-6)
    else:
        share = torch.tensor([w * len(p) for w, p in zip(weights, ds.parts)], dtype=torch.float64)
        share = share / share.sum()
        mean = sum(a * m[0] / m[2] for a, m in zip(share, moments))
        second = sum(a * m[1] / m[2] for a, m in zip(share, moments))
        g_mean = sum(a * m[3].mean(0) for a, m in zip(share, moments))
        g_second = sum(a * (m[3] ** 2).mean(0) for a, m in zip(share, moments))
        std = (second - mean ** 2).clamp_min(0).sqrt().clamp_min(1e-6)
        g_std = (g_second - g_mean ** 2).clamp_min(0).sqrt().clamp_min(1e-6)
    return {"mean": mean.float(), "std": std.float(), "global_mean": g_mean.float(), "global_std": g_std.float()}


def principal_basis(ds, samples: int, dims: int, mean: torch.Tensor, std: torch.Tensor | None, size: int,
                    weights: list[float] | None = None, points: int = 256) -> tuple[torch.Tensor, float]:
    """``(basis [C, dims], share of the variance it holds)``: the top ``dims`` eigenvectors of
    the covariance of the 2D targets themselves -- the maps ``(x - mean) / std`` (``std``
    None: not standardised) back-projected, in every view, at ``points`` of each cloud's
    points (evenly strided) -- over the first samples of each cache of ``ds`` (``samples`` in
    all, split evenly), the caches mixed as :func:`target_stats` mixes them. Targets, not
    pixels: most pixels are background, which no point reads, and its contrast with the
    object would take the top directions. Each column's largest entry is made positive, so
    the basis is a function of the data alone (eigenvectors have no sign of their own)."""
    mean = mean.float()
    scale = torch.ones_like(mean) if std is None else std.float()
    firsts, seconds, rows = [], [], []  # per cache: mean of x, of x x^T, and the rows they are over
    for part in ds.parts:
        acc1 = acc2 = None
        n = 0
        for feats, pts, proj in _first_blocks(part, samples // len(ds.parts), ("features", "points", "proj")):
            stride = max(1, pts.shape[1] // points)
            at = pts[:, ::stride][:, :points].float()
            maps = (feats.float() - mean) / scale
            x = back_project(maps, at, proj.float(), size=size).reshape(-1, maps.shape[-1])  # [B*V*n, C]
            s1, s2 = x.double().sum(0), (x.T @ x).double()
            acc1, acc2 = (s1, s2) if acc1 is None else (acc1 + s1, acc2 + s2)
            n += x.shape[0]
        firsts.append(acc1 / n)
        seconds.append(acc2 / n)
        rows.append(n)
    if weights is None:  # every row read counts once (the pooled covariance)
        share = torch.tensor(rows, dtype=torch.float64)
    else:
        share = torch.tensor([w * len(p) for w, p in zip(weights, ds.parts)], dtype=torch.float64)
    share = share / share.sum()
    mu = sum(a * m for a, m in zip(share, firsts))
    cov = sum(a * m for a, m in zip(share, seconds)) - torch.outer(mu, mu)
    if not 0 < dims <= cov.shape[0]:
        raise ValueError(f"target_dims={dims} must be in [1, {cov.shape[0]}] (the teacher's channels)")
    values, vectors = torch.linalg.eigh(cov)
    values, vectors = values.flip(0), vectors.flip(1)[:, :dims]
    pivot = vectors.abs().argmax(dim=0)
    vectors = vectors * torch.sign(vectors[pivot, torch.arange(dims)])
    kept = float(values[:dims].clamp_min(0).sum() / values.clamp_min(0).sum().clamp_min(1e-12))
    return vectors.float(), kept


def select_norm(stats: dict[str, torch.Tensor], maps: bool, global_term: bool) -> dict | None:
    """The statistics a run uses: ``mean``/``std`` when its maps are standardised,
    ``global_mean``/``global_std`` when it has a global term; None when neither."""
    keys = (("mean", "std") if maps else ()) + (("global_mean", "global_std") if global_term else ())
    return {k: stats[k] for k in keys} or None


def apply_norm(feats: torch.Tensor, norm: dict | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(maps, global target or None)`` of one batch under :func:`select_norm`'s ``norm``."""
    if not norm:
        return feats, None
    glob = None
    if "global_mean" in norm:
        glob = (global_target(feats) - norm["global_mean"]) / norm["global_std"]
    if "mean" in norm:
        # In place on a float32 copy: the same values bit for bit as ``(feats.float() - mean) /
        # std``, without two more map-sized temporaries per step (4.7 -> 0.7 ms for a batch of
        # four 3 x 14 x 14 x 472 maps: fresh allocations of that size fault their pages in).
        feats = feats.to(torch.float32, copy=True).sub_(norm["mean"]).div_(norm["std"])
    return feats, glob


def teacher_bank(ds, positions: list[int], norm: dict, device: torch.device) -> dict:
    """The standardised global teacher feature of every training shape (the negatives and
    positives of the 'nce' global term): ``{"emb": [M, V*C], "row": {sample index: row}}``.
    Read once, 32 samples per read."""
    by_part: dict[int, list[int]] = {}
    for pos in positions:
        part_i = bisect.bisect_right(ds.cumulative_sizes, pos)
        start = ds.cumulative_sizes[part_i - 1] if part_i else 0
        by_part.setdefault(part_i, []).append(pos - start)
    embs, row = [], {}
    for part_i, ks in by_part.items():
        part = ds.parts[part_i]
        idx = [int(part.indices[k]) for k in ks]
        for start in range(0, len(idx), 32):
            chunk = idx[start:start + 32]
            block = torch.from_numpy(part._arrays()["features"].get_orthogonal_selection(chunk))
            embs.append((global_target(block).to(device) - norm["global_mean"]) / norm["global_std"])
            for i in chunk:
                row[i + part.index_offset] = len(row)
    return {"emb": torch.cat(embs), "row": row}


def bank_keys(bank: dict, indices: list[int], glob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keys [M', V*C], rows [B])``: the bank, plus the own global target of any batch sample
    the bank does not hold (a held-out shape), and each sample's row among the keys."""
    extra = [j for j, i in enumerate(indices) if i not in bank["row"]]
    keys = torch.cat([bank["emb"], glob[extra]]) if extra else bank["emb"]
    own = {j: len(bank["emb"]) + n for n, j in enumerate(extra)}
    rows = [bank["row"][i] if i in bank["row"] else own[j] for j, i in enumerate(indices)]
    return keys, torch.tensor(rows, device=glob.device)
