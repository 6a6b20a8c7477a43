"""Training and prediction for part segmentation: recipes, the epoch loop, resume, selection.

Recipes (:class:`PartsegRecipe`): ``default`` (i2p's, CPU-sized head, per-step warm-up +
cosine) and ``paper``, Point-M2AE's published ShapeNetPart recipe (its segmentation/main.py):
300 epochs, batch 16, 2048 points, AdamW lr 2e-4 weight decay 0.05 (none on biases and 1-D
parameters), timm cosine stepped per epoch (10 warm-up epochs from 1e-6, floor 1e-6), gradient
clipping at 10, augmentation by a random isotropic scale U[0.8, 1.25] and shift U[-0.1, 0.1]
per cloud, the full-size head (:meth:`SegHeadConfig.paper`) and local attention radii
0.32/0.64/1.28. Two departures, both on purpose: the official loop trains on train+val and
keeps the best epoch on TEST; here it trains on train and selects on val (the test split is
scored once, by the selected weights). Its second ``optimizer.step()`` per batch (a quirk of
that loop, which re-applies the same gradients after clipping) is not reproduced.

Resumable like fine-tuning: ``OUT/last.ckpt`` after every epoch, ``OUT/best.ckpt`` for the
selected weights; every random draw comes from ``(seed, epoch, step)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from i2p.common.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from i2p.common.errors import UserError
from i2p.common.geometry import stable_seed
from i2p.common.schedules import official_epoch_lr, warmup_cosine
from i2p.stage3_eval.partseg_metrics import partseg_metrics, predict_in_category
from i2p.stage3_eval.partseg_model import SegHeadConfig


@dataclass(frozen=True)
class PartsegRecipe:
    name: str = "default"
    epochs: int = 100
    batch_size: int = 16
    points: int = 2048
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: int = 10
    schedule: str = "i2p"  # 'i2p': per-step warm-up + cosine; 'official': timm, per epoch
    grad_clip: float = 10.0
    scale: tuple[float, float] = (0.8, 1.25)
    shift: float = 0.1
    local_radii: tuple[float, ...] = (0.32, 0.64, 1.28)
    head: SegHeadConfig = field(default_factory=SegHeadConfig)
    arch: str = "tiny"  # architecture of --ckpt random

    def settings(self) -> dict:
        d = dataclasses.asdict(self)
        d["head"] = self.head.to_dict()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


DEFAULT = PartsegRecipe()
PAPER = PartsegRecipe(name="paper", epochs=300, batch_size=16, points=2048, lr=2e-4, weight_decay=0.05,
                      warmup=10, schedule="official", grad_clip=10.0, head=SegHeadConfig.paper(), arch="paper")
RECIPES = {"default": DEFAULT, "paper": PAPER}


def resolve(name: str, **overrides) -> PartsegRecipe:
    """The named recipe with every override that is not None applied."""
    if name not in RECIPES:
        raise UserError(f"unknown part-segmentation preset {name!r}: choose one of {', '.join(RECIPES)}")
    return dataclasses.replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})


def epoch_lr(rc: PartsegRecipe, epoch: int, step: int, steps_per_epoch: int) -> float:
    if rc.schedule == "official":
        return official_epoch_lr(epoch, rc.epochs, rc.warmup, rc.lr)
    warm = min(rc.warmup, max(1, rc.epochs // 10)) * steps_per_epoch  # short runs keep the proportion
    return warmup_cosine(epoch * steps_per_epoch + step, rc.epochs * steps_per_epoch, warm, rc.lr)


def augment(points: torch.Tensor, rc: PartsegRecipe, gen: torch.Generator) -> torch.Tensor:
    b = points.shape[0]
    scale = torch.empty(b, 1, 1).uniform_(*rc.scale, generator=gen)
    shift = torch.empty(b, 1, 3).uniform_(-rc.shift, rc.shift, generator=gen)
    return points * scale.to(points.device) + shift.to(points.device)


@torch.no_grad()
def predict(model, pts: np.ndarray, labels: np.ndarray, class_parts, batch_size: int, device) -> list[np.ndarray]:
    """Global part ids of every point, chosen among the shape's own category's parts."""
    model.eval()
    out = []
    for s in range(0, len(pts), batch_size):
        x = torch.from_numpy(pts[s:s + batch_size]).to(device)
        c = torch.from_numpy(labels[s:s + batch_size]).to(device)
        logits = model(x, c).float().cpu().numpy()
        out += [predict_in_category(lg, int(lab), class_parts) for lg, lab in zip(logits, labels[s:s + batch_size])]
    return out


def score(model, part: tuple, class_parts, classes, batch_size: int, device) -> dict:
    pts, parts, labels = part
    preds = predict(model, pts, labels, class_parts, batch_size, device)
    return partseg_metrics(preds, list(parts), labels, class_parts, classes)


def _optimizer(model, rc: PartsegRecipe):
    from i2p.stage2_pretrain.model.mae import optimizer_groups

    return torch.optim.AdamW(optimizer_groups(model, rc.weight_decay, "official"), lr=rc.lr,
                             weight_decay=rc.weight_decay)


def _resume(model, opt, out: Path, settings: dict, state: dict):
    """Continue ``out/last.ckpt`` when it exists; returns (state, best weights or None)."""
    last = out / "last.ckpt"
    if not last.is_file():
        return state, None
    ck = load_checkpoint(last)
    if ck.get("config", {}).get("partseg") != settings:
        raise UserError(f"{last} belongs to a part-segmentation run with other settings; use another --out "
                        "or --no-resume")
    load_model_state(model, ck["model"], what=f"resumed part segmentation {last}")
    opt.load_state_dict(ck["optimizer"])
    best = load_checkpoint(out / "best.ckpt")["model"] if (out / "best.ckpt").is_file() else None
    return {k: ck[k] for k in state}, best


def _epoch(model, opt, train: tuple, rc: PartsegRecipe, epoch: int, seed: int, device, progress: bool) -> float:
    from tqdm.auto import tqdm

    pts, parts, labels = train
    model.train()
    torch.manual_seed(stable_seed(seed, "dropout", epoch))
    gen = torch.Generator().manual_seed(stable_seed(seed, "aug", epoch))
    order = np.random.default_rng([seed, epoch]).permutation(len(labels))
    steps = math.ceil(len(labels) / rc.batch_size)
    losses = []
    for j in tqdm(range(steps), desc=f"epoch {epoch + 1}/{rc.epochs}", disable=not progress, leave=False):
        idx = order[j * rc.batch_size:(j + 1) * rc.batch_size]
        if len(idx) < 2:  # BatchNorm needs 2 samples
            continue
        for g in opt.param_groups:
            g["lr"] = epoch_lr(rc, epoch, j, steps)
        x = augment(torch.from_numpy(pts[idx]), rc, gen).to(device)
        logits = model(x, torch.from_numpy(labels[idx]).to(device))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(parts[idx]).long().to(device).reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if rc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), rc.grad_clip)
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")


def train(model, data: dict, out: Path, rc: PartsegRecipe, class_parts, classes, *, seed: int, device,
          settings: dict, resume: bool = True, progress: bool = True) -> dict:
    """Train on ``data['train']`` = (points, parts, labels); keep the epoch with the best val
    instance mIoU (loaded into ``model`` on return). Returns the state with the history."""
    opt = _optimizer(model, rc)
    state = {"epoch": 0, "best": -1.0, "best_epoch": None, "history": []}
    best_sd = None
    if resume:
        state, best_sd = _resume(model, opt, out, settings, state)
    model.to(device)
    for epoch in range(state["epoch"], rc.epochs):
        loss = _epoch(model, opt, data["train"], rc, epoch, seed, device, progress)
        val = score(model, data["val"], class_parts, classes, rc.batch_size, device)
        row = {"epoch": epoch + 1, "loss": loss, "val_instance_miou": val["instance_miou"],
               "val_class_miou": val["class_miou"]}
        if val["instance_miou"] > state["best"]:
            state["best"], state["best_epoch"] = val["instance_miou"], epoch + 1
            best_sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            save_checkpoint({"model": best_sd, "config": {"partseg": settings}, "epoch": epoch + 1}, out / "best.ckpt")
        state["history"].append(row)
        state["epoch"] = epoch + 1
        save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(),
                         "config": {"partseg": settings}, **state}, out / "last.ckpt")
    if best_sd is not None:
        load_model_state(model, best_sd, what="selected part-segmentation weights")
    return state
