"""Row access to ``data``/``label`` HDF5 files (ModelNet40-h5, ScanObjectNN).

Labels are read whole at construction (a few KB); point rows are read one at a time from
files opened lazily and kept open, since reopening an HDF5 file per sample costs more than the
read. Handles are dropped on pickling so a dataset can be sent to worker processes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from i2p.common.datasets._common import ListDataset
from i2p.common.errors import DataSpecError, SampleError


def read_h5_labels(path: Path) -> tuple[np.ndarray, int]:
    """(labels [N] int64, N) of one file; checks ``data`` and ``label`` agree."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "data" not in f or "label" not in f:
                raise DataSpecError(f"{path}: expected datasets 'data' and 'label', found {sorted(f.keys())}")
            shape = f["data"].shape
            labels = np.asarray(f["label"][...]).reshape(-1).astype(np.int64)
    except OSError as err:
        raise DataSpecError(f"cannot open HDF5 file {path}: {err}") from err
    if len(shape) != 3 or shape[2] < 3 or shape[0] != len(labels):
        raise DataSpecError(f"{path}: data shape {shape} does not match {len(labels)} labels as [N,P,3]")
    return labels, shape[0]


class H5RowsDataset(ListDataset):
    """Samples are (file, row) pairs; ids ``<split>/<row within the split, 6 digits>``."""

    def __init__(self, parts: list[tuple[str, list[Path]]], *, classes: list[str] | None, spec: str,
                 split: str, num_points: int, seed: int, present: list[str]) -> None:
        rows: list[tuple[Path, int]] = []
        ids: list[str] = []
        labels: list[np.ndarray] = []
        for part, files in parts:
            k = 0
            for path in files:
                lab, n = read_h5_labels(path)
                rows += [(path, r) for r in range(n)]
                ids += [f"{part}/{k + r:06d}" for r in range(n)]
                labels.append(lab)
                k += n
        labels_arr = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        if classes is None:
            classes = [str(c) for c in range(int(labels_arr.max()) + 1 if len(labels_arr) else 0)]
        super().__init__(spec=spec, split=split, num_points=num_points, seed=seed, ids=ids,
                         labels=labels_arr, classes=classes, present_splits=present)
        self._rows = rows
        self._handles: dict[Path, object] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def _raw(self, i: int) -> np.ndarray:
        import h5py

        path, row = self._rows[i]
        f = self._handles.get(path)
        if f is None:
            f = self._handles[path] = h5py.File(path, "r")
        pts = np.asarray(f["data"][row], dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] < 3:
            raise SampleError(f"expected [P,3] points, got shape {tuple(pts.shape)}")
        return pts[:, :3]

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles = {}
