"""Fine-tuning recipes: i2p's defaults and the official I2P-MAE ones, one flag each.

``i2p eval finetune --recipe paper-modelnet40`` (or ``paper-scan-objbg``, ``paper-scan-objonly``,
``paper-scan-hardest``) sets every hyper-parameter of the official fine-tuning
(cfgs/fine-tuning/{modelnet40,scan_obj-bg,scan_obj,scan_pb}.yaml, tools/runner_finetune.py,
models/I2P_MAE_Finetune.py at ZrrSkywalker/I2P-MAE 7d4e519); an option given on the command
line still wins. Without ``--recipe`` the i2p defaults apply (:data:`DEFAULT`). What each field
restores is listed in docs/FIDELITY.md (V4-V9).

Official pieces kept here so that :mod:`finetune` only calls them:
:func:`official_smooth_loss`, :func:`official_augment`, :func:`official_subsample`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from i2p.common.errors import UserError

HEADS = ("i2p", "official-sum", "official-concat")
LOSSES = ("ce", "official")
AUGMENTS = ("i2p", "modelnet40", "scan")
SCHEDULES = ("i2p", "official")


@dataclass(frozen=True)
class FinetuneRecipe:
    """Every knob of a fine-tune run that a recipe sets. ``None`` = decided elsewhere (points:
    the data set's default; group sizes: the checkpoint's)."""

    name: str = "i2p"
    points: int | None = None
    epochs: int = 300
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: int = 10
    # 'i2p': per step, warm-up then cosine over the run. 'official': timm CosineLRScheduler
    # (t_initial=schedule_epochs, warm-up from 1e-6) stepped after each epoch.
    schedule: str = "i2p"
    schedule_epochs: int | None = None  # None = epochs
    smoothing: float = 0.2
    # 'ce': F.cross_entropy(label_smoothing) (eps/n on every class); 'official': the official
    # smooth_loss (1 - eps on the true class, eps/(n-1) on each other class).
    loss: str = "ce"
    grad_clip: float = 0.0  # global norm; 0 = none
    # 'i2p': the encoder's LayerNorm, mean and max concatenated. 'official-sum' (ModelNet40) /
    # 'official-concat' (ScanObjectNN): a fresh LayerNorm on the last level, then mean + max
    # summed (head D -> 256) or concatenated (2D -> 256).
    head: str = "i2p"
    group_sizes: tuple[int, ...] | None = None
    local_radii: tuple[float, ...] = (0.32, 0.64, 1.28)
    # Official point sampling: read ``read_points`` per shape, FPS to ``fps_pool`` (training
    # pool; capped at read_points) and draw a random ``points`` of the pool each step; evaluation
    # clouds are FPS to ``points``. None = the reader's seeded ``points`` subset (i2p).
    read_points: int | None = None
    fps_pool: int | None = None
    augment: str = "i2p"
    votes: int = 1
    dropout: float = 0.5
    # 'none': weight decay on every parameter (i2p's fine-tuning); 'official': the official
    # ``add_weight_decay`` (no decay on 1-D tensors, biases and 'token' parameters).
    decay_exempt: str = "none"

    def __post_init__(self) -> None:
        for name, allowed in (("head", HEADS), ("loss", LOSSES), ("augment", AUGMENTS),
                              ("schedule", SCHEDULES), ("decay_exempt", ("none", "official"))):
            if getattr(self, name) not in allowed:
                raise UserError(f"fine-tune {name} must be one of {', '.join(allowed)} (got {getattr(self, name)!r})")

    def settings(self) -> dict:
        """The recipe-only fields, for the result's settings."""
        keys = ("schedule", "schedule_epochs", "loss", "grad_clip", "head", "group_sizes", "read_points",
                "fps_pool", "augment", "decay_exempt")
        out = {k: getattr(self, k) for k in keys}
        out["recipe"] = self.name
        out["group_sizes"] = list(self.group_sizes) if self.group_sizes else None
        return out


DEFAULT = FinetuneRecipe()

