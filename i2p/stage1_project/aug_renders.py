"""Stage 1 of the augmentation-aware cache (``i2p cache build --aug-renders K``).

Besides the render of the stored cloud, each shape gets K renders of seeded transformed copies
of it (:func:`i2p.cache.augment.render_params`: per-axis scale, shift, angle about the up
axis), through the same projection, teacher and ``--denoise`` averaging as the plain render;
the maps, raster params and transform parameters go to the ``aug_*`` arrays
(:mod:`i2p.cache.store`), written with the shard before its completion marker. Training then
shows the network exactly a transformed cloud the teacher saw (``--set data.aug_renders=true``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from i2p.cache.augment import apply_transform, render_params
from i2p.common.errors import UserError


@dataclass
class AugRenders:
    """``BuildConfig.aug``: K renders per shape of the cloud transformed by a per-axis scale
    U[scale], a shift U[-shift, shift] and an angle about y U[-rotate, rotate] degrees."""
    renders: int = 0  # K; 0 = no augmented renders, the layout of caches before this lever
    scale: tuple[float, float] = (2 / 3, 3 / 2)
    shift: float = 0.2
    rotate: float = 0.0


# A cache without augmented renders records none of these settings (the attributes of a cache
# written before the lever); read as these values.
AUG_LEGACY = {"aug_renders": 0, "aug_scale": None, "aug_shift": None, "aug_rotate": None}


def aug_settings(aug: AugRenders) -> dict:
    """The cache settings of ``aug`` (empty without augmented renders); refuses bad values."""
    lo, hi = (float(x) for x in aug.scale)
    if aug.renders < 0 or not 0 < lo <= hi or aug.shift < 0 or aug.rotate < 0:
        raise UserError(f"--aug-renders {aug.renders} --aug-scale {lo} {hi} --aug-shift {aug.shift} "
                        f"--aug-rotate {aug.rotate}: need K >= 0, 0 < LO <= HI, shift >= 0 and rotate >= 0")
    if not aug.renders:
        return {}
    return {"aug_renders": int(aug.renders), "aug_scale": [lo, hi], "aug_shift": float(aug.shift),
            "aug_rotate": float(aug.rotate)}


def shard_params(aug: AugRenders, seed: int, pts: np.ndarray, lo: int) -> np.ndarray:
    """``[n, K, 7]`` transform parameters of the shard's samples ``lo..lo+n`` (NaN for a
    skipped sample, whose ``pts`` rows are NaN)."""
    params = np.stack([[render_params(seed, lo + r, k, tuple(aug.scale), aug.shift, aug.rotate)
                        for k in range(aug.renders)] for r in range(len(pts))])
    params[~np.isfinite(pts).all(axis=(1, 2))] = np.nan
    return params.astype(np.float32)


def write_aug_renders(cfg, root, layout, pts: np.ndarray, lo: int, compute, timings: tuple) -> tuple:
    """Render, run the teacher on and write the K augmented renders of one shard's clouds
    (``pts [n,P,3]``, NaN rows for skipped samples). ``compute(points)`` is the shard's
    projection + teacher (returns maps, saliency, proj, project s, teacher s). Returns
    ``timings`` (project, teacher, write seconds) plus this work's; unchanged when K = 0."""
    if not layout.aug_renders:
        return timings
    params = shard_params(cfg.aug, cfg.seed, pts, lo)
    out: list[list[np.ndarray]] = [[], [], []]
    t_proj = t_teach = 0.0
    for k in range(layout.aug_renders):
        *maps, tp, tt = compute(apply_transform(pts, params[:, k]))
        for acc, m in zip(out, maps):
            acc.append(m)
        t_proj, t_teach = t_proj + tp, t_teach + tt
    t0 = time.perf_counter()
    hi = lo + len(pts)
    for name, acc in zip(("aug_features", "aug_saliency", "aug_proj"), out):
        root[name][lo:hi] = np.stack(acc, axis=1)
    root["aug_params"][lo:hi] = params
    return tuple(a + b for a, b in zip(timings, (t_proj, t_teach, time.perf_counter() - t0)))
