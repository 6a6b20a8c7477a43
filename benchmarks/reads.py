"""Cache reads: random-sample reads/s from the store through ``CacheDataset``.

"Cold" is the first pass in random order over a store just opened by this (fresh) process:
nothing of it is in this process's memory, though the OS page cache may hold its files (it
cannot be dropped without root). "Warm" is the median of the following passes, each in a
new random order. Every read is one full training sample: points, features, saliency,
projection parameters and the augmentation draw.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.common import PeakRSS, Sizes, median


def _pass(ds, order) -> float:
    t0 = time.perf_counter()
    for i in order:
        ds[int(i)]
    return time.perf_counter() - t0


def run(sizes: Sizes, workdir: Path) -> dict:
    from i2p.cache.reader import CacheDataset

    cache = str(workdir / "cache")
    rng = np.random.default_rng(0)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        ds = CacheDataset(cache, with_targets=True, augment=True)
        open_s = time.perf_counter() - t0
        n = len(ds)
        cold = _pass(ds, rng.permutation(n))
        warm = [_pass(ds, rng.permutation(n)) for _ in range(max(1, sizes.read_passes))]
        sample = ds[0]
    nbytes = sum(v.numel() * v.element_size() for v in sample.values() if hasattr(v, "numel"))
    return {
        "samples": n,
        "bytes_per_sample": int(nbytes),
        "open_seconds": open_s,
        "cold_pass_seconds": cold,
        "warm_pass_seconds": warm,
        "cold_reads_per_s": n / cold,
        "warm_reads_per_s": n / median(warm),
        "memory": mem.as_dict(),
    }
