"""``i2p cache build``: read shapes, render views, run the frozen teacher, write the cache.

The unit of work and of resume is a shard of 64 samples (see :mod:`i2p.cache.store`). Each
shard is processed in fixed sub-batches of its own samples, so its bytes do not depend on
which process, array task or resumed run computed it: a killed build re-run, or ``--shard I/N``
builds into one directory, give the same store as one uninterrupted process.

SIGTERM/SIGUSR1 (a Slurm time-limit warning, pre-emption) finish the shard in progress, write it
and stop. :mod:`i2p.stage1_project.dask_build` runs the same :func:`build_shards` on dask workers.
"""

from __future__ import annotations

import math
import platform
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from i2p import __version__
from i2p.cache import store as cs
from i2p.cache.inspect import damaged_shards
from i2p.common.datasets import PointDataset, create_dataset
from i2p.common.device import resolve_device
from i2p.common.errors import CacheError, SampleError, UserError
from i2p.stage1_project.aug_renders import AUG_LEGACY, AugRenders, aug_settings, write_aug_renders
from i2p.stage1_project.projection import IMAGE_SIZE, VIEW_AXES, project, set_teacher_input, to_teacher_input

PHASES = ("read", "project", "teacher", "write")


@dataclass
class BuildConfig:
    data: str
    out: str
    teacher: str = "effnet-lite2"
    teacher_weights: str | None = None
    split: str = "train"
    points: int = 2048
    batch_size: int = 16
    device: str = "auto"
    shard: tuple[int, int] = (0, 1)
    limit: int | None = None
    overwrite: bool = False
    seed: int = 0
    read_workers: int = 4
    progress: bool = True
    # Render mode of the depth images (projection.PROJECTIONS): 'sum' is the paper's.
    projection: str = "sum"
    # Denoised targets: features and saliency averaged over the clean render and this many
    # renders of the cloud jittered by N(0, denoise_sigma) (seeded per sample and render). The
    # raster parameters (``proj``) stay those of the clean cloud. 0 = the paper's single render.
    denoise: int = 0
    denoise_sigma: float = 0.01
    teacher_input: str = "teacher"  # projection.set_teacher_input; recorded as teacher_mean/std
    aug: AugRenders = field(default_factory=AugRenders)  # augmented renders (--aug-renders K)


@dataclass
class BuildReport:
    out: str
    num_samples: int
    shards_total: int
    shards_done_now: int
    shards_skipped_existing: int
    skipped_samples: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    complete: bool = False
    seconds: float = 0.0
    stopped_by_signal: str | None = None  # e.g. 'SIGTERM' when a signal ended the build early
    workers: dict = field(default_factory=dict)  # dask builds: 'host:pid' -> shards, teacher creations


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N; anything else is a one-line UserError."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected I/N with integers, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text}: need 0 <= I < N (got I={i}, N={n})")
    return i, n


class _Subset(PointDataset):
    """The first ``limit`` samples of a dataset (``--limit``)."""

    def __init__(self, base: PointDataset, limit: int):
        self.base, self.n = base, min(limit, len(base))
        self.spec, self.split, self.num_points, self.classes = base.spec, base.split, base.num_points, base.classes

    def __len__(self):
        return self.n

    @property
    def ids(self):
        return list(self.base.ids)[: self.n]

    @property
    def labels(self):
        return np.asarray(self.base.labels)[: self.n]

    def load(self, i):
        return self.base.load(i)


def _settings(cfg: BuildConfig, ds: PointDataset, teacher_info: dict, layout: cs.CacheLayout) -> dict:
    """Everything that determines the cache's bytes: a store with other settings is refused."""
    return {
        "num_samples": layout.num_samples,
        "num_points": cfg.points,
        "views": len(VIEW_AXES),
        "view_axes": [list(v) for v in VIEW_AXES],
        "image_size": IMAGE_SIZE,
        "feature_shape": list(layout.feature_shape),
        "data_spec": ds.spec,
        "split": cfg.split,
        "data_fingerprint": ds.fingerprint(),
        "limit": cfg.limit,
        "seed": cfg.seed,
        "teacher": teacher_info["name"],
        "teacher_weights_sha256": teacher_info["weights_sha256"],
        "teacher_weights_source": teacher_info["weights_source"],
        "teacher_random": teacher_info["is_random"],
        "teacher_mean": list(teacher_info["mean"]),
        "teacher_std": list(teacher_info["std"]),
        "projection": cfg.projection,
        "denoise": int(cfg.denoise),
        "denoise_sigma": float(cfg.denoise_sigma) if cfg.denoise else None, **aug_settings(cfg.aug)}


