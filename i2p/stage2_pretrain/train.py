"""The pre-training loop: cache in, checkpoints and metrics out, resumable bit for bit.

Why it is shaped this way:

* Every random choice of step ``s`` comes from per-sample generators seeded by ``(seed, s, index)``;
  every sample's augmentation from ``(seed, epoch, index)``; data order is a function of
  ``(seed, epoch)``. Resuming therefore needs only the step counter plus model/optimiser/
  scheduler state, and a killed run continues with exactly the losses it would have had.
* ``last.ckpt`` is written atomically every ``log.ckpt_every_steps`` steps and every epoch; a
  non-finite loss stops the run before anything is written, so the last good checkpoint stays.
* SIGTERM/SIGUSR1 (Slurm pre-emption, ``scancel --signal``) finish the current step, write
  ``last.ckpt`` and exit cleanly; re-running the command resumes.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from i2p import __version__
from i2p.cache.reader import CacheDataset, MultiCacheDataset, open_many_for_training
from i2p.common.signals import StopOnSignal
from i2p.common.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from i2p.common.device import resolve_device
from i2p.common.errors import UserError
from i2p.common.geometry import stable_seed
from i2p.stage2_pretrain import config as pcfg
from i2p.stage2_pretrain.distributed import DistInfo, barrier, init_distributed, mean_across, shutdown
from i2p.stage2_pretrain.model import build_model
from i2p.stage2_pretrain.model.mae import optimizer_groups
from i2p.stage2_pretrain.diagnostics import encoder_grad_norms, heldout_r2, unaugmented
from i2p.stage2_pretrain.sampler import EpochBatchSampler
from i2p.stage2_pretrain.teacher_targets import (  # noqa: F401  (target_stats: benchmarks, tests)
    apply_norm, bank_keys, select_norm, target_stats, teacher_bank,
)

LOG_KEYS = ("loss", "loss_3d", "loss_2d", "loss_global", "w_2d", "w_global", "grad_ratio_2d",
            "grad_ratio_global", "sal_visible", "sal_masked")


class TrainingError(UserError):
    pass


@dataclass
class RunResult:
    run_dir: Path
    step: int
    epoch: int
    stopped_by_signal: bool = False


def _lr_lambda(warmup: int, total: int, base: float, floor: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return (floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * min(1.0, t)))) / base
    return f


def _prepare_model_config(cfg: pcfg.PretrainConfig, attrs: dict) -> pcfg.PretrainConfig:
    s = attrs["settings"]
    if cfg.data.points is not None and cfg.data.points != s["num_points"]:
        raise TrainingError(f"cache was built with {s['num_points']} points, config asks for {cfg.data.points}")
    return pcfg.replace_model(cfg, num_points=s["num_points"], views=s["views"],
                              teacher_channels=s["feature_shape"][-1], image_size=s["image_size"])


def split_holdout(n: int, holdout: int) -> tuple[list[int], list[int]]:
    """(train positions, held-out positions): ``holdout`` positions evenly spaced over the
    dataset (caches are usually written class by class, so every class is represented)."""
    import numpy as np

    if holdout <= 0:
        return list(range(n)), []
    held = sorted(set(np.linspace(0, n - 1, num=min(holdout, n // 5)).round().astype(int).tolist()))
    hs = set(held)
    return [i for i in range(n) if i not in hs], held


def _make_loader(ds, cfg: pcfg.PretrainConfig, epoch: int, start: int, dist_info: DistInfo):
    ds.dataset.set_epoch(epoch)
    sampler = EpochBatchSampler(len(ds), cfg.optim.batch_size, cfg.seed, epoch, start,
                                dist_info.rank, dist_info.world)
    workers = cfg.data.workers
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers,
                                       persistent_workers=False, pin_memory=torch.cuda.is_available(),
                                       prefetch_factor=4 if workers > 0 else None)


def _online_teacher(cfg: pcfg.PretrainConfig, attrs: dict, device: torch.device):
    from i2p.stage1_project.teachers import create_teacher, teacher_fingerprint

    s = attrs["settings"]
    if s.get("denoise"):
        raise TrainingError("--online-teacher cannot reproduce a cache built with --denoise (its targets average "
                            "several jittered renders); train from the cache")
    weights = cfg.teacher_weights or ("random" if s["teacher_random"] else None)
    teacher = create_teacher(s["teacher"], weights=weights, device=device)
    fp = teacher_fingerprint(teacher)
    teacher.projection = s.get("projection", "sum")  # render as the cache was rendered
    if fp["weights_sha256"] != s["teacher_weights_sha256"]:
        raise TrainingError(f"online teacher weights (sha256 {fp['weights_sha256']}) differ from the cache's "
                            f"({s['teacher_weights_sha256']}): pass the same --teacher-weights")
    return teacher


def _teacher_maps(teacher, points: torch.Tensor, projection: str = "sum"):
    from i2p.stage1_project.projection import project, to_teacher_input

    depth, proj = project(points, mode=projection)
    f, s = teacher(to_teacher_input(depth, teacher.mean, teacher.std))
    b, v = proj.shape[:2]
    return f.view(b, v, *f.shape[1:]), s.view(b, v, *s.shape[1:]), proj


def forward_batch(train_model, batch: dict, device: torch.device, seed: int, step: int, teacher=None,
                  norm: dict | None = None, tag: str = "step", bank: dict | None = None,
                  progress: float | None = None) -> dict:
    """One training step's forward, exactly as the loop runs it (the benchmarks call it too):
    one generator per sample seeded by (tag, seed, step, sample) so the draws do not depend on
    how the global batch is split across ranks; cached maps or the online teacher; the maps
    standardised and the global target made as ``norm`` (:func:`select_norm`) says; the 'nce'
    bank's keys; bf16 autocast on CUDA."""
    gen = [torch.Generator().manual_seed(stable_seed(tag, seed, step, int(i))) for i in batch["index"]]
    points = batch["points"].to(device, non_blocking=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with autocast:
        if teacher is not None:
            feats, sal, proj = _teacher_maps(teacher, points, getattr(teacher, "projection", "sum"))
        else:
            feats = batch["features"].to(device, non_blocking=True)
            sal = batch["saliency"].to(device, non_blocking=True)
            proj = batch["proj"].to(device, non_blocking=True)
        feats, glob = apply_norm(feats, norm)
        keys = rows = None
        if bank is not None and glob is not None:
            keys, rows = bank_keys(bank, [int(i) for i in batch["index"]], glob)
        return train_model(points, feats, sal, proj, batch["scale"].to(device), batch["shift"].to(device),
                           generator=gen, global_target=glob, global_bank=keys, global_rows=rows,
                           progress=progress)


class MetricsLog:
    """metrics.jsonl + TensorBoard (rank 0 only). On resume, lines past the checkpoint's step
    are dropped so the log reads as one uninterrupted run."""

    def __init__(self, run_dir: Path, resume_step: int, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1)
        except Exception:  # tensorboard missing: the JSON log is the record
            self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self):
        if self.tb is not None:
            self.tb.close()


