"""The fine-tuning loop (:func:`train`), resumable bit for bit on the CPU.

Kill ``i2p eval finetune`` anywhere (SIGKILL, a lost node, a full disk) and run the same command
again: every step's loss, the selected epoch and the test result equal those of a run that was
never interrupted (issue 15). What that takes, and where each piece is kept:

* model, AdamW state, BatchNorm statistics: ``OUT/last.ckpt``, written at every epoch's end (and,
  on SIGTERM/SIGUSR1, after the step in progress) atomically, the one it replaces kept as
  ``last.ckpt.prev``. A resume takes the newest intact one (with a warning when that is not
  ``last.ckpt``); a checkpoint whose unpickling would run code is refused (``weights_only``).
* the learning rate: a pure function of (epoch, step), set before every step; the data order a
  permutation seeded by (seed, epoch); the official point draw seeded by (seed, epoch, step).
* the random streams an epoch consumes, the global torch RNG (dropout, drop path) and the
  augmentation generator: re-seeded by (seed, epoch) at each epoch's start; a mid-epoch
  checkpoint saves their states, so a resume inside an epoch continues both.
* the selection (best score, its epoch, its weights, the history): in ``last.ckpt`` as well, so
  the selected model does not depend on whether ``best.ckpt`` was written before a kill;
  ``best.ckpt`` is made to agree with it before :func:`train` returns.
* the kernels: the caller runs this inside :func:`i2p.common.device.deterministic_cpu`. Without
  it two uninterrupted runs on a busy 2-core machine differed from the second epoch on (the
  backward of the encoder's gathers adds with atomics in thread order).

Per-step losses go to ``OUT/metrics.jsonl`` (lines past the checkpoint are dropped on resume, so
it reads as one uninterrupted run); each epoch adds a line with its mean loss and accuracies.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from i2p.common.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from i2p.common.errors import UserError
from i2p.common.geometry import stable_seed
from i2p.common.signals import StopOnSignal, StoppedBySignal
from i2p.stage2_pretrain.diagnostics import MetricsLog
from i2p.stage2_pretrain.run_dir import newest_intact_checkpoint
from i2p.stage3_eval import finetune_presets as fp
from i2p.stage3_eval.finetune import SELECT, Classifier, predict


def train(clf: Classifier, data: dict, out: Path, *, epochs: int, batch_size: int, lr: float,
          weight_decay: float, warmup: int, smoothing: float, select_on: str, seed: int, device,
          settings: dict, resume: bool = True, progress: bool = True, recipe=None,
          sample_points: int | None = None) -> dict:
    """Train ``clf`` on ``data['train']`` = (pts, labels); select on val/test/last.
    Returns the state (``epoch``, ``best``, ``best_epoch``, ``history``) and leaves the selected
    weights loaded in ``clf``. ``recipe`` (:class:`finetune_presets.FinetuneRecipe`) adds the
    loss, schedule, gradient clipping, augmentation it names; None = i2p's. ``sample_points``:
    each step draws that many points of every training cloud (the official draw from an FPS
    pool); None = all. Raises :class:`~i2p.common.signals.StoppedBySignal` after saving when
    SIGTERM/SIGUSR1 arrived."""
    if select_on not in SELECT:
        raise UserError(f"--select-on must be one of {', '.join(SELECT)} (got {select_on!r})")
    loop = _Loop(clf, data, Path(out), epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                 warmup=warmup, smoothing=smoothing, select_on=select_on, seed=seed, device=device,
                 settings=settings, progress=progress, recipe=recipe or fp.DEFAULT, sample_points=sample_points)
    if resume:
        loop.restore()
    return loop.run()


class _Loop:
    """One fine-tuning run: ``state`` (completed epochs, selection, history) plus the position
    inside the current epoch (``pos`` steps done, their losses)."""

    def __init__(self, clf: Classifier, data: dict, out: Path, *, epochs: int, batch_size: int, lr: float,
                 weight_decay: float, warmup: int, smoothing: float, select_on: str, seed: int, device,
                 settings: dict, progress: bool, recipe: fp.FinetuneRecipe, sample_points: int | None):
        self.clf, self.data, self.out, self.settings = clf, data, out, settings
        self.epochs, self.bs, self.select_on, self.seed, self.progress = epochs, batch_size, select_on, seed, progress
        self.device, self.recipe = torch.device(device), recipe
        self.Xtr, self.ytr = data["train"]
        self.steps = math.ceil(len(self.ytr) / batch_size)
        # The paper warms up 10 of 300 epochs; a short run keeps that proportion (at least one
        # epoch) instead of ending before its learning rate ever reaches the base value.
        if recipe.schedule == "i2p":
            warmup = min(warmup, max(1, epochs // 10))
        self.step_fn = fp.StepRecipe(recipe, self.steps, epochs, warmup, lr, smoothing, sample_points)
        clf.to(self.device)  # before the optimiser loads its state: that state follows the parameters' device
        self.opt = torch.optim.AdamW(fp.param_groups(clf, weight_decay, recipe), lr=lr, weight_decay=weight_decay)
        self.state = {"epoch": 0, "best": -1.0, "best_epoch": None, "history": []}
        self.pos, self.epoch_losses, self.best_sd, self.rng = 0, [], None, None
        self.last = out / "last.ckpt"

    def restore(self) -> None:
        """Continue from the newest intact checkpoint of ``out`` (none: start afresh)."""
        found = newest_intact_checkpoint(self.out)
        if found is None:
            return
        path, ck = found
        if ck.get("config", {}).get("finetune") != self.settings:
            raise UserError(f"{path} belongs to a fine-tune run with other settings; use another --out "
                            "or --no-resume")
        load_model_state(self.clf, ck["model"], what=f"resumed fine-tune {path}")
        self.opt.load_state_dict(ck["optimizer"])
        self.state = {k: ck[k] for k in self.state}
        self.pos, self.epoch_losses = int(ck.get("pos", 0)), list(ck.get("epoch_losses", []))
        self.rng = ck.get("rng") if self.pos else None
        self.best_sd = ck.get("best_model")
        best = self.out / "best.ckpt"
        if self.best_sd is None and self.state["best_epoch"] and best.is_file():  # written before issue 15
            self.best_sd = load_checkpoint(best)["model"]

    def run(self) -> dict:
        self.log = MetricsLog(self.out, self.state["epoch"] * self.steps + self.pos, True, tensorboard=False)
        try:
            with StopOnSignal() as stop:
                for epoch in range(self.state["epoch"], self.epochs):
                    self._epoch(epoch, stop)
        finally:
            self.log.close()
        self._sync_best()
        if self.best_sd is not None:
            load_model_state(self.clf, self.best_sd, what="selected fine-tune weights")
        return self.state

    def _epoch(self, epoch: int, stop: StopOnSignal) -> None:
        from tqdm.auto import tqdm

        self.clf.train()
        torch.manual_seed(stable_seed(self.seed, "dropout", epoch))
        gen = torch.Generator().manual_seed(stable_seed(self.seed, "aug", epoch))
        if self.rng is not None:  # resumed inside this epoch: continue its random streams
            torch.set_rng_state(self.rng["torch"])
            gen.set_state(self.rng["aug"])
            if self.rng.get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(self.rng["cuda"], self.device)
            self.rng = None
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.ytr))
        for j in tqdm(range(self.pos, self.steps), desc=f"epoch {epoch + 1}/{self.epochs}", initial=self.pos,
                      total=self.steps, disable=not self.progress, leave=False):
            self._step(epoch, j, order[j * self.bs:(j + 1) * self.bs], gen)
            self.pos = j + 1
            if stop.signal and self.pos < self.steps:
                self._save(gen)
                raise StoppedBySignal(self._stop_line(stop))
        improved = self._select(epoch)
        self._save()
        if improved:
            self._save_best()
        if stop.signal and epoch + 1 < self.epochs:
            raise StoppedBySignal(self._stop_line(stop))

    def _step(self, epoch: int, j: int, idx: np.ndarray, gen: torch.Generator) -> None:
        if len(idx) < 2:  # BatchNorm needs 2 samples: drop a last batch of one
            return
        lr = self.step_fn.lr(epoch, j)
        for g in self.opt.param_groups:
            g["lr"] = lr
        x = self.step_fn.batch(self.Xtr[idx], gen, (self.seed, epoch, j)).to(self.device)
        loss = self.step_fn.loss(self.clf(x), torch.from_numpy(self.ytr[idx]).to(self.device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.recipe.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.clf.parameters(), self.recipe.grad_clip)
        self.opt.step()
        self.epoch_losses.append(loss.item())
        self.log.write({"step": epoch * self.steps + j + 1, "epoch": epoch + 1, "loss": self.epoch_losses[-1],
                        "lr": lr})

    def _select(self, epoch: int) -> bool:
        """The epoch's row (mean loss, accuracies), the selection; True when it is the new best."""
        row = {"epoch": epoch + 1, "loss": float(np.mean(self.epoch_losses)) if self.epoch_losses else None}
        sel_part = {"val": "val", "test": "test"}.get(self.select_on)
        for part in ("val", "test") if self.select_on == "test" else ("val",):
            if part in self.data:
                Xp, yp = self.data[part]
                row[f"{part}_accuracy"] = float(np.mean(predict(self.clf, Xp, self.bs, self.device).argmax(1) == yp))
        score = row.get(f"{sel_part}_accuracy", 0.0) if sel_part else float(epoch)
        improved = score > self.state["best"]
        if improved:
            self.state["best"], self.state["best_epoch"] = score, epoch + 1
            self.best_sd = {k: v.detach().cpu().clone() for k, v in self.clf.state_dict().items()}
        self.state["history"].append(row)
        self.state["epoch"], self.pos, self.epoch_losses = epoch + 1, 0, []
        self.log.write({"step": (epoch + 1) * self.steps, **{k: v for k, v in row.items() if k != "loss"},
                        "mean_loss": row["loss"]})
        return improved

    def _save(self, gen: torch.Generator | None = None) -> None:
        """``last.ckpt``: everything a resume needs, the selected weights included (sharing the
        model's storage when the best epoch is the one just finished: saved once)."""
        model_sd = self.clf.state_dict()
        current_is_best = self.pos == 0 and self.state["best_epoch"] == self.state["epoch"]
        rng = None
        if gen is not None:
            rng = {"torch": torch.get_rng_state(), "aug": gen.get_state(),
                   "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        ck = {"model": model_sd, "optimizer": self.opt.state_dict(), "config": {"finetune": self.settings},
              **self.state, "pos": self.pos, "step": self.state["epoch"] * self.steps + self.pos,
              "epoch_losses": list(self.epoch_losses), "rng": rng,
              "best_model": model_sd if current_is_best else self.best_sd}
        self._write(ck, self.last, keep_previous=True)

    def _save_best(self) -> None:
        self._write({"model": self.best_sd, "config": {"finetune": self.settings}, "epoch": self.state["best_epoch"]},
                    self.out / "best.ckpt")

    def _sync_best(self) -> None:
        """``best.ckpt`` holds the selected epoch (a kill between ``last.ckpt`` and it, redone)."""
        if self.best_sd is None:
            return
        try:
            if load_checkpoint(self.out / "best.ckpt").get("epoch") == self.state["best_epoch"]:
                return
        except CheckpointError:
            pass
        self._save_best()

    def _write(self, ck: dict, path: Path, keep_previous: bool = False) -> None:
        try:
            save_checkpoint(ck, path, keep_previous=keep_previous)
        except OSError as exc:  # disk full, quota, I/O error: the previous checkpoint is untouched
            step = self.state["epoch"] * self.steps + self.pos
            raise UserError(f"cannot write {path.name} of step {step} in {self.out} ({exc.strerror or exc}); the "
                            "previous checkpoint is intact: free space and re-run the same command to resume") from None

    def _stop_line(self, stop: StopOnSignal) -> str:
        done = self.state["epoch"] * self.steps + self.pos
        return (f"fine-tune stopped by {stop.name} after step {done} of {self.epochs * self.steps}; checkpoint "
                f"{self.last} (re-run the same command to resume)")
