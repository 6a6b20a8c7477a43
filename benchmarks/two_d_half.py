"""Where the 2D half of a stage-2 step goes, by ablation: ``python -m benchmarks.two_d_half --cache DIR``.

``benchmarks.profile`` splits one step by phase and operator; this answers the question the
issue-20 goal asks (what does the default objective cost over 3D-only training, and which part
of it) by timing whole training steps that differ in one thing, interleaved in one process
(``benchmarks.common.interleaved``: each round starts one variant further on):

* ``default``: the default objective, each step reading its batch from the cache (as
  ``python -m benchmarks --sections stage2`` times it);
* ``3d_only``: the same network trained 3D-only (no 2D head, random masking, points only);
* ``3d_only_reading_2d``: 3D-only, but each step reads the default's batch (features, saliency,
  projection) and drops the 2D part: the cost of reading the 2D arrays;
* ``random_mask``: the default with random instead of saliency-guided masking;
* ``token_targets``: the default with one 2D target per token (``model.target2d=token``, an
  8x narrower 2D head for ``tiny``): what the per-point 2D head costs;
* ``default_memory_fed`` / ``3d_only_memory_fed``: both fed from batches already in memory: the
  compute-only ratio, the floor that no loader (workers, prefetch) can go below.

Each figure is the median step time over ``--rounds`` rounds, and its ratio to ``3d_only``.
Use a real cache (the teacher width sets the 2D head's size); single-threaded by default, as
the README's performance figures are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from benchmarks.common import environment, interleaved, median
from benchmarks.stage2 import Batches, MemoryBatches, _model_and_opt, _target_norm, make_step, three_d_only_config


class _PointsOnly:
    """The default's batches with the 2D arrays dropped after the read (what a 3D-only step
    would pay if it read what the default reads)."""

    def __init__(self, batches: Batches):
        self.batches = batches

    def next(self) -> dict:
        batch = self.batches.next()
        return {k: v for k, v in batch.items() if k not in ("features", "saliency", "proj")}


def variants(cfg, cache: str, batch: int, rounds: int, device: torch.device) -> dict:
    """The timed steps (name -> zero-argument callable), each with its own model and optimiser."""
    from i2p.cache.reader import CacheDataset

    norm = _target_norm(cache)
    data = lambda targets: CacheDataset(cache, with_targets=targets, augment=True)  # noqa: E731
    three = three_d_only_config(cfg)
    out = {}

    def add(name, model_cfg, source, with_norm=True):
        model, opt = _model_and_opt(model_cfg, device)
        out[name] = make_step(model, opt, source, norm=norm if with_norm else None, device=device)

    add("default", cfg, Batches(data(True), batch, 2))
    add("3d_only", three, Batches(data(False), batch, 2), with_norm=False)
    add("3d_only_reading_2d", three, _PointsOnly(Batches(data(True), batch, 2)), with_norm=False)
    add("random_mask", dataclasses.replace(cfg, mask_mode="random"), Batches(data(True), batch, 2))
    add("token_targets", dataclasses.replace(cfg, target2d="token"), Batches(data(True), batch, 2))
    count = rounds + 3
    add("default_memory_fed", cfg, MemoryBatches(Batches(data(True), batch, 2), count))
    add("3d_only_memory_fed", three, MemoryBatches(Batches(data(False), batch, 2), count), with_norm=False)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.two_d_half", description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", required=True, help="a stage-1 cache (e.g. SHREC'16 train, effnet-lite2)")
    p.add_argument("--model", choices=("tiny", "paper"), default="tiny")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=28, help="timed rounds (a multiple of the 7 variants)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from i2p.cache.reader import open_for_training
    from i2p.common.heap import keep_freed_memory
    from i2p.stage2_pretrain.config import cache_model_fields
    from i2p.stage2_pretrain.model import ModelConfig

    keep_freed_memory()  # the i2p command's malloc setting
    fields = cache_model_fields(open_for_training(a.cache)["settings"])
    cfg = (ModelConfig.base if a.model == "paper" else ModelConfig.tiny)(**fields)
    times = interleaved(variants(cfg, a.cache, a.batch, a.rounds, torch.device("cpu")), a.rounds, a.warmup)
    med = {k: median(v) for k, v in times.items()}
    report = {"model": a.model, "batch": a.batch, "threads": torch.get_num_threads(), "rounds": a.rounds,
              "teacher_channels": cfg.teacher_channels, "num_points": cfg.num_points,
              "environment": environment(), "step_seconds": med,
              "vs_3d_only": {k: t / med["3d_only"] for k, t in med.items()},
              "memory_fed_ratio": med["default_memory_fed"] / med["3d_only_memory_fed"]}
    print(f"{a.model} model, batch {a.batch}, {report['threads']} thread(s), {a.rounds} rounds, "
          f"teacher C={cfg.teacher_channels}: median step time and ratio to 3d_only")
    for k in med:
        print(f"  {k:22s} {report['step_seconds'][k] * 1e3:8.1f} ms  x{report['vs_3d_only'][k]:.3f}")
    print(f"  compute-only ratio (default_memory_fed / 3d_only_memory_fed): x{report['memory_fed_ratio']:.3f}")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(report, fh, indent=2)
    return report


if __name__ == "__main__":
    main()
