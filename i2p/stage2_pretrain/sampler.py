"""Data order that a resumed or multi-process run reproduces exactly.

Epoch e visits the samples in ``permutation(seed, e)``, cut into global batches (last partial
batch dropped); rank r of W takes the r-th slice of each global batch. A run resumed at global
step s starts at batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``: nothing in the
order depends on how many times the job was restarted.
"""

from __future__ import annotations

import numpy as np

from i2p.common.geometry import stable_seed


class EpochBatchSampler:
    def __init__(self, num_samples: int, global_batch: int, seed: int, epoch: int,
                 start_batch: int = 0, rank: int = 0, world: int = 1, order: np.ndarray | None = None):
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by {world} processes")
        if num_samples < global_batch:
            raise ValueError(f"{num_samples} samples are fewer than one batch of {global_batch}")
        if order is not None and len(order) != num_samples:
            raise ValueError(f"epoch order has {len(order)} entries, expected {num_samples}")
        self.n, self.batch, self.seed, self.epoch, self.order = num_samples, global_batch, seed, epoch, order
        self.start, self.rank, self.world = start_batch, rank, world

    @staticmethod
    def steps_per_epoch(num_samples: int, global_batch: int) -> int:
        return num_samples // global_batch

    def __len__(self) -> int:
        return self.steps_per_epoch(self.n, self.batch) - self.start

    def __iter__(self):
        order = self.order if self.order is not None else \
            np.random.default_rng(stable_seed("order", self.seed, self.epoch)).permutation(self.n)
        per = self.batch // self.world
        for b in range(self.start, self.steps_per_epoch(self.n, self.batch)):
            chunk = order[b * self.batch:(b + 1) * self.batch]
            yield chunk[self.rank * per:(self.rank + 1) * per].tolist()
