"""Stage 2: training samples/s with cached targets vs the online teacher (the paper's way), and
the product's default objective (automatic 2D/3D balance and what it adds) vs the fixed-weight
objective it replaced (L3d + 1.0 * L2d): the cost of the balance, per step.

Both paths run the same model instance, optimiser, batch size and device, and the step of
``i2p.stage2_pretrain.train`` (forward + backward + grad clip + AdamW step, per-sample
generators, augmentation): the cached path reads points, features, saliency and projection
parameters from the real stage-1 cache; the online path reads only points and calls
``online_teacher.teacher_maps`` (project + teacher) inside the step. A step's time includes fetching
its batch from the store (no loader workers, so reading is not hidden behind compute).

The cost of the 2D half: the default (I2P) step vs the same network trained 3D-only
(``targets='3d'``, random masking, reading only the points, as ``i2p pretrain --targets 3d
--mask random`` does), same batch and cache, each step fetching its own batch. The input
pipeline: the default paper-model step fed from the cache vs fed from batches already in
memory, and DataLoaders with ``loader_workers`` workers vs memory, in blocks of steps (a
loader's workers read ahead, so they are timed in consecutive steps, not interleaved with other
variants whose time they would take). Peak RSS of ``i2p cache build`` and ``i2p pretrain``
(paper config) in child processes (``benchmarks/memory.py``).
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
    """The objective before the automatic balance: a fixed lambda 1.0, no global term, every
    teacher channel a target."""
    import dataclasses

    return dataclasses.replace(cfg, lambda_2d=1.0, global_ratio=0.0, target_l2=False, target_dims=0)


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


class MemoryBatches:
    """Batches already collated in memory (read once from the same cache), served in turn:
    a step fed from here pays no read, no decode and no collate."""

    def __init__(self, batches: Batches, count: int):
        self.items = [batches.next() for _ in range(count)]
        self.k = 0

    def next(self) -> dict:
        self.k += 1
        return self.items[(self.k - 1) % len(self.items)]


class LoaderBatches:
    """Batches from a ``torch.utils.data.DataLoader`` with ``workers`` workers and prefetch
    ``prefetch`` (as ``train.py`` builds it), random samples with replacement, endless."""

    def __init__(self, ds, batch: int, workers: int, prefetch: int = 4, seed: int = 1):
        sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=10 ** 9,
                                                 generator=torch.Generator().manual_seed(seed))
        self.loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                                                  prefetch_factor=prefetch if workers > 0 else None)
        self.it = iter(self.loader)

    def next(self) -> dict:
        return next(self.it)

    def close(self) -> None:
        del self.it


def three_d_only_config(cfg):
    """The same network trained 3D-only: no 2D head, no 2D target, random masking."""
    import dataclasses

    return dataclasses.replace(cfg, targets="3d", mask_mode="random")


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


def _ensure_cache(sizes: Sizes, workdir: Path, device) -> dict:
    """The cache the steps read (stage 1's, or built here when stage 1 did not run), and the
    peak RSS of a cache build in a child process (that build is the cache when there was none)."""
    import shutil

    from benchmarks.memory import build_cache_child
    from benchmarks.stage1 import data_spec

    cache = workdir / "cache"
    if cache.exists() and not sizes.rss_children:
        return {}
    out = cache if not cache.exists() else workdir / "cache-rss"
    res = build_cache_child(data_spec(sizes.s1_shapes), out, sizes.teacher, sizes.points, sizes.s1_batch,
                            sizes.s1_shapes, str(device))
    if out != cache:
        shutil.rmtree(out, ignore_errors=True)
    return res


def target_basis(cfg, cache: str, stats: dict | None):
    """The basis ``i2p pretrain`` fits for ``cfg`` on ``cache`` (None when it projects nothing)."""
    if not cfg.projects_targets:
        return None
    from i2p.cache.reader import MultiCacheDataset
    from i2p.stage2_pretrain.teacher_targets import principal_basis

    return principal_basis(MultiCacheDataset([cache]), 256, cfg.target_dims, stats["mean"], stats["std"],
                           cfg.image_size)[0]


def _model_and_opt(cfg, device, basis=None):
    from i2p.stage2_pretrain.model import build_model
    from i2p.stage2_pretrain.model.mae import optimizer_groups
    from i2p.stage2_pretrain.train import make_optimizer

    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    if basis is not None:
        model.set_target_basis(basis)
    return model, make_optimizer(optimizer_groups(model, 0.05), lr=1e-3)


def _one_model(name: str, batch: int, cache: str, settings: dict, sizes: Sizes, device, teacher, norm,
               compile_: bool, stats: dict | None = None) -> dict:
    from i2p.cache.reader import CacheDataset

    cfg = model_config(name, settings, sizes)
    model, opt = _model_and_opt(cfg, device, target_basis(cfg, cache, stats))
    fast = torch.compile(model) if compile_ else model
    kw = dict(norm=norm, device=device, train_model=fast)
    ds = lambda targets: CacheDataset(cache, with_targets=targets, augment=True)  # noqa: E731
    # 1. cached vs online teacher (sizes.repeats: the online step is slow, the ratio large)
    cached_src, online_src = Batches(ds(True), batch, 1), Batches(ds(False), batch, 1)
    times = interleaved({"cached": make_step(model, opt, cached_src, **kw),
                         "online": make_step(model, opt, online_src, teacher, **kw)},
                        sizes.repeats, sizes.warmup)
    # 2. the 2D half's cost, the balance's cost and the input pipeline (more repeats: ratios near 1)
    three, three_opt = _model_and_opt(three_d_only_config(cfg), device)
    old, old_opt = _model_and_opt(fixed_lambda_config(cfg), device)
    i2p_src, three_src = Batches(ds(True), batch, 2), Batches(ds(False), batch, 2)
    variants = {"i2p": make_step(model, opt, i2p_src, **kw),
                "3d_only": make_step(three, three_opt, three_src, device=device),
                "fixed_lambda": make_step(old, old_opt, Batches(ds(True), batch, 2), norm=norm, device=device)}
    reps = sizes.s2_ratio_repeats_paper if name == "paper" else sizes.s2_ratio_repeats_tiny
    if name == "paper":
        # The same steps fed from memory: the very batches the cache-fed default step reads
        # (same draw seed, one per round, warm-up included), read beforehand, so that the two
        # differ only by the read (cycling a few batches compared different clouds: +-6%).
        variants["memory_fed"] = make_step(model, opt, MemoryBatches(Batches(ds(True), batch, 2), reps + sizes.warmup),
                                           **kw)
    t2 = interleaved(variants, reps, sizes.warmup)
    c, o, f = median(times["cached"]), median(times["online"]), median(t2["fixed_lambda"])
    i, t3 = median(t2["i2p"]), median(t2["3d_only"])
    res = {
        "batch": batch,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "params_3d_only_m": sum(p.numel() for p in three.parameters()) / 1e6,
        "model": {k: v for k, v in cfg.to_dict().items() if k != "extra"},
        "cached_step_seconds": times["cached"],
        "online_step_seconds": times["online"],
        "cached_read_seconds_median": median(cached_src.read_seconds[sizes.warmup:]),
        "online_read_seconds_median": median(online_src.read_seconds[sizes.warmup:]),
        "cached_samples_per_s": batch / c,
        "online_samples_per_s": batch / o,
        "ratio_cached_vs_online": ratio(batch / c, batch / o),
        "fixed_lambda_step_seconds": t2["fixed_lambda"],
        "fixed_lambda_samples_per_s": batch / f,
        # samples/s of the default objective / of the fixed-weight one (>= 0.83 means
        # a default step costs <= 1.2x the old one); both from the interleaved group 2
        "ratio_default_vs_fixed_lambda": ratio(batch / i, batch / f),
        "i2p_step_seconds": t2["i2p"],
        "3d_only_step_seconds": t2["3d_only"],
        "i2p_read_seconds_median": median(i2p_src.read_seconds[sizes.warmup:]),
        "3d_only_read_seconds_median": median(three_src.read_seconds[sizes.warmup:]),
        # step TIME of the default (2D-guided) objective / of 3D-only training: the 2D half's cost
        "ratio_i2p_vs_3d_only": ratio(i, t3),
        "ratio_i2p_vs_3d_only_per_round": median([a / b for a, b in zip(t2["i2p"], t2["3d_only"])]),
    }
    if "memory_fed" in t2:
        res["memory_fed_step_seconds"] = t2["memory_fed"]
        res["ratio_cache_vs_memory_fed"] = ratio(i, median(t2["memory_fed"]))
        res["loaders"] = _loader_blocks(model, opt, ds(True), batch, sizes, kw)
    del model, opt, fast, three, three_opt, old, old_opt
    return res


def _loader_blocks(model, opt, ds, batch: int, sizes: Sizes, kw: dict) -> dict:
    """Step time fed by DataLoaders with each of ``sizes.loader_workers`` workers vs memory-fed,
    in blocks of ``loader_steps`` consecutive steps (one untimed first), blocks in turn, twice."""
    mem = MemoryBatches(Batches(ds, batch, 4), 4)
    times: dict[str, list[float]] = {"memory": []}
    for _ in range(2):
        for w in [None, *sizes.loader_workers]:
            src = mem if w is None else LoaderBatches(ds, batch, int(w))
            step = make_step(model, opt, src, **kw)
            step()
            for _ in range(sizes.loader_steps):
                t0 = time.perf_counter()
                step()
                times.setdefault("memory" if w is None else f"workers_{w}", []).append(time.perf_counter() - t0)
            if w is not None:
                src.close()
    m = median(times["memory"])
    return {"prefetch_factor": 4, "step_seconds": times,
            "ratio_vs_memory": {k: ratio(median(v), m) for k, v in times.items() if k != "memory"}}


def run(sizes: Sizes, workdir: Path) -> dict:
    from i2p.cache.reader import open_for_training
    from i2p.stage1_project.teachers import create_teacher

    from benchmarks.memory import pretrain_child

    device = resolve(sizes.device)
    with PeakRSS() as mem:
        build_rss = _ensure_cache(sizes, workdir, device)
        cache = str(workdir / "cache")
        settings = open_for_training(cache)["settings"]
        results: dict = {"cache": cache, "teacher": settings["teacher"], "feature_shape": settings["feature_shape"],
                         "device": str(device), "compile": bool(sizes.compile and device.type == "cuda")}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            teacher = create_teacher(settings["teacher"], weights="random", device=device)
        norm = stats = _target_norm(cache)
        if norm is not None:  # what train.py uses for the default objective: standardised maps
            from i2p.stage2_pretrain.teacher_targets import select_norm

            norm = {k: v.to(device) for k, v in select_norm(norm, True, False).items()}
        for name, batch in (("tiny", sizes.s2_batch_tiny), ("paper", sizes.s2_batch_paper)):
            results[name] = _one_model(name, batch, cache, settings, sizes, device, teacher, norm,
                                       results["compile"], stats)
    results["memory"] = mem.as_dict()
    n = min(sizes.s2_batch_paper, sizes.s1_shapes)
    results["peak_rss"] = {"cache_build": build_rss, "pretrain_paper": (
        pretrain_child(Path(cache), workdir / "pretrain-rss", steps=2, batch=n) if sizes.rss_children else {})}
    return results
