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

:class:`_Run` holds one run: its constructor sets everything up in the order that makes a
resumed run bit-identical (seed, model, optimiser, data, schedule, restored state, targets),
:meth:`_Run.loop` trains.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from i2p import __version__
from i2p.cache.reader import MultiCacheDataset, open_many_for_training
from i2p.common.checkpoint import load_model_state, save_checkpoint
from i2p.common.device import deterministic_cpu, resolve_device
from i2p.common.errors import UserError
from i2p.common.signals import StopOnSignal
from i2p.stage2_pretrain import config as pcfg
from i2p.stage2_pretrain import ema
from i2p.stage2_pretrain.diagnostics import MetricsLog, encoder_grad_norms, heldout_r2, probe_svm, unaugmented
from i2p.stage2_pretrain.distributed import DistInfo, barrier, init_distributed, mean_across, shutdown
from i2p.stage2_pretrain.model import build_model
from i2p.stage2_pretrain.model.config import ModelConfig
from i2p.stage2_pretrain.model.mae import optimizer_groups
from i2p.stage2_pretrain.model.rng import step_generators
from i2p.stage2_pretrain.online_teacher import online_teacher, teacher_maps
from i2p.stage2_pretrain.run_dir import RunDirLock, newest_intact_checkpoint
from i2p.stage2_pretrain.mixing import epoch_order, split_holdout, training_plan  # noqa: F401 (split_holdout: re-export)
from i2p.stage2_pretrain.sampler import EpochBatchSampler
from i2p.stage2_pretrain.teacher_targets import (apply_norm, bank_keys, principal_basis, select_norm, target_stats,
                                                 teacher_bank)

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


def _make_loader(ds, cfg: pcfg.PretrainConfig, epoch: int, start: int, dist_info: DistInfo, plan: dict):
    ds.dataset.set_epoch(epoch)
    order = epoch_order(plan["sources"], plan["weights"], cfg.seed, epoch) if plan["weights"] else None
    sampler = EpochBatchSampler(plan["epoch_size"], cfg.optim.batch_size, cfg.seed, epoch, start,
                                dist_info.rank, dist_info.world, order=order)
    workers = cfg.data.workers
    # The loader draws its workers' base seed from its own generator, not from the global RNG, so
    # where a run was resumed does not change the global RNG's sequence.
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, generator=gen,
                                       persistent_workers=False, pin_memory=torch.cuda.is_available(),
                                       prefetch_factor=4 if workers > 0 else None)