# The official ones (cfgs/fine-tuning/*.yaml): AdamW lr 5e-4 wd 0.05, CosLR 300 epochs with 10
# warm-up, run for 301 epochs (``range(0, max_epoch + 1)``), batch 32, grad-norm clip 10,
# drop path 0.1 (the pre-trained config's), head 256-256-classes with dropout 0.5.
_OFFICIAL = dict(epochs=301, batch_size=32, lr=5e-4, weight_decay=0.05, warmup=10, schedule="official",
                 schedule_epochs=300, grad_clip=10.0, dropout=0.5, decay_exempt="official")
_SCAN = dict(_OFFICIAL, points=2048, smoothing=0.0, loss="ce", head="official-concat", group_sizes=(32, 16, 16),
             read_points=2048, fps_pool=2400, augment="scan", votes=1)
RECIPES = {
    "paper-modelnet40": FinetuneRecipe(name="paper-modelnet40", points=1024, smoothing=0.2, loss="official",
                                       head="official-sum", group_sizes=(48, 24, 24),
                                       local_radii=(0.24, 0.48, 0.96), read_points=8192, fps_pool=1200,
                                       augment="modelnet40", votes=10, **_OFFICIAL),
    "paper-scan-objbg": FinetuneRecipe(name="paper-scan-objbg", local_radii=(0.32, 0.64, 1.28), **_SCAN),
    "paper-scan-objonly": FinetuneRecipe(name="paper-scan-objonly", local_radii=(0.32, 0.64, 1.28), **_SCAN),
    "paper-scan-hardest": FinetuneRecipe(name="paper-scan-hardest", local_radii=(0.48, 0.96, 1.92), **_SCAN),
}


def resolve(name: str | None = None, **given) -> FinetuneRecipe:
    """The recipe ``name`` (None: :data:`DEFAULT`) with the values in ``given`` that are not
    None (explicit command-line options) put over it."""
    if name is None:
        base = DEFAULT
    elif name in RECIPES:
        base = RECIPES[name]
    else:
        raise UserError(f"unknown fine-tune recipe {name!r} (known: {', '.join(RECIPES)})")
    changes = {k: v for k, v in given.items() if v is not None}
    unknown = set(changes) - {f.name for f in dataclasses.fields(FinetuneRecipe)}
    if unknown:
        raise UserError(f"not a fine-tune recipe field: {', '.join(sorted(unknown))}")
    for k in ("local_radii", "group_sizes"):
        if k in changes:
            changes[k] = tuple(changes[k])
    return dataclasses.replace(base, **changes)


def param_groups(model: torch.nn.Module, weight_decay: float, recipe: FinetuneRecipe):
    """What AdamW gets: every parameter with ``weight_decay`` (i2p), or the official groups."""
    if recipe.decay_exempt == "official":
        from i2p.stage2_pretrain.model.mae import optimizer_groups

        return optimizer_groups(model, weight_decay, "official")
    return model.parameters()


