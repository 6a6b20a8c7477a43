"""Cost of the default objective per pre-training step: automatic 2D/3D balance (and what
the default adds) vs the fixed-weight objective it replaced (L3d + 1.0 * L2d), same network,
same cache, same batches, steps interleaved so that machine load hits both alike.

    python -m benchmarks.balance_cost --cache CACHE [--model tiny|paper] [--batch 16] [--repeats 15]

Prints one JSON line: median seconds per step of each and their ratio (goal: <= 1.2).
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.common import interleaved, median


def main(argv=None) -> dict:
    from i2p.cache.reader import CacheDataset, MultiCacheDataset, open_for_training
    from i2p.stage2_pretrain.config import cache_model_fields
    from i2p.stage2_pretrain.model import ModelConfig, build_model
    from i2p.stage2_pretrain.model.mae import optimizer_groups
    from i2p.stage2_pretrain.train import make_optimizer
    from i2p.stage2_pretrain.teacher_targets import select_norm, target_stats

    from benchmarks.stage2 import Batches, fixed_lambda_config, make_step, target_basis

    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--model", default="tiny", choices=["tiny", "paper"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args(argv)
    s = open_for_training(a.cache)["settings"]
    default = (ModelConfig.base if a.model == "paper" else ModelConfig.tiny)(**cache_model_fields(s))
    stats = target_stats(MultiCacheDataset([a.cache]), 256)
    norm = select_norm(stats, True, default.global_ratio > 0)
    steps = {}
    for name, cfg in (("default", default), ("fixed_lambda", fixed_lambda_config(default))):
        torch.manual_seed(0)
        model = build_model(cfg).train()
        if cfg.projects_targets:
            model.set_target_basis(target_basis(cfg, a.cache, stats))
        opt = make_optimizer(optimizer_groups(model, 0.05), lr=1e-3)
        src = Batches(CacheDataset(a.cache, with_targets=True, augment=True), a.batch, seed=1)
        steps[name] = make_step(model, opt, src, norm=norm)
    times = interleaved(steps, a.repeats, a.warmup)
    res = {"model": a.model, "batch": a.batch, "repeats": a.repeats, "threads": torch.get_num_threads(),
           **{f"{k}_step_s": median(v) for k, v in times.items()},
           "ratio_default_over_fixed_lambda": median(times["default"]) / median(times["fixed_lambda"])}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