def make_optimizer(groups: list[dict], lr: float, betas=(0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW, fused (one kernel over all parameters) on CPU and CUDA. Why: the per-tensor loop
    of the default implementation cost 65 ms of a ~250 ms tiny-model step on the CPU (313 ms of
    the paper model's) and the fused one 18 ms (103 ms), and the 2D head holds half the tiny
    model's parameters (benchmarks/RESULTS.md). Same update rule; the last bits of a parameter
    can differ from the per-tensor loop's (measured: <= 7.5e-9 after 3 steps)."""
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = devices <= {"cpu", "cuda"}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused or None)


def forward_batch(train_model, batch: dict, device: torch.device, seed: int, step: int, teacher=None,
                  norm: dict | None = None, tag: str = "step", bank: dict | None = None,
                  progress: float | None = None, teacher_augmented: bool = False) -> dict:
    """One training step's forward, exactly as the loop runs it (the benchmarks call it too):
    one generator per sample seeded by (tag, seed, step, sample) so the draws do not depend on
    how the global batch is split across ranks; cached maps or the online teacher; the maps
    standardised and the global target made as ``norm`` (:func:`select_norm`) says; the 'nce'
    bank's keys; bf16 autocast on CUDA.

    ``teacher_augmented`` (online teacher only, ``data.teacher_sees_augmented``): the batch's
    augmentation is applied to the points first and the teacher renders that cloud, as the
    official runner does (``train_transforms`` before the model, which projects what it gets):
    the network then gets the augmented points as its "original" coordinates and an identity
    augmentation, so grouping, saliency, 2D targets and the 3D targets all live in the
    augmented frame. Ignored without a teacher (cached maps are of the stored cloud)."""
    gen = step_generators(seed, step, batch["index"], tag)
    points = batch["points"].to(device, non_blocking=True)
    scale, shift = batch["scale"].to(device), batch["shift"].to(device)
    if teacher is not None and teacher_augmented:
        points, scale, shift = points * scale + shift, None, None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with autocast:
        if teacher is not None:
            feats, sal, proj = teacher_maps(teacher, points, getattr(teacher, "projection", "sum"))
        elif "features" in batch:
            feats = batch["features"].to(device, non_blocking=True)
            sal = batch["saliency"].to(device, non_blocking=True)
            proj = batch["proj"].to(device, non_blocking=True)
        else:  # a 3D-only model reads the points alone (no teacher maps)
            feats = sal = proj = None
        feats, glob = apply_norm(feats, norm) if feats is not None else (None, None)
        keys = rows = None
        if bank is not None and glob is not None:
            keys, rows = bank_keys(bank, [int(i) for i in batch["index"]], glob)
        return train_model(points, feats, sal, proj, scale, shift, generator=gen, global_target=glob,
                           global_bank=keys, global_rows=rows, progress=progress)


def pretrain(cache: str | list[str], out: str, cfg: pcfg.PretrainConfig, resume: bool = True,
             probe_cache: str | None = None, max_steps: int | None = None) -> RunResult:
    """Train from ``cache`` (one or several caches with the same teacher and settings) into run
    directory ``out``. ``max_steps`` stops early (tests)."""
    caches = [cache] if isinstance(cache, str) else list(cache)
    with deterministic_cpu(resolve_device(cfg.device)):  # bit-identical runs and resumes on the CPU
        return _Run(caches, Path(out), cfg, resume, probe_cache).loop(max_steps)


def _placement(device_name: str) -> tuple[torch.device, DistInfo]:
    """The device and the torchrun process group of this process (one device per rank)."""
    device = resolve_device(device_name)
    dist_info = init_distributed(device.type)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    return device, dist_info


def _same_model(saved: dict | None, cfg: pcfg.PretrainConfig) -> bool:
    """Whether a checkpoint's model config is ``cfg.model``; fields the checkpoint predates
    count with their defaults (a run saved before a field existed resumes as it ran)."""
    if not isinstance(saved, dict):
        return False
    try:
        saved = ModelConfig.from_dict(saved).to_dict()
    except ValueError:
        return False
    return saved == pcfg.to_dict(cfg).get("model")


class _Run:
    """One pre-training run. The constructor's steps are in the order a resumed run must repeat
    (the global torch RNG is seeded, then consumed by the model's initialisation)."""

    def __init__(self, caches: list[str], run_dir: Path, cfg: pcfg.PretrainConfig, resume: bool,
                 probe_cache: str | None):
        self.caches, self.run_dir, self.probe_cache = caches, run_dir, probe_cache
        self.all_attrs = open_many_for_training(caches, None if cfg.data.sampling == "official" else cfg.data.points)
        self.attrs = self.all_attrs[0]
        self.cfg = cfg = pcfg.fit_to_cache(cfg, self.attrs["settings"])
        self.device, self.dist = _placement(cfg.device)
        self.lock = None
        if self.dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.lock = RunDirLock(run_dir).acquire()  # a second run on this directory stops here
        barrier(self.dist)
        try:
            self._setup(resume)
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def _setup(self, resume: bool) -> None:
        cfg, run_dir = self.cfg, self.run_dir
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model).to(self.device)
        self.opt = make_optimizer(optimizer_groups(self.model, cfg.optim.weight_decay, cfg.optim.decay_exempt),
                                  lr=cfg.optim.lr, betas=cfg.optim.betas)
        self.ema = ema.start(self.model, cfg.optim.ema_decay)
        self._open_data()
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, pcfg.lr_factor(cfg.optim, self.steps_per_epoch))
        self.last = run_dir / "last.ckpt"
        self.step = self._restore() if resume else 0
        if self.dist.is_main:
            pcfg.save(cfg, run_dir / "config.yaml")
        self._prepare_targets()
        self.train_model = self._wrap(self.model)
        self.log = MetricsLog(run_dir, self.step, self.dist.is_main)
        if self.target_variance_kept is not None:  # how much of the teacher the 2D targets keep
            self.log.write({"step": self.step, "target_dims": self.cfg.model.target_dims,
                            "target_variance_kept": round(self.target_variance_kept, 4)})

    # ------------------------------------------------------------------ set-up steps
    def _open_data(self) -> None:
        cfg = self.cfg
        # A 3D-only objective reads no teacher maps: only the points and their augmentation.
        targets = not cfg.online_teacher and cfg.model.use_2d
        self.full_ds = MultiCacheDataset(self.caches, with_targets=targets, augment=cfg.data.augment,
                                         seed=cfg.seed, scale_range=(cfg.data.scale_low, cfg.data.scale_high),
                                         shift_range=cfg.data.shift, sampling=cfg.data.sampling,
                                         draw=cfg.data.points if cfg.data.sampling == "official" else None,
                                         aug_renders=cfg.data.aug_renders)
        try:
            self.plan = training_plan(self.full_ds, cfg.data, cfg.seed)
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        self.train_pos, self.held_pos = self.plan["train_pos"], self.plan["held_pos"]
        self.ds = torch.utils.data.Subset(self.full_ds, self.train_pos)
        self.steps_per_epoch = EpochBatchSampler.steps_per_epoch(self.plan["epoch_size"], cfg.optim.batch_size)
        if self.steps_per_epoch == 0:
            raise TrainingError(f"an epoch holds {self.plan['epoch_size']} training samples, fewer than one batch "
                                f"of {cfg.optim.batch_size}: lower --batch-size")
        self.total = self.steps_per_epoch * cfg.optim.epochs

    def _restore(self) -> int:
        """Load the newest intact checkpoint (``last.ckpt``, else ``last.ckpt.prev`` or an
        ``epoch-*.ckpt``, with a warning; same model config only); returns its step (0: none)."""
        found = newest_intact_checkpoint(self.run_dir)
        if found is None:
            return 0
        path, ckpt = found
        if not _same_model(ckpt.get("config", {}).get("model"), self.cfg):
            raise TrainingError(f"{path} was trained with another model config; use --no-resume or another --out")
        load_model_state(self.model, ckpt["model"], what=str(self.last))
        if self.ema is not None:
            self.ema = ema.resume(self.model, self.ema.decay, ckpt.get("model_ema"))
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng_torch"])
        return int(ckpt["step"])

    def _prepare_targets(self) -> None:
        """The online teacher (if any), the target statistics, the 'nce' bank, the held-out set."""
        cfg, device = self.cfg, self.device
        self.teacher = online_teacher(cfg, self.attrs, device) if cfg.online_teacher else None
        use_global = cfg.model.use_2d and cfg.model.global_ratio > 0
        self.norm, self.target_variance_kept = None, None
        fit_basis = cfg.model.use_2d and not self.model.has_target_basis
        if cfg.model.use_2d and (cfg.data.normalize_targets or use_global or fit_basis):
            stats = target_stats(self.full_ds, cfg.data.normalize_samples, self.plan["weights"])
            sel = select_norm(stats, cfg.data.normalize_targets, use_global)
            self.norm = None if sel is None else {k: v.to(device) for k, v in sel.items()}
            if fit_basis:  # a resumed run keeps the basis its checkpoint holds
                basis, self.target_variance_kept = principal_basis(
                    self.full_ds, cfg.data.normalize_samples, cfg.model.target_dims, stats["mean"],
                    stats["std"] if cfg.data.normalize_targets else None, cfg.model.image_size, self.plan["weights"])
                self.model.set_target_basis(basis)
        self.bank = teacher_bank(self.full_ds, self.train_pos, self.norm, device) \
            if use_global and cfg.model.global_loss == "nce" else None
        self.held_ds = torch.utils.data.Subset(unaugmented(self.full_ds), self.held_pos) \
            if self.held_pos and cfg.model.use_2d and not cfg.online_teacher else None

    def _wrap(self, model):
        """The module the steps run: compiled on CUDA when asked, DDP under torchrun."""
        if self.cfg.compile and self.device.type == "cuda":
            model = torch.compile(model)
        if self.dist.enabled:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return model

    # ------------------------------------------------------------------ checkpoints
    def save(self, tag_epoch: int | None = None) -> None:
        """``last.ckpt`` (rank 0), plus ``epoch-NNNN.ckpt`` every ``log.keep_every_epochs``."""
        if not self.dist.is_main:
            return
        cfg, s = self.cfg, self.attrs["settings"]
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "scaler": None, "step": self.step,
                 "epoch": self.step // self.steps_per_epoch, "rng_torch": torch.get_rng_state(),
                 "config": pcfg.to_dict(cfg),
                 "target_norm": None if self.norm is None else {k: v.cpu() for k, v in self.norm.items()},
                 "holdout": self.held_pos,
                 "cache": {"path": self.caches[0], "paths": self.caches, "teacher": s["teacher"],
                           "teacher_weights_sha256": s["teacher_weights_sha256"],
                           "data_fingerprints": [a["settings"]["data_fingerprint"] for a in self.all_attrs],
                           "train_samples": len(self.train_pos), "epoch_samples": self.plan["epoch_size"]},
                 "i2p_version": __version__}
        if self.ema is not None:  # what the evaluation reads (``checkpoint.trained_weights``)
            state["model_ema"] = self.ema.state_dict()
        try:
            save_checkpoint(state, self.last, keep_previous=True)
            if tag_epoch is not None and cfg.log.keep_every_epochs and tag_epoch % cfg.log.keep_every_epochs == 0:
                save_checkpoint(state, self.run_dir / f"epoch-{tag_epoch:04d}.ckpt")
        except OSError as exc:  # disk full, quota, I/O error: the previous checkpoint is untouched
            raise TrainingError(f"cannot write the checkpoint of step {self.step} in {self.run_dir} "
                                f"({exc.strerror or exc}); the previous checkpoint is intact: free space and "
                                "re-run the same command to resume") from None

    # ------------------------------------------------------------------ the loop
    def loop(self, max_steps: int | None = None) -> RunResult:
        limit = self.total if max_steps is None else min(self.total, max_steps)
        bar = None
        if self.dist.is_main and self.cfg.log.progress and self.step < limit:
            from tqdm.auto import tqdm
            bar = tqdm(total=limit, initial=self.step, unit="step", desc="pretrain", dynamic_ncols=True)
        stopped = False
        try:
            with StopOnSignal() as stop:
                while self.step < limit and not stopped:
                    stopped = self._epoch(limit, stop, bar)
        finally:
            if bar is not None:
                bar.close()
            self.log.close()
            # DDP's reducer holds the process group: dropped only after destroy_process_group, its
            # gloo group was torn down when the peer had already exited and the join could hang
            self.train_model = self.model
            shutdown(self.dist)
            if self.lock is not None:
                self.lock.release()
        return RunResult(self.run_dir, self.step, self.step // self.steps_per_epoch, stopped)

    def _epoch(self, limit: int, stop: StopOnSignal, bar) -> bool:
        """Train from the current step to the end of its epoch, ``limit`` or a stop signal;
        True when a signal stopped it."""
        epoch, start = divmod(self.step, self.steps_per_epoch)
        self.model.train()
        t_prev = time.perf_counter()
        for batch in _make_loader(self.ds, self.cfg, epoch, start, self.dist, self.plan):
            out, diag = self._train_step(batch, epoch)
            now = time.perf_counter()
            sps = len(batch["index"]) * self.dist.world / max(now - t_prev, 1e-9)
            t_prev = now
            self._log_step(out, diag, epoch, sps, limit, bar)
            # Under torchrun every rank must agree to stop at the same step, or the ranks that
            # go on would hang in their next all-reduce.
            stop_now = bool(stop.signal)
            if self.dist.enabled:
                stop_now = bool(mean_across(torch.tensor(float(stop_now)), self.dist).item() > 0)
            self._after_step(epoch, stop_now, limit)
            if stop_now or self.step >= limit:
                return stop_now
        return False

    def _train_step(self, batch: dict, epoch: int) -> tuple[dict, dict]:
        """Forward, checks, backward, optimiser and schedule step; the step counter moves on."""
        cfg = self.cfg
        out = forward_batch(self.train_model, batch, self.device, cfg.seed, self.step, self.teacher, self.norm,
                            bank=self.bank, progress=self.step / self.total,
                            teacher_augmented=cfg.data.teacher_sees_augmented)
        loss = out["loss"]
        if not torch.isfinite(loss.detach()).all():
            raise TrainingError(f"loss became {loss.item()} at step {self.step} (epoch {epoch}); stopped, "
                                f"last good checkpoint kept at {self.last}")
        diag = {}
        if cfg.log.diag_every_steps and (self.step + 1) % cfg.log.diag_every_steps == 0 and not self.dist.enabled:
            diag = encoder_grad_norms(self.model, out)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.opt.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.sched.step()
        self.step += 1
        return out, diag

    def _log_step(self, out: dict, diag: dict, epoch: int, sps: float, limit: int, bar) -> None:
        if self.step % self.cfg.log.every_steps == 0 or self.step == limit:
            vals = mean_across(torch.stack([out[k].detach().float().reshape(()) for k in LOG_KEYS]),
                               self.dist).tolist()
            rec = {"step": self.step, "epoch": epoch, **dict(zip(LOG_KEYS, vals)),
                   "lr": self.opt.param_groups[0]["lr"], "samples_per_s": sps, **diag}
            self.log.write(rec)
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.4f}", sps=f"{sps:.1f}")
        if bar is not None:
            bar.update(1)

    def _after_step(self, epoch: int, stop_now: bool, limit: int) -> None:
        """Checkpoint when due; at an epoch's end (rank 0) the held-out R2 and the probe."""
        log = self.cfg.log
        epoch_end = self.step % self.steps_per_epoch == 0
        epochs_done = self.step // self.steps_per_epoch
        if epoch_end or self.step % log.ckpt_every_steps == 0 or stop_now or self.step == limit:
            self.save(epochs_done if epoch_end else None)
        if not (epoch_end and self.dist.is_main):
            return
        if self.held_ds is not None and log.r2_every_epochs and epochs_done % log.r2_every_epochs == 0:
            forward = lambda b: forward_batch(self.model, b, self.device, self.cfg.seed, 0, None,  # noqa: E731
                                              self.norm, tag="r2", bank=self.bank)
            self.log.write({"step": self.step, "epoch": epoch, **heldout_r2(
                self.model, self.held_ds, forward, self.cfg.optim.batch_size, self.cfg.model.global_loss == "nce",
                self.bank)})
        if self.probe_cache and epochs_done % log.probe_every_epochs == 0:
            probe = probe_svm(ema.evaluated(self.model, self.ema), self.probe_cache, self.device)
            self.log.write({"step": self.step, "epoch": epoch, **probe})
