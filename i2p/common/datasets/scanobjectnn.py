"""``scanobjectnn:DIR[?variant=obj_bg|obj_only|pb_t50_rs]``: ScanObjectNN h5 files.

The three protocols of the paper are three file pairs of the official release; the variant
picks the pair (default OBJ-BG, the SVM protocol). Files are looked for in the release's
sub-folder (main_split / main_split_nobg) and then directly in DIR, so a folder holding just
one variant's two files also works.
"""

from __future__ import annotations

from i2p.common.datasets._common import existing_path, split_options, split_parts
from i2p.common.datasets._h5 import H5RowsDataset
from i2p.common.datasets.base import register_reader
from i2p.common.errors import DataSpecError

CLASSES = ["bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table",
           "bed", "pillow", "sink", "sofa", "toilet"]

# variant -> (sub-folder, train file, test file)
VARIANTS = {
    "obj_bg": ("main_split", "training_objectdataset.h5", "test_objectdataset.h5"),
    "obj_only": ("main_split_nobg", "training_objectdataset.h5", "test_objectdataset.h5"),
    "pb_t50_rs": ("main_split", "training_objectdataset_augmentedrot_scale75.h5",
                  "test_objectdataset_augmentedrot_scale75.h5"),
}


@register_reader("scanobjectnn")
def open_scanobjectnn(arg: str, *, split: str, num_points: int, seed: int, spec: str) -> H5RowsDataset:
    base, opts = split_options(arg, spec, allowed=("variant",))
    variant = opts.get("variant", "obj_bg").lower().replace("-", "_")
    if variant not in VARIANTS:
        raise DataSpecError(f"unknown ScanObjectNN variant {opts['variant']!r} in {spec!r}: "
                            f"choose one of {', '.join(VARIANTS)}")
    root = existing_path(base, spec, want_dir=True)
    sub, train_name, test_name = VARIANTS[variant]
    found = {}
    for part, name in (("train", train_name), ("test", test_name)):
        for cand in (root / sub / name, root / name):
            if cand.is_file():
                found[part] = cand
                break
    present = [p for p in ("train", "test") if p in found]
    for part in split_parts(split):
        if part not in found and not (split == "all" and present):
            name = train_name if part == "train" else test_name
            raise DataSpecError(f"ScanObjectNN {variant} {part} file not found: "
                                f"{root / sub / name} (or {root / name})")
    parts = [(p, [found[p]]) for p in split_parts(split) if p in found]
    return H5RowsDataset(parts, classes=CLASSES, spec=spec, split=split, num_points=num_points,
                         seed=seed, present=present)
