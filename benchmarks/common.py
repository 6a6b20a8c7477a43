"""Shared helpers of the benchmark harness: sizes, interleaved timing, memory, environment.

Why interleaved: the machines these run on are often shared, so the load changes from one
second to the next. Every comparison (A vs B) is measured as A, B, A, B, ... in one process
and each side reports the median of its repeats: a burst of load hits both sides alike, and
the RATIO is what the goals are stated in.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable


@dataclass
class Sizes:
    """Every knob of one benchmark run (``full``, ``quick`` or ``smoke``)."""

    name: str = "full"
    device: str = "cpu"  # 'auto' | 'cpu' | 'cuda[:N]' for the teacher, the model and the point ops
    compile: bool = False  # torch.compile the stage-2 model (CUDA only, as train.py does)
    repeats: int = 5
    warmup: int = 1
    teacher: str = "clip-vitb16"
    # stage 1
    s1_shapes: int = 32
    s1_batch: int = 8
    points: int = 2048
    # stage 2
    s2_batch_paper: int = 8
    s2_batch_tiny: int = 8
    # The 2D half's cost and the input pipeline (I2P vs 3D-only vs memory-fed steps): more
    # repeats than the other figures, since the goals are ratios near 1.
    # Multiples of the number of variants timed together (3 tiny, 4 paper), so that with the
    # rotated order of ``interleaved`` every variant runs equally often in every place.
    s2_ratio_repeats_tiny: int = 15
    # 16: a paper step varies by ~+-6% from one step to the next on an idle CPU, so a median of
    # 7 moved the paper ratios by ~+-0.05 between runs (1.11-1.18 for the same code).
    s2_ratio_repeats_paper: int = 16
    loader_workers: tuple = (0, 2, 4)  # DataLoader settings measured against memory-fed steps
    loader_steps: int = 3  # timed steps per loader block (after one untimed)
    rss_children: bool = True  # peak RSS of cache build / pretrain in child processes
    paper_overrides: dict = field(default_factory=dict)
    tiny_overrides: dict = field(default_factory=dict)
    # cache reads
    read_passes: int = 3
    # point ops
    ops_batch: int = 64
    ops_points: int = 2048
    ops_repeats: int = 5
    ops_reference: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "full": Sizes(),
    "quick": Sizes(name="quick", repeats=3, s1_shapes=4, s1_batch=2, s2_batch_paper=4, s2_batch_tiny=4,
                   s2_ratio_repeats_tiny=24, s2_ratio_repeats_paper=16, loader_workers=(0, 2),
                   read_passes=3, ops_repeats=3),
    # For the harness's own test: every key of the JSON, at sizes that run in seconds.
    "smoke": Sizes(name="smoke", repeats=1, warmup=1, teacher="test-tiny", s1_shapes=2, s1_batch=2, points=512,
                   s2_batch_paper=2, s2_batch_tiny=2, s2_ratio_repeats_tiny=1, s2_ratio_repeats_paper=1,
                   loader_workers=(0,), loader_steps=1, rss_children=False,
                   paper_overrides=dict(num_groups=(128, 64, 16), enc_depths=(1, 1, 1), embed_hidden=(32, 64)),
                   read_passes=1, ops_batch=2, ops_points=512, ops_repeats=1, ops_reference=True),
}


def median(xs) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def sync() -> None:
    """Wait for queued GPU work, so that a timer reads finished work (no-op on CPU)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run ``fns`` round-robin: ``warmup`` untimed rounds, then ``repeats`` timed rounds.
    Returns the seconds of every timed call per name (take the median).

    Each timed round starts one place further along the list (round r runs ``fns[r % n]``
    first), so that no variant always runs in the same place: in a fixed order a variant
    always follows the same one (its caches warm or cold the same way every round), and
    that position, not the variant, can make a ratio near 1."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    items = list(fns.items())
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for k, fn in items[r % len(items):] + items[:r % len(items)]:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return times


def resolve(device: str):
    from i2p.common.device import resolve_device

    return resolve_device(device)


def gpu_memory() -> dict:
    """Peak CUDA memory of this process so far (MiB), when CUDA was used."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    return {"cuda_max_allocated_mib": torch.cuda.max_memory_allocated() / (1 << 20),
            "cuda_max_reserved_mib": torch.cuda.max_memory_reserved() / (1 << 20)}


def ratio(a: float, b: float) -> float:
    return float(a / b) if b and b == b and b > 0 else float("nan")


class PeakRSS:
    """Peak resident set size while the block runs, sampled every 5 ms (psutil), in MiB.

    ``ru_maxrss`` is the peak of the whole process lifetime (reported too, and per stage when
    each stage runs in its own process); the sampler gives the peak of this block alone."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self.start = interval, 0, 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        try:
            import psutil

            return psutil.Process().memory_info().rss
        except Exception:  # psutil missing: fall back to the lifetime peak
            return ru_maxrss_bytes()

    def _loop(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self.start = self._rss()
        self.peak = self.start
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())

    def as_dict(self) -> dict:
        mib = 1 << 20
        return {"rss_start_mib": self.start / mib, "rss_peak_mib": self.peak / mib,
                "ru_maxrss_mib": ru_maxrss_bytes() / mib, **gpu_memory()}


def ru_maxrss_bytes() -> int:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb if platform.system() == "Darwin" else kb * 1024


def environment() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    try:
        info["loadavg_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
