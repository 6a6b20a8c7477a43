"""An exponential moving average (EMA) of the weights a run trains (``optim.ema_decay``).

Why: an average of the weights along the end of a run sits in a flatter region of the loss than
the last iterate, and flat solutions are the ones that hold up on data the run did not see
(SWA, SWAD, model soups). Here it is a lever aimed at transfer (issue 21): the frozen encoder
that the evaluation protocols read is the average, the optimiser keeps training the raw weights.

After ``t`` updates the next one uses ``d_t = min(decay, (t + 1) / (t + 2))``: the plain mean of
every weight so far (the initial ones included) until that mean spans ``1 / (1 - decay)`` steps,
then the moving average over that window. No bias towards the random initialisation, and the
window is the one ``decay`` says from early on. (timm's ``(1 + t) / (10 + t)`` warm-up would
keep it at about the last ninth of a short run, whose weights barely move under a cosine
schedule's tail.) Floating-point parameters and buffers (BatchNorm
statistics) are averaged in float32; integer buffers (BatchNorm's step counter) are copied.
Its state is saved in every checkpoint (``model_ema``) and restored on resume, so a resumed run
stays bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import copy
from typing import Mapping

import torch


class WeightAverage:
    """The EMA of ``model``'s state dict, kept beside the model (same device)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) to average (got {decay}); 0 turns it off")
        self.decay = float(decay)
        self.updates = 0
        self.state = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                      for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (self.updates + 1.0) / (self.updates + 2.0))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One step of the average towards ``model``'s current weights (call after the optimiser)."""
        d = self.current_decay()
        for k, v in model.state_dict().items():
            avg = self.state[k]
            if avg.is_floating_point():
                avg.mul_(d).add_(v.detach().float(), alpha=1.0 - d)
            else:
                avg.copy_(v)
        self.updates += 1

    def state_dict(self) -> dict:
        """The averaged weights (a model state dict; floating-point tensors in float32), the
        update count and the decay."""
        return {"weights": dict(self.state), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, saved: Mapping) -> None:
        weights = saved["weights"]
        missing = sorted(set(self.state) - set(weights))
        if missing:
            raise KeyError(f"the checkpoint's weight average lacks {len(missing)} tensors (first: {missing[0]})")
        for k, avg in self.state.items():
            avg.copy_(weights[k])
        self.updates = int(saved["updates"])


def start(model: torch.nn.Module, decay: float) -> WeightAverage | None:
    """The run's weight average (None when ``decay`` is 0, the default: no average). The range
    of ``optim.ema_decay`` is checked where the config is resolved (``config.resolve``)."""
    return WeightAverage(model, decay) if decay > 0 else None


def resume(model: torch.nn.Module, decay: float, saved: Mapping | None) -> WeightAverage:
    """The average a checkpoint saved; one written without it starts from ``model``'s weights."""
    average = WeightAverage(model, decay)
    if saved is not None:
        average.load_state_dict(saved)
    return average


def evaluated(model: torch.nn.Module, average: WeightAverage | None) -> torch.nn.Module:
    """The network the evaluation reads from the run's checkpoint: ``model``, or a copy of it
    holding the average when the run keeps one."""
    if average is None:
        return model
    out = copy.deepcopy(model)
    out.load_state_dict(average.state_dict()["weights"])
    return out


__all__ = ["WeightAverage", "evaluated", "resume", "start"]
