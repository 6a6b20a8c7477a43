"""The reader contract and the registry that maps a ``--data`` spec to a reader.

A spec is ``KIND:ARG`` (``meshes:DIR``, ``npz:FILE``, ``builtin:primitives``), optionally
followed by a generic ``#classes=SELECTION`` suffix that any reader honours
(:mod:`i2p.common.datasets.subset`; :func:`i2p.common.datasets.spec.create_dataset` opens a
spec). Each reader is
registered under its KIND with :func:`register_reader`, like timm's model registry, so a new
format is one module and one decorator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from i2p.common.errors import DataSpecError

SPLITS = ("train", "test", "all")
# A reader whose data defines a validation split (ShapeNetPart's official lists) registers with
# ``splits=SPLITS_WITH_VAL``; every other reader keeps refusing 'val'.
SPLITS_WITH_VAL = ("train", "val", "test", "all")


@dataclass
class Sample:
    points: np.ndarray  # float32 [P, 3], centred, unit sphere
    label: int
    id: str
    # int64 [P] global part id of every point, for readers with part annotations (else None);
    # the parts of class ``label`` are ``PointDataset.class_parts[label]``.
    parts: np.ndarray | None = None


class PointDataset:
    """Base class of every reader.

    Subclasses set ``spec``, ``split``, ``num_points``, ``classes`` (label -> name) and
    implement ``__len__``, ``ids`` (stable per-sample ids, cheap: no file is read) and
    ``load(i)`` which returns a :class:`Sample` or raises
    :class:`~i2p.common.errors.SampleError` for an unusable sample.
    ``labels`` must be cheap too (no point loading) because few-shot and splits need it.
    """

    spec: str
    split: str
    num_points: int
    classes: list[str]
    # Part segmentation (None for a reader without part labels): the global part ids of every
    # class (label -> ids; ranges as ShapeNetPart's 0..49) and a name per global part id.
    class_parts: list[list[int]] | None = None
    part_names: list[str] | None = None

    @property
    def has_parts(self) -> bool:
        return self.class_parts is not None

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def ids(self) -> Sequence[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def labels(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        return self.load(index)

    def has_split(self, split: str) -> bool:
        """Whether the underlying data defines ``split`` (a spec may have no test split)."""
        return True

    def fingerprint(self) -> str:
        """sha256 over spec, split, point count and the (id, label) list: changes when the
        sample set changes, so caches and results can say which data they came from."""
        import hashlib

        h = hashlib.sha256(f"{self.spec}|{self.split}|{self.num_points}".encode())
        for i, lab in zip(self.ids, self.labels):
            h.update(f"{i}\x1f{int(lab)}\n".encode())
        return h.hexdigest()


ReaderFactory = Callable[..., PointDataset]
READERS: dict[str, ReaderFactory] = {}
READER_SPLITS: dict[str, tuple[str, ...]] = {}  # the split names each reader accepts


def register_reader(kind: str, splits: tuple[str, ...] = SPLITS) -> Callable[[ReaderFactory], ReaderFactory]:
    """Register a reader under ``kind``; ``splits`` are the split names it accepts."""
    def deco(fn: ReaderFactory) -> ReaderFactory:
        READERS[kind] = fn
        READER_SPLITS[kind] = tuple(splits)
        return fn

    return deco


def list_readers() -> list[str]:
    return sorted(READERS)


def parse_spec(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str) or ":" not in spec:
        raise DataSpecError(
            f"malformed data spec {spec!r}: expected KIND:ARG, KIND one of {', '.join(list_readers())}"
        )
    kind, arg = spec.split(":", 1)
    if kind not in READERS:
        raise DataSpecError(f"unknown data kind {kind!r} in {spec!r}: choose one of {', '.join(list_readers())}")
    if not arg:
        raise DataSpecError(f"data spec {spec!r} has an empty argument after '{kind}:'")
    return kind, arg