def pretrain(cache: str | list[str], out: str, cfg: pcfg.PretrainConfig, resume: bool = True,
             probe_cache: str | None = None, max_steps: int | None = None) -> RunResult:
    """Train from ``cache`` (one or several caches with the same teacher and settings) into run
    directory ``out``. ``max_steps`` stops early (tests)."""
    caches = [cache] if isinstance(cache, str) else list(cache)
    all_attrs = open_many_for_training(caches, cfg.data.points)
    attrs = all_attrs[0]
    cfg = _prepare_model_config(cfg, attrs)
    device = resolve_device(cfg.device)
    dist_info = init_distributed(device.type)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    run_dir = Path(out)
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier(dist_info)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    opt = torch.optim.AdamW(optimizer_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                            betas=cfg.optim.betas)
    full_ds = MultiCacheDataset(caches, with_targets=not cfg.online_teacher, augment=cfg.data.augment,
                                seed=cfg.seed, scale_range=(cfg.data.scale_low, cfg.data.scale_high),
                                shift_range=cfg.data.shift)
    train_pos, held_pos = split_holdout(len(full_ds), cfg.data.holdout)
    ds = torch.utils.data.Subset(full_ds, train_pos)
    steps_per_epoch = EpochBatchSampler.steps_per_epoch(len(ds), cfg.optim.batch_size)
    if steps_per_epoch == 0:
        raise TrainingError(f"cache has {len(ds)} valid samples, fewer than one batch of {cfg.optim.batch_size}: "
                            "lower --batch-size")
    total = steps_per_epoch * cfg.optim.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(steps_per_epoch * cfg.optim.warmup_epochs, total, cfg.optim.lr, cfg.optim.min_lr))

    step = 0
    last = run_dir / "last.ckpt"
    if resume and last.exists():
        ckpt = load_checkpoint(last)
        saved = ckpt.get("config", {})
        if saved.get("model") != pcfg.to_dict(cfg).get("model"):
            raise TrainingError(f"{last} was trained with another model config; use --no-resume or another --out")
        load_model_state(model, ckpt["model"], what=str(last))
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        step = int(ckpt["step"])
        torch.set_rng_state(ckpt["rng_torch"])
    if dist_info.is_main:
        pcfg.save(cfg, run_dir / "config.yaml")
    teacher = _online_teacher(cfg, attrs, device) if cfg.online_teacher else None
    use_global = cfg.model.use_2d and cfg.model.global_ratio > 0
    norm = None
    if cfg.model.use_2d and (cfg.data.normalize_targets or use_global):
        stats = target_stats(full_ds, cfg.data.normalize_samples)
        norm = {k: v.to(device) for k, v in select_norm(stats, cfg.data.normalize_targets, use_global).items()}
    bank = teacher_bank(full_ds, train_pos, norm, device) if use_global and cfg.model.global_loss == "nce" else None
    held_ds = torch.utils.data.Subset(unaugmented(full_ds), held_pos) if held_pos and cfg.model.use_2d \
        and not cfg.online_teacher else None

    train_model = model
    if cfg.compile and device.type == "cuda":
        train_model = torch.compile(model)
    if dist_info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    log = MetricsLog(run_dir, step, dist_info.is_main)

    def save(tag_epoch: int | None = None):
        if not dist_info.is_main:
            return
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "scaler": None, "step": step, "epoch": step // steps_per_epoch,
                 "rng_torch": torch.get_rng_state(), "config": pcfg.to_dict(cfg),
                 "target_norm": None if norm is None else {k: v.cpu() for k, v in norm.items()},
                 "holdout": held_pos,
                 "cache": {"path": caches[0], "paths": caches, "teacher": attrs["settings"]["teacher"],
                           "teacher_weights_sha256": attrs["settings"]["teacher_weights_sha256"],
                           "data_fingerprints": [a["settings"]["data_fingerprint"] for a in all_attrs]},
                 "i2p_version": __version__}
        save_checkpoint(state, last)
        if tag_epoch is not None and cfg.log.keep_every_epochs and tag_epoch % cfg.log.keep_every_epochs == 0:
            save_checkpoint(state, run_dir / f"epoch-{tag_epoch:04d}.ckpt")

    limit = total if max_steps is None else min(total, max_steps)
    bar = None
    if dist_info.is_main and cfg.log.progress and step < limit:
        from tqdm.auto import tqdm
        bar = tqdm(total=limit, initial=step, unit="step", desc="pretrain", dynamic_ncols=True)
    stopped = False
    try:
        with StopOnSignal() as stop:
            while step < limit and not stopped:
                epoch, start = divmod(step, steps_per_epoch)
                model.train()
                t_prev = time.perf_counter()
                for batch in _make_loader(ds, cfg, epoch, start, dist_info):
                    out_ = forward_batch(train_model, batch, device, cfg.seed, step, teacher, norm, bank=bank,
                                         progress=step / total)
                    loss = out_["loss"]
                    if not torch.isfinite(loss.detach()).all():
                        raise TrainingError(f"loss became {loss.item()} at step {step} (epoch {epoch}); stopped, "
                                            f"last good checkpoint kept at {last}")
                    diag = {}
                    if cfg.log.diag_every_steps and (step + 1) % cfg.log.diag_every_steps == 0 and not dist_info.enabled:
                        diag = encoder_grad_norms(model, out_)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.optim.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                    opt.step()
                    sched.step()
                    step += 1
                    now = time.perf_counter()
                    sps = len(batch["index"]) * dist_info.world / max(now - t_prev, 1e-9)
                    t_prev = now
                    if step % cfg.log.every_steps == 0 or step == limit:
                        vals = mean_across(torch.stack([out_[k].detach().float().reshape(()) for k in LOG_KEYS]),
                                           dist_info).tolist()
                        rec = {"step": step, "epoch": epoch, **dict(zip(LOG_KEYS, vals)),
                               "lr": opt.param_groups[0]["lr"], "samples_per_s": sps, **diag}
                        log.write(rec)
                        if bar is not None:
                            bar.set_postfix(loss=f"{rec['loss']:.4f}", sps=f"{sps:.1f}")
                    if bar is not None:
                        bar.update(1)
                    epoch_end = step % steps_per_epoch == 0
                    # Under torchrun every rank must agree to stop at the same step, or the
                    # ranks that go on would hang in their next all-reduce.
                    stop_now = bool(stop.signal)
                    if dist_info.enabled:
                        stop_now = bool(mean_across(torch.tensor(float(stop_now)), dist_info).item() > 0)
                    if epoch_end or step % cfg.log.ckpt_every_steps == 0 or stop_now or step == limit:
                        save(step // steps_per_epoch if epoch_end else None)
                    if epoch_end and held_ds is not None and dist_info.is_main and cfg.log.r2_every_epochs and \
                            (step // steps_per_epoch) % cfg.log.r2_every_epochs == 0:
                        forward = lambda b: forward_batch(model, b, device, cfg.seed, 0, None, norm,  # noqa: E731
                                                          tag="r2", bank=bank)
                        log.write({"step": step, "epoch": epoch, **heldout_r2(
                            model, held_ds, forward, cfg.optim.batch_size, cfg.model.global_loss == "nce", bank)})
                    if epoch_end and probe_cache and dist_info.is_main and \
                            (step // steps_per_epoch) % cfg.log.probe_every_epochs == 0:
                        log.write({"step": step, "epoch": epoch, **_probe(model, probe_cache, device)})
                    if stop_now or step >= limit:
                        stopped = stop_now
                        break
    finally:
        if bar is not None:
            bar.close()
        log.close()
        shutdown(dist_info)
    return RunResult(run_dir, step, step // steps_per_epoch, stopped)


def _probe(model, probe_cache: str, device: torch.device) -> dict:
    """Monitoring only: 3-fold cross-validated linear-SVM accuracy on a labelled cache."""
    import numpy as np
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    ds = CacheDataset(probe_cache, with_targets=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=0)
    model.eval()
    feats = []
    with torch.no_grad():
        for batch in loader:
            feats.append(model.encode(batch["points"].to(device)).amax(dim=1).float().cpu())
    model.train()
    x, y = torch.cat(feats).numpy(), ds.labels
    folds = int(min(3, np.bincount(y).max()))
    if folds < 2:
        return {}
    clf = make_pipeline(StandardScaler(), LinearSVC(C=0.01, max_iter=5000))
    acc = cross_val_score(clf, x, y, cv=folds).mean()
    return {"probe_svm_acc": float(acc)}
