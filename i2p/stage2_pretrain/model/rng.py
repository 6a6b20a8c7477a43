"""Explicit randomness: every random draw of the network goes through these helpers.

``Rng`` is ``None`` (torch's global RNG), one ``torch.Generator`` for the whole batch, or a
sequence of generators, ONE PER SAMPLE. With per-sample generators (seeded, e.g., from the run
seed, the step and the sample's index in the global batch) each sample's mask, drop-path
draws and FPS start depend only on that sample, so a batch split across DDP processes draws
exactly what one process would. Draws are made on the generator's device and moved, so a CPU
generator gives the same numbers whatever device the model runs on.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from i2p.common.geometry import stable_seed

Rng = Union[torch.Generator, Sequence[torch.Generator], None]


def step_generators(seed: int, step: int, indices, tag: str = "step") -> list[torch.Generator]:
    """The per-sample generators of training step ``step``: one per sample, seeded by
    ``(tag, seed, step, sample index)`` (the training loop, ``i2p viz`` and the held-out R2,
    with ``tag="r2"``, all draw through this)."""
    return [torch.Generator().manual_seed(stable_seed(tag, seed, step, int(i))) for i in indices]


def uniform(shape: tuple[int, ...], rng: Rng, device: torch.device | str) -> torch.Tensor:
    """U[0,1) of ``shape``; with per-sample generators row ``b`` comes from ``rng[b]``."""
    device = torch.device(device)
    if rng is None:
        return torch.rand(shape, device=device)
    if isinstance(rng, torch.Generator):
        return torch.rand(shape, generator=rng, device=rng.device).to(device)
    if len(rng) != shape[0]:
        raise ValueError(f"{len(rng)} per-sample generators for a batch of {shape[0]}")
    rows = [torch.rand(shape[1:], generator=g, device=g.device) for g in rng]
    if all(r.device == rows[0].device for r in rows):  # one stack, one host-to-device copy
        return torch.stack(rows).to(device)
    return torch.stack([r.to(device) for r in rows])