# Settings added after format version 1 was fixed; a cache written before them used these
# values, so it is still read (and resumed) as such.
LEGACY_DEFAULTS = {"projection": "sum", "denoise": 0, "denoise_sigma": None, **AUG_LEGACY}


def _load_one(ds: PointDataset, index: int) -> tuple[int, np.ndarray | None, str | None]:
    try:
        sample = ds.load(index)
        pts = np.asarray(sample.points, dtype=np.float32)
        if pts.shape != (ds.num_points, 3) or not np.isfinite(pts).all():
            raise SampleError(f"reader returned points of shape {pts.shape} or non-finite values")
        return index, pts, None
    except SampleError as exc:
        return index, None, str(exc) or "unusable sample"
    except Exception as exc:  # an unexpected reader failure must not kill a cluster job
        return index, None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()


def _shard_reader(ds: PointDataset, layout: cs.CacheLayout, shards: list[int], workers: int) -> Iterator:
    """Yield (shard, points [n,P,3] with NaN rows for skipped, skips, read seconds), reading the
    next shard in the background while the caller computes the current one."""
    pool = ThreadPoolExecutor(max_workers=max(1, workers))

    def read(shard):
        t0 = time.perf_counter()
        lo, hi = layout.shard_range(shard)
        pts = np.full((hi - lo, layout.num_points, 3), np.nan, dtype=np.float32)
        skips = []
        for index, p, reason in pool.map(lambda i: _load_one(ds, i), range(lo, hi)):
            if p is None:
                skips.append({"index": index, "id": str(ds.ids[index]), "reason": reason})
            else:
                pts[index - lo] = p
        return shard, pts, skips, time.perf_counter() - t0

    ahead = ThreadPoolExecutor(max_workers=1)
    try:
        future = ahead.submit(read, shards[0]) if shards else None
        for k in range(len(shards)):
            result = future.result()
            future = ahead.submit(read, shards[k + 1]) if k + 1 < len(shards) else None
            yield result
    finally:
        ahead.shutdown(wait=False, cancel_futures=True)
        pool.shutdown(wait=False, cancel_futures=True)


def _jitter_seed(seed: int, row_id: int, k: int) -> int:
    from i2p.common.geometry import stable_seed

    return stable_seed("denoise", seed, row_id, k)


def _compute(pts: np.ndarray, teacher, device: torch.device, batch: int, layout: cs.CacheLayout,
             projection: str = "sum", denoise: int = 0, sigma: float = 0.0, seed: int = 0,
             first_index: int = 0):
    """Project + teacher for the valid rows of one shard, in fixed sub-batches; with
    ``denoise`` K > 0 the maps are the mean over the clean render and K jittered ones."""
    n = len(pts)
    h, w, c = layout.feature_shape
    nv = layout.views
    feats = np.full((n, nv, h, w, c), np.nan, dtype=np.float16)
    sal = np.full((n, nv, h, w), np.nan, dtype=np.float32)
    proj = np.full((n, nv, 5), np.nan, dtype=np.float32)
    valid = np.flatnonzero(np.isfinite(pts).all(axis=(1, 2)))
    t_proj = t_teach = 0.0
    for k in range(0, len(valid), batch):
        rows = valid[k:k + batch]
        t0 = time.perf_counter()
        x = torch.from_numpy(pts[rows]).to(device)
        depth, p = project(x, mode=projection)
        images = to_teacher_input(depth, teacher.mean, teacher.std)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        f, s = teacher(images)
        for k in range(1, denoise + 1):
            noise = torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(
                _jitter_seed(seed, first_index + int(r), k))) for r in rows]).to(device)
            dk, _ = project(x + sigma * noise, mode=projection)
            fk, sk = teacher(to_teacher_input(dk, teacher.mean, teacher.std))
            f, s = f + fk, s + sk
        if denoise:
            f, s = f / (denoise + 1), s / (denoise + 1)
        f = f.view(len(rows), nv, h, w, c)
        s = s.view(len(rows), nv, h, w)
        feats[rows] = f.to(torch.float16).cpu().numpy()
        sal[rows] = s.float().cpu().numpy()
        proj[rows] = p.cpu().numpy()
        t2 = time.perf_counter()
        t_proj += t1 - t0
        t_teach += t2 - t1
    return feats, sal, proj, t_proj, t_teach


