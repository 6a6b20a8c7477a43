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