def official_smooth_loss(logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """The official ModelNet40 loss (I2P_MAE_Finetune.py ``smooth_loss``): cross-entropy against
    ``1 - eps`` on the true class and ``eps / (n - 1)`` on every other class."""
    n = logits.shape[1]
    one_hot = torch.zeros_like(logits).scatter(1, target.view(-1, 1), 1.0)
    q = one_hot * (1 - eps) + (1 - one_hot) * eps / (n - 1)
    return -(q * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def loss_fn(recipe: FinetuneRecipe):
    if recipe.loss == "official":
        return lambda logits, y: official_smooth_loss(logits, y, recipe.smoothing)
    return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=recipe.smoothing)


def augment(points: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """i2p's fine-tuning augmentation: per-sample, per-axis scale U[2/3, 3/2], shift U[-0.2, 0.2]."""
    b = points.shape[0]
    scale = torch.empty(b, 1, 3).uniform_(2 / 3, 3 / 2, generator=gen).to(points.device)
    shift = torch.empty(b, 1, 3).uniform_(-0.2, 0.2, generator=gen).to(points.device)
    return points * scale + shift


def _rotation_y(theta: float) -> torch.Tensor:
    c, s = float(np.cos(theta)), float(np.sin(theta))
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float32)


def official_augment(points: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """tools/runner_finetune.py's training transforms, drawn from ``gen``. 'modelnet40':
    per-sample, per-axis scale U[2/3, 3/2] and shift U[-0.2, 0.2]. 'scan': per-axis scale
    U[0.9, 1.1], no shift, then one rotation about y by U[-pi, pi] for the whole batch
    (``PointcloudRotate`` rotates the batch tensor with one matrix)."""
    b = points.shape[0]
    lo, hi, shift = (2 / 3, 3 / 2, 0.2) if kind == "modelnet40" else (0.9, 1.1, 0.0)
    scale = torch.empty(b, 1, 3).uniform_(lo, hi, generator=gen).to(points.device)
    out = points * scale
    if shift:
        out = out + torch.empty(b, 1, 3).uniform_(-shift, shift, generator=gen).to(points.device)
    if kind == "scan":
        theta = float(torch.empty(()).uniform_(-np.pi, np.pi, generator=gen))
        out = out @ _rotation_y(theta).to(points.device).T
    return out


def official_subsample(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``n`` of the pool's points, the same indices for the whole batch
    (``fps_idx[:, np.random.choice(point_all, npoints, False)]``)."""
    return pool[:, rng.choice(pool.shape[1], n, replace=False)]


def fps_clouds(clouds: np.ndarray, k: int, batch: int = 64) -> np.ndarray:
    """FPS (start at index 0, as the pointnet2 kernel) of every cloud to ``k`` points."""
    from i2p.common.point_ops import farthest_point_sample

    k = min(k, clouds.shape[1])
    if k == clouds.shape[1]:
        return clouds
    out = []
    for s in range(0, len(clouds), batch):
        x = torch.from_numpy(clouds[s:s + batch])
        idx = farthest_point_sample(x, k)
        out.append(torch.gather(x, 1, idx[..., None].expand(-1, -1, 3)).numpy())
    return np.concatenate(out).astype(np.float32)


class StepRecipe:
    """What one training step of :func:`finetune.train` takes from a recipe: its learning rate,
    its batch (point draw, augmentation) and its loss."""

    def __init__(self, recipe: FinetuneRecipe, steps_per_epoch: int, epochs: int, warmup: int, lr: float,
                 smoothing: float, sample_points: int | None = None):
        self.recipe, self.steps, self.epochs, self.warmup = recipe, steps_per_epoch, epochs, warmup
        self.base, self.sample_points = lr, sample_points
        self.loss = loss_fn(dataclasses.replace(recipe, smoothing=smoothing))

    def lr(self, epoch: int, j: int) -> float:
        from i2p.common.schedules import official_epoch_lr, warmup_cosine

        horizon = self.recipe.schedule_epochs or self.epochs
        if self.recipe.schedule == "official":
            return official_epoch_lr(epoch, horizon, self.warmup, self.base)
        return warmup_cosine(epoch * self.steps + j, horizon * self.steps, self.warmup * self.steps, self.base)

    def batch(self, clouds: np.ndarray, gen: torch.Generator, key: tuple) -> torch.Tensor:
        from i2p.common.geometry import stable_seed

        if self.sample_points and self.sample_points < clouds.shape[1]:
            clouds = official_subsample(clouds, self.sample_points, np.random.default_rng(stable_seed("draw", *key)))
        elif self.sample_points:  # the pool is the cloud: a random order, as the official draw
            clouds = official_subsample(clouds, clouds.shape[1], np.random.default_rng(stable_seed("draw", *key)))
        x = torch.from_numpy(np.ascontiguousarray(clouds))
        if self.recipe.augment == "i2p":
            return augment(x, gen)
        return official_augment(x, self.recipe.augment, gen)


def official_clouds(parts: dict, recipe: FinetuneRecipe, points: int) -> dict:
    """With ``recipe.fps_pool``: replace, in ``parts`` (``{"train"|"val"|"test": (X, y)}``, read
    at ``read_points``), the training clouds by their FPS pool (``fps_pool`` points, capped at
    the points read) and the evaluation clouds by FPS to ``points`` (``misc.fps`` in the
    official ``validate``). Returns the evaluation pools (for the official voting), ``{}``
    without ``fps_pool``; a recipe without it leaves ``parts`` as they are."""
    if not recipe.fps_pool:
        return {}
    pools = {}
    for part, (X, y) in list(parts.items()):
        if part == "train":
            parts[part] = (fps_clouds(X, recipe.fps_pool), y)
        else:
            pools[part] = fps_clouds(X, recipe.fps_pool)
            parts[part] = (fps_clouds(X, points), y)
    return pools