def _make_dataset(cfg: BuildConfig) -> PointDataset:
    ds = create_dataset(cfg.data, split=cfg.split, num_points=cfg.points, seed=cfg.seed)
    if cfg.limit is not None:
        if cfg.limit < 1:
            raise UserError(f"--limit must be >= 1 (got {cfg.limit})")
        ds = _Subset(ds, cfg.limit)
    if len(ds) == 0:
        raise UserError(f"data {cfg.data} split {cfg.split} has no samples")
    return ds


def _make_teacher(cfg: BuildConfig, teacher_factory: Callable | None = None):
    """(teacher, device): the frozen teacher on the resolved device."""
    from i2p.stage1_project.teachers import create_teacher

    device = resolve_device(cfg.device)
    teacher = (teacher_factory or create_teacher)(cfg.teacher, weights=cfg.teacher_weights, device=device)
    set_teacher_input(teacher, cfg.teacher_input)
    return teacher, device


def prepare_store(cfg: BuildConfig, ds: PointDataset, teacher, warn: bool = True):
    """Open (or create) the store for ``cfg``; returns (root, layout, my shards, shards still to do).
    A store holding a cache built with other settings is refused (or replaced with --overwrite)."""
    from i2p.stage1_project.teachers import teacher_fingerprint

    tinfo = teacher_fingerprint(teacher)
    if tinfo["is_random"] and warn:
        warnings.warn(f"teacher {cfg.teacher} uses RANDOM weights (--teacher-weights random): "
                      "features carry no 2D knowledge; this is recorded in the cache", stacklevel=1)
    layout = cs.CacheLayout(len(ds), cfg.points, len(VIEW_AXES), tuple(teacher.feature_shape), cfg.aug.renders)
    settings = _settings(cfg, ds, tinfo, layout)
    root = _open_or_create(cfg, layout, settings, ds)
    shard_i, shard_n = cfg.shard
    finished = cs.done_shards(root)
    mine = [s for s in range(layout.num_shards) if s % shard_n == shard_i]
    bad = damaged_shards(root, [s for s in mine if s in finished])  # a re-run repairs exactly these
    if bad:
        warnings.warn(f"rebuilding {len(bad)} damaged shards: {'; '.join(p[0] for p in bad.values())[:400]}")
    return root, layout, mine, [s for s in mine if s not in finished or s in bad]


def build_shards(cfg: BuildConfig, shards: list[int], ds: PointDataset, teacher, device: torch.device,
                 root, layout: cs.CacheLayout, stop=None) -> Iterator[dict]:
    """Compute and write ``shards`` one after the other, yielding one record per shard written
    (its data first, then its completion marker). If ``stop.signal`` becomes set (SIGTERM/SIGUSR1),
    the shard in progress is finished and written, and no further shard is started."""
    for shard, pts, skips, t_read in _shard_reader(ds, layout, shards, cfg.read_workers):
        lo, hi = layout.shard_range(shard)
        feats, sal, proj, t_proj, t_teach = _compute(pts, teacher, device, cfg.batch_size, layout, cfg.projection,
                                                     cfg.denoise, cfg.denoise_sigma, cfg.seed, lo)
        t0 = time.perf_counter()
        cs.write_shard(root, shard, lo, hi, {"features": feats, "saliency": sal, "proj": proj, "points": pts})
        t_proj, t_teach, t_write = write_aug_renders(cfg, root, layout, pts, lo, lambda p: _compute(
            p, teacher, device, cfg.batch_size, layout, cfg.projection, cfg.denoise, cfg.denoise_sigma, cfg.seed, lo),
            (t_proj, t_teach, time.perf_counter() - t0))
        timing = {"read": t_read, "project": t_proj, "teacher": t_teach, "write": t_write}
        cs.mark_shard_done(root, shard, {"skips": skips, "timings": timing, "samples": hi - lo,
                                         "host": platform.node()})
        yield {"shard": shard, "samples": hi - lo, "skips": skips, "timings": timing}
        if stop is not None and stop.signal is not None:
            return


