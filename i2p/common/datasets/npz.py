"""``npz:FILE``: clouds already in memory-friendly form, the escape hatch for any other data.

Two layouts:
  * ``points`` [N,P,3] with optional ``labels`` [N], ``ids`` [N], ``split`` [N] ('train'/'test'),
    ``classes`` [K]. Without ``split`` every row is train and there is no test split.
  * ``train_points`` / ``test_points`` with ``train_labels`` / ``test_labels`` (and optional
    ``train_ids`` / ``test_ids``, ``classes``); either half may be absent.
Labels default to 0 (unlabelled pretraining data); class names default to "0".."K-1". The file
is opened with ``allow_pickle=False``: strings must be stored as fixed-width unicode arrays.
Point arrays are read on the first ``load`` only, so ids/labels stay cheap.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from i2p.common.datasets._common import ListDataset, existing_path, split_parts
from i2p.common.datasets.base import register_reader
from i2p.common.errors import DataSpecError


def _read_keys(path: Path, keys: list[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in keys if k in z.files}
    except (OSError, ValueError, EOFError) as err:
        raise DataSpecError(f"cannot read {path} as .npz ({type(err).__name__}: {err})") from err


def _file_keys(path: Path) -> list[str]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return list(z.files)
    except (OSError, ValueError, EOFError) as err:
        raise DataSpecError(f"cannot read {path} as .npz ({type(err).__name__}: {err})") from err


def _member_shape(path: Path, key: str) -> tuple[int, ...]:
    """Shape of one member from its .npy header alone: cheap even for a multi-GB array."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, _ = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, _ = np.lib.format.read_array_header_2_0(fh)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise DataSpecError(f"cannot read '{key}' in {path} ({type(err).__name__}: {err})") from err
    return tuple(shape)


class NpzDataset(ListDataset):
    """Ids: the file's ``ids`` when given, else ``<split>/<row within that split, 6 digits>``."""

    def __init__(self, path: Path, *, spec: str, split: str, num_points: int, seed: int) -> None:
        keys = _file_keys(path)
        self.path = path
        # per split: (points key, row indices into it, labels, ids)
        chunks: dict[str, tuple[str, np.ndarray, np.ndarray, list[str]]] = {}
        if "points" in keys:
            meta = _read_keys(path, ["labels", "ids", "split"])
            n = self._count(path, "points")
            labels = meta.get("labels", np.zeros(n, np.int64)).reshape(-1)
            ids = meta.get("ids")
            tags = meta["split"].astype(str).reshape(-1) if "split" in meta else np.full(n, "train")
            if len(labels) != n or len(tags) != n or (ids is not None and len(ids) != n):
                raise DataSpecError(f"{path}: 'labels', 'ids' and 'split' must have one entry per cloud ({n})")
            bad = sorted(set(tags) - {"train", "test"})
            if bad:
                raise DataSpecError(f"{path}: split values must be 'train'/'test', found {bad[0]!r}")
            for part in ("train", "test"):
                rows = np.flatnonzero(tags == part)
                if len(rows):
                    pid = [str(ids[r]) for r in rows] if ids is not None else [f"{part}/{k:06d}" for k in range(len(rows))]
                    chunks[part] = ("points", rows, labels[rows], pid)
        else:
            for part in ("train", "test"):
                if f"{part}_points" not in keys:
                    continue
                n = self._count(path, f"{part}_points")
                meta = _read_keys(path, [f"{part}_labels", f"{part}_ids"])
                labels = meta.get(f"{part}_labels", np.zeros(n, np.int64)).reshape(-1)
                ids = meta.get(f"{part}_ids")
                if len(labels) != n or (ids is not None and len(ids) != n):
                    raise DataSpecError(f"{path}: {part}_labels/{part}_ids must have {n} entries")
                pid = [str(x) for x in ids] if ids is not None else [f"{part}/{k:06d}" for k in range(n)]
                chunks[part] = (f"{part}_points", np.arange(n), labels, pid)
            if not chunks:
                raise DataSpecError(f"{path}: no 'points' (or 'train_points'/'test_points') array; keys: {keys}")
        present = list(chunks)
        for part in split_parts(split):
            if part not in chunks and not (split == "all" and present):
                raise DataSpecError(f"{path} has no {part} split")
        chosen = [chunks[p] for p in split_parts(split) if p in chunks]
        all_labels = np.concatenate([c[2] for c in chunks.values()]).astype(np.int64)
        if "classes" in keys:
            classes = [str(c) for c in _read_keys(path, ["classes"])["classes"].reshape(-1)]
        else:
            classes = [str(c) for c in range(int(all_labels.max(initial=0)) + 1)]
        super().__init__(spec=spec, split=split, num_points=num_points, seed=seed,
                         ids=[i for c in chosen for i in c[3]],
                         labels=np.concatenate([c[2] for c in chosen]) if chosen else [],
                         classes=classes, present_splits=present)
        self._rows = [(c[0], int(r)) for c in chosen for r in c[1]]
        self._arrays: dict[str, np.ndarray] = {}

    @staticmethod
    def _count(path: Path, key: str) -> int:
        shape = _member_shape(path, key)
        if len(shape) != 3 or shape[2] < 3:
            raise DataSpecError(f"{path}: '{key}' must be [N,P,3], got shape {tuple(shape)}")
        return shape[0]

    def _raw(self, i: int) -> np.ndarray:
        key, row = self._rows[i]
        if key not in self._arrays:
            self._arrays[key] = _read_keys(self.path, [key])[key]
        return self._arrays[key][row, :, :3]


@register_reader("npz")
def open_npz(arg: str, *, split: str, num_points: int, seed: int, spec: str) -> NpzDataset:
    path = existing_path(arg, spec, want_dir=False)
    return NpzDataset(path, spec=spec, split=split, num_points=num_points, seed=seed)
