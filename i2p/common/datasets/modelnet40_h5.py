"""``modelnet40-h5:DIR``: ``modelnet40_ply_hdf5_2048`` (PointNet's release).

DIR/ply_data_train{0..4}.h5 and ply_data_test{0,1}.h5, each with ``data`` [N,2048,3] float32 and
``label`` [N,1] uint8. Files are taken in numeric order of their suffix so row ids are stable.
Class names come from DIR/shape_names.txt when present, else "0".."K-1" with K = max label + 1
over every file, so train and test always share one label space.
"""

from __future__ import annotations

import re
from pathlib import Path

from i2p.common.datasets._common import existing_path, read_lines, split_parts
from i2p.common.datasets._h5 import H5RowsDataset, read_h5_labels
from i2p.common.datasets.base import register_reader
from i2p.common.errors import DataSpecError


def split_files(root: Path, part: str) -> list[Path]:
    def key(p: Path) -> tuple[int, str]:
        m = re.search(r"(\d+)$", p.stem)
        return (int(m.group(1)) if m else -1, p.name)

    return sorted(root.glob(f"ply_data_{part}*.h5"), key=key)


@register_reader("modelnet40-h5")
def open_modelnet40_h5(arg: str, *, split: str, num_points: int, seed: int, spec: str) -> H5RowsDataset:
    root = existing_path(arg, spec, want_dir=True)
    files = {p: split_files(root, p) for p in ("train", "test")}
    present = [p for p, fs in files.items() if fs]
    for part in split_parts(split):
        if part not in present and not (split == "all" and present):
            raise DataSpecError(f"no {part} files in {root} (expected ply_data_{part}0.h5, ...)")
    names = root / "shape_names.txt"
    if names.is_file():
        classes = read_lines(names)
    else:
        top = max((int(read_h5_labels(f)[0].max(initial=-1)) for fs in files.values() for f in fs), default=-1)
        classes = [str(c) for c in range(top + 1)]
    parts = [(p, files[p]) for p in split_parts(split) if p in present]
    return H5RowsDataset(parts, classes=classes, spec=spec, split=split, num_points=num_points,
                         seed=seed, present=present)
