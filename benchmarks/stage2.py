"""Stage 2: training samples/s with cached targets vs the online teacher (the paper's way), and
the product's default objective (automatic 2D/3D balance and what it adds) vs the fixed-weight
objective it replaced (L3d + 1.0 * L2d): the cost of the balance, per step.

Both paths run the same model instance, optimiser, batch size and device, and the step of
``i2p.stage2_pretrain.train`` (forward + backward + grad clip + AdamW step, per-sample
generators, augmentation): the cached path reads points, features, saliency and projection
parameters from the real stage-1 cache; the online path reads only points and calls
``train._teacher_maps`` (project + teacher) inside the step. A step's time includes fetching
its batch from the store (no loader workers, so reading is not hidden behind compute).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import PeakRSS, Sizes, interleaved, median, ratio, resolve


def model_config(name: str, settings: dict, sizes: Sizes):
    from i2p.stage2_pretrain.model import ModelConfig

    from i2p.stage2_pretrain.config import cache_model_fields

    over = dict(sizes.paper_overrides if name == "paper" else sizes.tiny_overrides)
    over.update(cache_model_fields(settings))
    return (ModelConfig.base if name == "paper" else ModelConfig.tiny)(**over)


def fixed_lambda_config(cfg):
    """The objective before the automatic balance: a fixed lambda 1.0, no global term."""
    import dataclasses

    return dataclasses.replace(cfg, lambda_2d=1.0, global_ratio=0.0, target_l2=False)


class Batches:
    """An endless stream of random batches (drawn with replacement, so a cache smaller than a
    batch still works) read from a CacheDataset and collated as the DataLoader does."""

    def __init__(self, ds, batch: int, seed: int = 0):
        self.ds, self.batch = ds, batch
        self.rng = np.random.default_rng(seed)
        self.read_seconds: list[float] = []

    def next(self) -> dict:
        t0 = time.perf_counter()
        idx = self.rng.integers(len(self.ds), size=self.batch)
        out = torch.utils.data.default_collate([self.ds[int(i)] for i in idx])
        self.read_seconds.append(time.perf_counter() - t0)
        return out


def make_step(model, opt, batches: Batches, teacher=None, grad_clip: float = 10.0, norm=None,
              device=None, train_model=None):
    """One training step as train.py takes it (bf16 autocast on CUDA, fp32 on CPU)."""
    from i2p.stage2_pretrain.train import forward_batch

    device = device or torch.device("cpu")
    train_model = train_model or model
    state = {"step": 0}

    def step():
        out = forward_batch(train_model, batches.next(), device, 0, state["step"], teacher, norm)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        state["step"] += 1

    return step


def _target_norm(cache: str):
    """The per-channel feature statistics train.py standardises targets with (when it does)."""
    from i2p.stage2_pretrain import train

    if not hasattr(train, "target_stats"):
        return None
    from i2p.cache.reader import CacheDataset

    ds = CacheDataset(cache)
    try:
        return train.target_stats(ds, 256)
    except AttributeError:  # target_stats of a multi-cache loader
        from i2p.cache.reader import MultiCacheDataset

        return train.target_stats(MultiCacheDataset([cache]), 256)


def run(sizes: Sizes, workdir: Path) -> dict:
    from i2p.cache.reader import CacheDataset, open_for_training
    from i2p.stage1_project.teachers import create_teacher
    from i2p.stage2_pretrain.model import build_model
    from i2p.stage2_pretrain.model.mae import optimizer_groups

    cache = str(workdir / "cache")
    settings = open_for_training(cache)["settings"]
    device = resolve(sizes.device)
    results: dict = {"cache": cache, "teacher": settings["teacher"], "feature_shape": settings["feature_shape"],
                     "device": str(device), "compile": bool(sizes.compile and device.type == "cuda")}
    with PeakRSS() as mem:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            teacher = create_teacher(settings["teacher"], weights="random", device=device)
        norm = _target_norm(cache)
        if norm is not None:  # what train.py uses for the default objective: standardised maps
            from i2p.stage2_pretrain.teacher_targets import select_norm

            norm = {k: v.to(device) for k, v in select_norm(norm, True, False).items()}
        for name, batch in (("tiny", sizes.s2_batch_tiny), ("paper", sizes.s2_batch_paper)):
            torch.manual_seed(0)
            cfg = model_config(name, settings, sizes)
            model = build_model(cfg).to(device).train()
            opt = torch.optim.AdamW(optimizer_groups(model, 0.05), lr=1e-3)
            fast = torch.compile(model) if results["compile"] else model
            cached_src = Batches(CacheDataset(cache, with_targets=True, augment=True), batch, seed=1)
            online_src = Batches(CacheDataset(cache, with_targets=False, augment=True), batch, seed=1)
            kw = dict(norm=norm, device=device, train_model=fast)
            torch.manual_seed(0)
            old = build_model(fixed_lambda_config(cfg)).to(device).train()
            old_opt = torch.optim.AdamW(optimizer_groups(old, 0.05), lr=1e-3)
            old_src = Batches(CacheDataset(cache, with_targets=True, augment=True), batch, seed=1)
            times = interleaved({"cached": make_step(model, opt, cached_src, **kw),
                                 "online": make_step(model, opt, online_src, teacher, **kw),
                                 "fixed_lambda": make_step(old, old_opt, old_src, norm=norm, device=device)},
                                sizes.repeats, sizes.warmup)
            c, o, f = median(times["cached"]), median(times["online"]), median(times["fixed_lambda"])
            results[name] = {
                "batch": batch,
                "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                "model": {k: v for k, v in cfg.to_dict().items() if k != "extra"},
                "cached_step_seconds": times["cached"],
                "online_step_seconds": times["online"],
                "cached_read_seconds_median": median(cached_src.read_seconds[sizes.warmup:]),
                "online_read_seconds_median": median(online_src.read_seconds[sizes.warmup:]),
                "cached_samples_per_s": batch / c,
                "online_samples_per_s": batch / o,
                "ratio_cached_vs_online": ratio(batch / c, batch / o),
                "fixed_lambda_step_seconds": times["fixed_lambda"],
                "fixed_lambda_samples_per_s": batch / f,
                # samples/s of the default objective / of the fixed-weight one (>= 0.83 means
                # a default step costs <= 1.2x the old one)
                "ratio_default_vs_fixed_lambda": ratio(batch / c, batch / f),
            }
            del model, opt, fast, old, old_opt
    results["memory"] = mem.as_dict()
    return results
