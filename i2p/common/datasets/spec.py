"""``create_dataset``: a ``--data`` spec to a dataset -- the registered reader of its KIND,
restricted by the generic ``#classes=`` suffix when the spec has one."""

from __future__ import annotations

from i2p.common.datasets.base import READER_SPLITS, READERS, SPLITS, SPLITS_WITH_VAL, PointDataset, parse_spec
from i2p.common.datasets.subset import ClassSubset, split_suffix
from i2p.common.errors import DataSpecError


def create_dataset(spec: str, split: str = "train", num_points: int = 2048, seed: int = 0, **kwargs) -> PointDataset:
    """Open the dataset named by ``spec``. Raises DataSpecError for a malformed spec, an
    unknown kind, a missing path, an unknown split or an unknown class in ``#classes=``."""
    if split not in SPLITS_WITH_VAL:
        raise DataSpecError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    base_spec, suffix = split_suffix(spec)
    kind, arg = parse_spec(base_spec)
    if split not in READER_SPLITS[kind]:
        raise DataSpecError(f"unknown split {split!r} for {kind!r} data: choose one of "
                            f"{', '.join(READER_SPLITS[kind])}")
    ds = READERS[kind](arg, split=split, num_points=num_points, seed=seed, spec=base_spec, **kwargs)
    if "classes" in suffix:
        ds = ClassSubset(ds, spec, suffix["classes"])
    return ds
