"""``builtin:primitives[?n_train=N&n_test=M]``: procedurally generated labelled shapes.

The offline default: it needs no download yet has real within-class variation (proportions,
deformation, part layout), so pretraining and every evaluation protocol can run end to end on
any machine. An instance's shape is fixed by (class, split, index) alone, independent of the
dataset seed, so train and test never share an instance and a cache stays reproducible; the
seed only moves which surface points are drawn, as it does for mesh files.

Every sample carries per-point part labels (``Sample.parts``: a table's top vs its legs, a
mug's body vs its handle; see ``_shapes.PART_GROUPS``) for part segmentation; the points are
the same with or without them.
"""

from __future__ import annotations

import numpy as np

from i2p.common.datasets._common import DENSE_DRAW, ListDataset, int_option, split_options, split_parts
from i2p.common.datasets._shapes import SHAPES, generate, part_layout
from i2p.common.datasets.base import register_reader
from i2p.common.errors import DataSpecError
from i2p.common.geometry import stable_seed

DEFAULT_TRAIN, DEFAULT_TEST = 32, 8


class PrimitivesDataset(ListDataset):
    """``len(SHAPES)`` classes x (n_train | n_test) instances; ids ``<class>/<split>/<index>``."""

    def __init__(self, *, spec: str, split: str, num_points: int, seed: int, n_train: int, n_test: int) -> None:
        counts = {"train": n_train, "test": n_test}
        entries = [(f"{name}/{part}/{k:04d}", label, name, part, k)
                   for part in split_parts(split)
                   for label, name in enumerate(SHAPES)
                   for k in range(counts[part])]
        present = [p for p, c in counts.items() if c > 0]
        if split != "all" and counts[split] == 0:
            raise DataSpecError(f"{spec!r} has no {split} split (n_{split}=0)")
        super().__init__(spec=spec, split=split, num_points=num_points, seed=seed,
                         ids=[e[0] for e in entries], labels=[e[1] for e in entries],
                         classes=list(SHAPES), present_splits=present)
        self._entries = entries
        self.class_parts, self.part_names = part_layout()

    def _raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        sid, label, name, part, k = self._entries[i]
        shape_rng = np.random.default_rng(stable_seed("primitives", name, part, k))
        sample_rng = np.random.default_rng(stable_seed(self.seed, sid, "surface"))
        pts, local = generate(name, shape_rng, sample_rng, max(self.num_points, DENSE_DRAW), with_parts=True)
        return pts, np.asarray(self.class_parts[label])[local]


@register_reader("builtin")
def open_builtin(arg: str, *, split: str, num_points: int, seed: int, spec: str) -> PrimitivesDataset:
    name, opts = split_options(arg, spec, allowed=("n_train", "n_test"))
    if name != "primitives":
        raise DataSpecError(f"unknown builtin dataset {name!r} in {spec!r}: the only one is 'primitives'")
    return PrimitivesDataset(spec=spec, split=split, num_points=num_points, seed=seed,
                             n_train=int_option(opts, "n_train", DEFAULT_TRAIN, spec),
                             n_test=int_option(opts, "n_test", DEFAULT_TEST, spec))
