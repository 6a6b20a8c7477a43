"""``modelnet40:DIR``: the ``modelnet40_normal_resampled`` release used by PointNet++/Point-BERT.

DIR/modelnet40_shape_names.txt (label order), DIR/modelnet40_{train,test}.txt (ids such as
``airplane_0001``) and DIR/<class>/<id>.txt with 10000 lines ``x,y,z,nx,ny,nz``. The class is
the id without its trailing ``_NNNN``; only xyz is used (normals are not part of the contract).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from i2p.common.datasets._common import ListDataset, existing_path, read_lines, split_parts
from i2p.common.datasets.base import register_reader
from i2p.common.errors import DataSpecError, SampleError


class ModelNet40Dataset(ListDataset):
    """Ids are the list entries (``airplane_0001``), already unique across both splits."""

    def __init__(self, root: Path, *, spec: str, split: str, num_points: int, seed: int) -> None:
        names_file = root / "modelnet40_shape_names.txt"
        if not names_file.is_file():
            raise DataSpecError(f"class list not found: {names_file}")
        classes = read_lines(names_file)
        index = {c: k for k, c in enumerate(classes)}
        present = [p for p in ("train", "test") if (root / f"modelnet40_{p}.txt").is_file()]
        ids: list[str] = []
        for part in split_parts(split):
            if part not in present and split == "all" and present:
                continue
            ids += read_lines(root / f"modelnet40_{part}.txt")  # raises DataSpecError if missing
        labels = []
        for sid in ids:
            cls = sid.rsplit("_", 1)[0]
            if cls not in index:
                raise DataSpecError(f"id {sid!r} in {root}: class {cls!r} is not in {names_file.name}")
            labels.append(index[cls])
        super().__init__(spec=spec, split=split, num_points=num_points, seed=seed, ids=ids,
                         labels=labels, classes=classes, present_splits=present)
        self.root = root

    def _raw(self, i: int) -> np.ndarray:
        sid = self._ids[i]
        path = self.root / self.classes[self._labels[i]] / f"{sid}.txt"
        if not path.is_file():
            raise SampleError(f"missing file {path.name}")
        pts = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
        if pts.shape[1] < 3:
            raise SampleError(f"expected >= 3 comma-separated columns, got {pts.shape[1]}")
        return pts[:, :3]


@register_reader("modelnet40")
def open_modelnet40(arg: str, *, split: str, num_points: int, seed: int, spec: str) -> ModelNet40Dataset:
    root = existing_path(arg, spec, want_dir=True)
    return ModelNet40Dataset(root, spec=spec, split=split, num_points=num_points, seed=seed)
