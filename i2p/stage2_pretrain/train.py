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
from i2p.cluster.signals import StopOnSignal
from i2p.common.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from i2p.common.device import resolve_device
from i2p.common.errors import UserError
from i2p.common.geometry import stable_seed
from i2p.stage2_pretrain import config as pcfg
from i2p.stage2_pretrain.distributed import DistInfo, barrier, init_distributed, mean_across, shutdown
from i2p.stage2_pretrain.model import build_model
from i2p.stage2_pretrain.model.mae import optimizer_groups
from i2p.stage2_pretrain.sampler import EpochBatchSampler

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


def target_stats(ds: MultiCacheDataset, samples: int) -> dict[str, torch.Tensor]:
    """Per-channel mean and std of the cached teacher features over the first valid samples of
    each cache (``samples`` in all, split evenly; all views and pixels), and of the per-sample
    global target (:func:`global_target`). Deterministic: every rank and every resume gets
    the same numbers. Back-projection is linear with weights summing to 1, so standardising
    the maps equals standardising the targets."""
    total = sq = None
    pooled = []
    count = 0
    for part in ds.parts:
        root = part._arrays()
        idx = part.indices[:max(1, samples // len(ds.parts))]
        for start in range(0, len(idx), 32):
            block = torch.from_numpy(root["features"].get_orthogonal_selection(idx[start:start + 32])).double()
            pooled.append(global_target(block))
            block = block.reshape(-1, block.shape[-1])
            total = block.sum(0) if total is None else total + block.sum(0)
            sq = (block ** 2).sum(0) if sq is None else sq + (block ** 2).sum(0)
            count += block.shape[0]
    mean = total / count
    std = (sq / count - mean ** 2).clamp_min(0).sqrt().clamp_min(1e-6)
    pooled = torch.cat(pooled)
    return {"mean": mean.float(), "std": std.float(), "global_mean": pooled.mean(0).float(),
            "global_std": pooled.std(0, unbiased=False).clamp_min(1e-6).float()}


def _online_teacher(cfg: pcfg.PretrainConfig, attrs: dict, device: torch.device):
    from i2p.stage1_project.teachers import create_teacher, teacher_fingerprint

    s = attrs["settings"]
    if s.get("denoise"):
        raise TrainingError("--online-teacher cannot reproduce a cache built with --denoise (its targets average "
                            "several jittered renders); train from the cache")
    weights = cfg.teacher_weights or ("random" if s["teacher_random"] else None)
    teacher = create_teacher(s["teacher"], weights=weights, device=device)
    fp = teacher_fingerprint(teacher)
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


def global_target(features: torch.Tensor) -> torch.Tensor:
    """``[B, V, h, w, C]`` teacher maps -> ``[B, V*C]``: each view's mean-pooled feature, views
    side by side. Chosen by 5-fold CV on SHREC'16 train (linear SVM on the teacher's own
    pooled features): per-view mean 75%, per-view max 73%, max over everything 57%."""
    return features.float().mean(dim=(2, 3)).flatten(1)


def teacher_bank(ds: MultiCacheDataset, positions: list[int], norm: dict, device: torch.device) -> dict:
    """The standardised global teacher feature of every training shape (the negatives and
    positives of the 'nce' global term): ``{"emb": [M, V*C], "row": {sample index: row}}``.
    Read once, 32 samples per read; the same on every rank and every resume."""
    import bisect

    by_part: dict[int, list[int]] = {}
    for pos in positions:
        part_i = bisect.bisect_right(ds.cumulative_sizes, pos)
        start = ds.cumulative_sizes[part_i - 1] if part_i else 0
        by_part.setdefault(part_i, []).append(pos - start)
    embs, row = [], {}
    for part_i, ks in by_part.items():
        part = ds.parts[part_i]
        idx = [int(part.indices[k]) for k in ks]
        for start in range(0, len(idx), 32):
            chunk = idx[start:start + 32]
            block = torch.from_numpy(part._arrays()["features"].get_orthogonal_selection(chunk))
            embs.append((global_target(block).to(device) - norm["global_mean"]) / norm["global_std"])
            for i in chunk:
                row[i + part.index_offset] = len(row)
    return {"emb": torch.cat(embs), "row": row}


def forward_batch(train_model, batch: dict, device: torch.device, seed: int, step: int, teacher=None,
                  norm: dict | None = None, normalize_maps: bool = True, tag: str = "step",
                  bank: dict | None = None) -> dict:
    """One training step's forward, exactly as the loop runs it (the benchmarks call it too):
    one generator per sample seeded by (seed, step, sample) so the draws do not depend on how
    the global batch is split across ranks; cached maps or the online teacher; the global
    target (max-pooled raw features, standardised); per-channel target standardisation of the
    maps (``normalize_maps``); bf16 autocast on CUDA. ``norm`` is :func:`target_stats`."""
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
        glob = None
        if norm is not None:
            glob = (global_target(feats) - norm["global_mean"]) / norm["global_std"]
            if normalize_maps:
                feats = (feats.float() - norm["mean"]) / norm["std"]
        keys = rows = None
        if bank is not None and glob is not None:
            # samples outside the bank (held-out ones) bring their own feature as the positive
            idx = [int(i) for i in batch["index"]]
            extra = [j for j, i in enumerate(idx) if i not in bank["row"]]
            keys = torch.cat([bank["emb"], glob[extra]]) if extra else bank["emb"]
            m = len(bank["emb"])
            pos = {j: m + n for n, j in enumerate(extra)}
            rows = torch.tensor([bank["row"][i] if i in bank["row"] else pos[j] for j, i in enumerate(idx)],
                                device=device)
        return train_model(points, feats, sal, proj, batch["scale"].to(device), batch["shift"].to(device),
                           generator=gen, global_target=glob, global_bank=keys, global_rows=rows)


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
    if teacher is not None:
        teacher.projection = attrs["settings"].get("projection", "sum")
    norm = None
    if cfg.model.use_2d:
        norm = {k: v.to(device) for k, v in target_stats(full_ds, cfg.data.normalize_samples).items()}
    bank = None
    if norm is not None and cfg.model.global_ratio > 0 and cfg.model.global_loss == "nce":
        bank = teacher_bank(full_ds, train_pos, norm, device)
    held_ds = torch.utils.data.Subset(_unaugmented(full_ds), held_pos) if held_pos and cfg.model.use_2d \
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
                 "target_norm": None if norm is None else {
                     **{k: v.cpu() for k, v in norm.items()}, "maps_standardised": cfg.data.normalize_targets},
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
                    out_ = forward_batch(train_model, batch, device, cfg.seed, step, teacher, norm,
                                         cfg.data.normalize_targets, bank=bank)
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
                        log.write({"step": step, "epoch": epoch,
                                   **heldout_r2(model, held_ds, device, cfg, norm, bank)})
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


def _unaugmented(full_ds):
    """The held-out samples are read without augmentation: R2 is measured in the cache's frame."""
    import copy

    plain = copy.copy(full_ds)
    plain.parts = [copy.copy(p) for p in full_ds.parts]
    for p in plain.parts:
        p.augment = False
    plain.datasets = plain.parts
    return plain


def encoder_grad_norms(model, out: dict) -> dict:
    """Diagnostic: the gradient norm that each weighted loss term sends into the encoder's
    parameters (two or three extra backward passes; the step's own backward is unchanged)."""
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    terms = {"3d": out["loss_3d"], "2d": out["w_2d"] * out["loss_2d"], "global": out["w_global"] * out["loss_global"]}
    res = {}
    for name, term in terms.items():
        if not term.requires_grad:
            continue
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        res[f"enc_grad_{name}"] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
    if res.get("enc_grad_3d"):
        for name in ("2d", "global"):
            if f"enc_grad_{name}" in res:
                res[f"enc_grad_ratio_{name}"] = res[f"enc_grad_{name}"] / res["enc_grad_3d"]
    return res


@torch.no_grad()
def heldout_r2(model, held_ds, device: torch.device, cfg: pcfg.PretrainConfig, norm: dict | None,
               bank: dict | None = None) -> dict:
    """Share of the 2D targets' variance that the 2D head explains on held-out samples
    (visible tokens, masks drawn as in training from fixed generators; eval mode), and the
    same for an 'mse' global term; for an 'nce' one, the share of held-out shapes whose
    student feature picks their own teacher feature among the bank's and the held-out ones
    (``heldout_top1_global``). Near 0: the head learns nothing that generalises."""
    was = model.training
    model.eval()
    acc: dict[str, list] = {}
    try:
        loader = torch.utils.data.DataLoader(held_ds, batch_size=cfg.optim.batch_size, num_workers=0)
        for batch in loader:
            out = forward_batch(model, batch, device, cfg.seed, 0, None, norm, cfg.data.normalize_targets, tag="r2",
                                bank=bank)
            for key in ("2d", "global"):
                if f"pred_{key}" in out:
                    acc.setdefault(key, []).append((out[f"pred_{key}"].double().cpu(), out[f"target_{key}"].double().cpu()))
    finally:
        model.train(was)
    res = {}
    if cfg.model.global_loss == "nce" and "global" in acc:
        pairs = acc.pop("global")
        pred = torch.nn.functional.normalize(torch.cat([p for p, _ in pairs]), dim=-1)
        own = torch.cat([t for _, t in pairs])
        keys = own if bank is None else torch.cat([bank["emb"].double().cpu(), own])
        hits = (pred @ torch.nn.functional.normalize(keys, dim=-1).T).argmax(dim=1)
        res["heldout_top1_global"] = float((hits == torch.arange(len(own)) + len(keys) - len(own)).double().mean())
    for key, pairs in acc.items():
        pred = torch.cat([p.reshape(-1, p.shape[-1]) for p, _ in pairs])
        tgt = torch.cat([t.reshape(-1, t.shape[-1]) for _, t in pairs])
        sst = ((tgt - tgt.mean(0)) ** 2).sum()
        res[f"heldout_r2_{key}"] = float(1 - ((pred - tgt) ** 2).sum() / sst.clamp_min(1e-12))
    return res


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
