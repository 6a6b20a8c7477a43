"""Which cached samples a pretraining run trains on, and how often each epoch.

Three settings shape the training set, all seeded so that a resumed run (any number of
restarts) sees exactly the same samples in the same order:

* ``data.holdout``: samples held out for the 2D head's R2 diagnostic (evenly spaced).
* ``data.fraction``: a seeded, class-stratified, nested share of the remaining samples (the
  data-efficiency curve: accuracy vs number of pretraining shapes). Nested: the 25% subset is
  part of the 50% subset of the same ``data.fraction_seed``, so a curve adds shapes rather than
  swapping them. Each class keeps ``max(1, round(fraction * n_class))`` samples.
* ``data.cache_weights``: per-cache weights (``--cache DIR:W``). Each epoch draws
  ``round(W * n)`` of that cache's ``n`` training samples: W < 1 a fresh seeded subset per
  epoch, W > 1 every sample ``floor(W)`` times plus a seeded subset. All weights 1 (the
  default) is a plain permutation, identical to a run without weights.

The epoch order depends only on (seed, epoch), which is what makes resuming bit-exact.
"""

from __future__ import annotations

import numpy as np

from i2p.common.geometry import stable_seed


def split_holdout(n: int, holdout: int) -> tuple[list[int], list[int]]:
    """(train positions, held-out positions): ``holdout`` positions evenly spaced over the
    dataset (caches are usually written class by class, so every class is represented)."""
    if holdout <= 0:
        return list(range(n)), []
    held = sorted(set(np.linspace(0, n - 1, num=min(holdout, n // 5)).round().astype(int).tolist()))
    hs = set(held)
    return [i for i in range(n) if i not in hs], held


def fraction_subset(positions: list[int], labels: np.ndarray, fraction: float, seed: int) -> list[int]:
    """A seeded, class-stratified, nested subset of ``positions`` (see module docstring), in the
    original order. ``labels[p]`` is the class of position ``p``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"data.fraction must lie in (0, 1], got {fraction}")
    if fraction >= 1:
        return list(positions)
    pos = np.asarray(positions, dtype=np.int64)
    lab = np.asarray(labels, dtype=np.int64)[pos]
    keep = np.zeros(len(pos), dtype=bool)
    for c in np.unique(lab):
        members = np.flatnonzero(lab == c)
        rank = np.random.default_rng(stable_seed("fraction", seed, int(c))).permutation(len(members))
        k = max(1, int(round(fraction * len(members))))
        keep[members[rank < k]] = True  # the first k of a fixed ranking: nested across fractions
    return pos[keep].tolist()


def source_counts(sources: np.ndarray, weights: list[float] | None) -> list[int]:
    """Draws per epoch of each source (``sources[j]`` = cache of training sample j)."""
    n_src = int(sources.max()) + 1 if len(sources) else 0
    sizes = np.bincount(sources, minlength=n_src)
    if not weights:
        return sizes.tolist()
    return [int(round(w * n)) for w, n in zip(weights, sizes)]


def epoch_size(sources: np.ndarray, weights: list[float] | None) -> int:
    return int(sum(source_counts(sources, weights)))


def epoch_order(sources: np.ndarray, weights: list[float] | None, seed: int, epoch: int) -> np.ndarray:
    """Indices into the training samples for epoch ``epoch`` (see module docstring)."""
    n = len(sources)
    if not weights or all(w == 1 for w in weights):
        return np.random.default_rng(stable_seed("order", seed, epoch)).permutation(n)
    draws = []
    for i, k in enumerate(source_counts(sources, weights)):
        members = np.flatnonzero(sources == i)
        if k == 0 or len(members) == 0:
            continue
        reps, rest = divmod(k, len(members))
        rng = np.random.default_rng(stable_seed("mix", seed, epoch, i))
        draws += [members] * reps + [rng.choice(members, size=rest, replace=False)]
    pool = np.concatenate(draws) if draws else np.zeros(0, dtype=np.int64)
    return pool[np.random.default_rng(stable_seed("order", seed, epoch)).permutation(len(pool))]


def training_plan(full_ds, data_cfg, seed: int) -> dict:
    """What a run over ``full_ds`` (a ``MultiCacheDataset``) trains on: ``train_pos`` and
    ``held_pos`` (positions in ``full_ds``), ``sources`` (cache of each training sample),
    ``weights`` and ``epoch_size``. ``i2p pretrain`` and the studies' step planning both call it."""
    train_pos, held_pos = split_holdout(len(full_ds), data_cfg.holdout)
    if data_cfg.fraction < 1:
        fseed = seed if data_cfg.fraction_seed is None else data_cfg.fraction_seed
        train_pos = fraction_subset(train_pos, full_ds.labels, data_cfg.fraction, fseed)
    bounds = np.cumsum([len(p) for p in full_ds.parts])
    sources = np.searchsorted(bounds, np.asarray(train_pos, dtype=np.int64), side="right")
    weights = list(data_cfg.cache_weights) if data_cfg.cache_weights else None
    if weights is not None and len(weights) != len(full_ds.parts):
        raise ValueError(f"data.cache_weights has {len(weights)} values for {len(full_ds.parts)} caches")
    return {"train_pos": train_pos, "held_pos": held_pos, "sources": sources, "weights": weights,
            "epoch_size": epoch_size(sources, weights) if weights else len(train_pos)}


def parse_weighted_caches(entries: list[str], weights_text: str | None = None) -> tuple[list[str], list[float] | None]:
    """``--cache DIR`` / ``--cache DIR:W`` entries (and an optional ``--cache-weights 1,0.3``)
    -> (paths, weights or None when every weight is 1). ``:W`` is read only when W is a number,
    so ``s3://bucket/x`` stays a path. Raises ValueError with a one-line message."""
    import re

    paths, weights = [], []
    for e in entries:
        m = re.match(r"^(.+):(\d+(?:\.\d*)?|\.\d+)$", e)
        paths.append(m.group(1) if m else e)
        weights.append(float(m.group(2)) if m else None)
    if weights_text:
        if any(w is not None for w in weights):
            raise ValueError("give cache weights either as --cache DIR:W or with --cache-weights, not both")
        try:
            weights = [float(x) for x in weights_text.split(",")]
        except ValueError:
            raise ValueError(f"--cache-weights must be comma-separated numbers (got {weights_text!r})") from None
        if len(weights) != len(paths):
            raise ValueError(f"--cache-weights has {len(weights)} values for {len(paths)} --cache sources")
    weights = [1.0 if w is None else w for w in weights]
    if any(not (w >= 0) for w in weights) or not any(w > 0 for w in weights):
        raise ValueError("cache weights must be >= 0 with at least one > 0")
    return paths, (None if all(w == 1 for w in weights) else weights)
