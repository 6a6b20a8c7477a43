"""A tiny ShapeNetPart folder in the exact release layout, written by tests.

Two categories, Airplane (parts 0-3) and Mug (parts 36-37), with shapes taken from
``builtin:primitives`` (a chair's seat/back/legs play an airplane's first three parts, a mug is
a mug), so the part labels follow real geometry and a segmentation head can learn them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from i2p.common.datasets import create_dataset

CATS = {"Airplane": ("02691156", "chair", 0), "Mug": ("03797390", "mug", 36)}


def write_shapenetpart(root: Path, counts=(("train", 4), ("val", 2), ("test", 2)), rows: int = 400) -> Path:
    """Write DIR with ``counts`` shapes per category and split, ``rows`` lines per file."""
    root = Path(root)
    (root / "train_test_split").mkdir(parents=True, exist_ok=True)
    (root / "synsetoffset2category.txt").write_text("".join(f"{c}\t{s}\n" for c, (s, _, _) in CATS.items()))
    n_total = sum(n for _, n in counts)
    prim = create_dataset(f"builtin:primitives?n_train={n_total}&n_test=0", "train", num_points=rows)
    by_class = {name: [i for i, sid in enumerate(prim.ids) if sid.startswith(name + "/")] for name in prim.classes}
    k = 0
    for split, n in counts:
        entries = []
        for cat, (synset, source, first) in CATS.items():
            for j in range(n):
                s = prim.load(by_class[source][k + j])
                local = s.parts - prim.class_parts[prim.classes.index(source)][0]
                normals = np.tile([0.0, 0.0, 1.0], (rows, 1))
                table = np.column_stack([s.points, normals, first + local])
                name = f"{split}{j:03d}"
                (root / synset).mkdir(exist_ok=True)
                np.savetxt(root / synset / f"{name}.txt", table, fmt=["%.6f"] * 6 + ["%d"])
                entries.append(f"shape_data/{synset}/{name}")
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(entries))
        k += n
    return root
