"""Learning-rate schedules shared by pre-training (stage 2) and fine-tuning (stage 3)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int, base: float, floor: float = 1e-6) -> float:
    """The learning rate of ``step`` (0-based) out of ``total``: a linear warm-up to ``base`` over
    the first ``warmup`` steps (``base * (step + 1) / warmup``), then a half cosine from ``base``
    down to ``floor``, held at ``floor`` past ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * min(t, 1.0)))


def warmup_cosine_factor(warmup: int, total: int, base: float, floor: float):
    """:func:`warmup_cosine` as the multiplier of ``base`` that ``torch.optim.lr_scheduler.LambdaLR``
    wants (a function of the step)."""
    return lambda step: warmup_cosine(step, total, warmup, base, floor) / base


def official_epoch_lr(epoch: int, horizon: int, warmup: int, base: float, floor: float = 1e-6,
                      warmup_init: float = 1e-6) -> float:
    """The learning rate in force during 0-based ``epoch`` under the official I2P-MAE schedule:
    timm ``CosineLRScheduler(t_initial=horizon, warmup_t=warmup, warmup_lr_init=warmup_init,
    lr_min=floor, cycle_limit=1)`` stepped once per epoch, **after** the epoch, with
    ``scheduler.step(epoch)`` (tools/builder.py, tools/runner_pretrain.py). So epoch 0 runs at
    ``warmup_init`` (what the scheduler sets when it is built) and epoch ``e >= 1`` at the
    scheduler's value for ``t = e - 1``: a linear ramp ``warmup_init + t * (base - warmup_init)
    / warmup`` for ``t < warmup``, then ``floor + (base - floor) * (1 + cos(pi t / horizon)) / 2``
    (the cosine counts from t = 0, warm-up included), held at ``floor`` from ``t = horizon``."""
    if epoch <= 0:
        return warmup_init if warmup > 0 else base
    t = epoch - 1
    if t < warmup:
        return warmup_init + t * (base - warmup_init) / warmup
    if t >= horizon:
        return floor
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * t / horizon))


def official_epoch_factor(steps_per_epoch: int, horizon: int, warmup: int, base: float, floor: float):
    """:func:`official_epoch_lr` as a per-step ``LambdaLR`` multiplier of ``base``: constant within
    an epoch of ``steps_per_epoch`` steps."""
    return lambda step: official_epoch_lr(step // max(1, steps_per_epoch), horizon, warmup, base, floor) / base