def build_cache(cfg: BuildConfig, teacher_factory: Callable | None = None,
                on_progress: Callable[[int], None] | None = None) -> BuildReport:
    """Build (or finish) the cache described by ``cfg``; returns what was done.

    SIGTERM/SIGUSR1 (Slurm's warning before a time limit, pre-emption) finish the shard in
    progress, write it, and return early with ``report.stopped_by_signal`` set; re-running the
    same command does the rest."""
    from i2p.common.signals import StopOnSignal

    t_start = time.perf_counter()
    ds = _make_dataset(cfg)
    teacher, device = _make_teacher(cfg, teacher_factory)
    root, layout, mine, todo = prepare_store(cfg, ds, teacher)
    report = BuildReport(cfg.out, layout.num_samples, layout.num_shards, 0, len(mine) - len(todo))
    totals = dict.fromkeys(PHASES, 0.0)
    bar = _progress(sum(hi - lo for lo, hi in map(layout.shard_range, todo)), cfg.progress)
    try:
        with StopOnSignal() as stop:
            for rec in build_shards(cfg, todo, ds, teacher, device, root, layout, stop=stop):
                _account(report, totals, rec, bar)
                if on_progress is not None:
                    on_progress(rec["shard"])
            report.stopped_by_signal = stop.name
    finally:
        if bar is not None:
            bar.close()
    report.timings = totals
    report.seconds = time.perf_counter() - t_start
    report.complete = finalize(root)
    return report


def _account(report: BuildReport, totals: dict, rec: dict, bar) -> None:
    for k in PHASES:
        totals[k] += rec["timings"][k]
    report.shards_done_now += 1
    report.skipped_samples.extend(rec["skips"])
    if bar is not None:
        bar.update(rec["samples"])
        bar.set_postfix(skipped=len(report.skipped_samples))


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="shape", desc="cache build", dynamic_ncols=True)


def _open_or_create(cfg: BuildConfig, layout: cs.CacheLayout, settings: dict, ds: PointDataset):
    import zarr

    try:
        existing = zarr.open_group(cfg.out, mode="r")
        has = "settings" in existing.attrs
    except Exception:
        existing, has = None, False
    if has and cfg.overwrite:
        zarr.open_group(cfg.out, mode="w")  # clears the store, local or remote
        has = False
    elif has and {**LEGACY_DEFAULTS, **existing.attrs["settings"]} != {**LEGACY_DEFAULTS, **settings}:
        old, settings = {**LEGACY_DEFAULTS, **existing.attrs["settings"]}, {**LEGACY_DEFAULTS, **settings}
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        raise CacheError(f"{cfg.out} holds a cache built with other settings ({', '.join(diff)} differ); "
                         "pass --overwrite to replace it or choose another --out")
    extra = {"i2p_version": __version__, "complete": False}
    return cs.create_store(cfg.out, layout, settings, ds.labels, [str(i) for i in ds.ids],
                           extra if not has else {})


def finalize(root) -> bool:
    """When every shard is done, write the summary attributes (idempotent, race-safe: any
    process that sees all shards done writes the same summary)."""
    layout = cs.layout_of(root)
    finished = cs.done_shards(root)
    if len(finished) < layout.num_shards:
        return False
    skips = sorted((s for m in finished.values() for s in m.get("skips", [])), key=lambda s: s["index"])
    totals = {k: float(sum(m.get("timings", {}).get(k, 0.0) for m in finished.values())) for k in PHASES}
    busy = sum(totals.values())
    root.attrs.update({
        "complete": True,
        "skips": skips,
        "num_valid": layout.num_samples - len(skips),
        "timings": totals,
        "throughput_shapes_per_s": (layout.num_samples / busy) if busy > 0 else None,
    })
    return True


def summary_line(report: BuildReport) -> str:
    n_skip = len(report.skipped_samples)
    rate = report.num_samples / report.seconds if report.seconds else math.nan
    state = "complete" if report.complete else f"partial ({report.shards_done_now} shards by this process)"
    if report.stopped_by_signal:
        state += f", stopped by {report.stopped_by_signal} (re-run the command to resume)"
    return (f"cache {report.out}: {state}; {report.shards_done_now} shards written, "
            f"{report.shards_skipped_existing} already done; {n_skip} samples skipped; "
            f"{report.seconds:.1f}s ({rate:.1f} shapes/s overall)")


__all__ = ["BuildConfig", "BuildReport", "build_cache", "build_shards", "prepare_store", "parse_shard", "finalize",
           "summary_line"]
