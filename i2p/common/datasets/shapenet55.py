"""``shapenet55:DIR``: Point-BERT's ShapeNet-55 layout.

DIR/shapenet_pc/<synset>-<model>.npy (each [8192, 3]) and the split lists train.txt / test.txt,
either in DIR or in DIR/ShapeNet-55/ (as Point-BERT's ShapeNet55-34 folder ships them). The
label is the synset's index among the sorted synsets of both lists, so train and test agree on
class indices even when one list lacks a synset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from i2p.common.datasets._common import ListDataset, existing_path, read_lines, split_parts
from i2p.common.datasets.base import register_reader
from i2p.common.errors import DataSpecError, SampleError


def _list_path(root: Path, part: str) -> Path | None:
    for cand in (root / f"{part}.txt", root / "ShapeNet-55" / f"{part}.txt"):
        if cand.is_file():
            return cand
    return None


def _entry_name(line: str) -> str:
    name = line.split()[0]
    return name if name.endswith(".npy") else name + ".npy"


class ShapeNet55Dataset(ListDataset):
    """Ids are the file names without ``.npy`` (``<synset>-<model>``), unique in ShapeNet."""

    def __init__(self, root: Path, *, spec: str, split: str, num_points: int, seed: int) -> None:
        self.pc_dir = root / "shapenet_pc"
        if not self.pc_dir.is_dir():
            raise DataSpecError(f"missing point-cloud folder {self.pc_dir} (expected DIR/shapenet_pc/*.npy)")
        lists = {p: _list_path(root, p) for p in ("train", "test")}
        present = [p for p, path in lists.items() if path is not None]
        names: dict[str, list[str]] = {p: [_entry_name(ln) for ln in read_lines(lists[p])] for p in present}
        for part in split_parts(split):
            if part not in present and not (split == "all" and present):
                raise DataSpecError(f"split list not found: {root / (part + '.txt')}")
        for part, entries in names.items():
            bad = [n for n in entries if "-" not in n]
            if bad:
                raise DataSpecError(f"{lists[part]}: entry {bad[0]!r} is not <synset>-<model>.npy")
        synsets = sorted({n.split("-", 1)[0] for entries in names.values() for n in entries})
        index = {s: k for k, s in enumerate(synsets)}
        chosen = [n for part in split_parts(split) for n in names.get(part, [])]
        super().__init__(spec=spec, split=split, num_points=num_points, seed=seed,
                         ids=[n[: -len(".npy")] for n in chosen],
                         labels=[index[n.split("-", 1)[0]] for n in chosen],
                         classes=synsets, present_splits=present)
        self._files = chosen

    def _raw(self, i: int) -> np.ndarray:
        path = self.pc_dir / self._files[i]
        if not path.is_file():
            raise SampleError(f"missing file {path.name}")
        pts = np.load(path, allow_pickle=False)
        if pts.ndim != 2 or pts.shape[1] < 3:
            raise SampleError(f"expected [N,3] points, got shape {tuple(pts.shape)}")
        return pts[:, :3]


@register_reader("shapenet55")
def open_shapenet55(arg: str, *, split: str, num_points: int, seed: int, spec: str) -> ShapeNet55Dataset:
    root = existing_path(arg, spec, want_dir=True)
    return ShapeNet55Dataset(root, spec=spec, split=split, num_points=num_points, seed=seed)
