"""``SPEC#classes=SELECTION``: any reader restricted to some of its classes.

Out-of-domain protocols need "pretrain on these classes, evaluate on the others" for every data
set, so the subset is a generic suffix handled by :func:`~i2p.common.datasets.create_dataset`
rather than an option of each reader. The suffix survives a shell unquoted (``#`` starts a
comment only at the start of a word), e.g. ``--data meshes:/data/shrec16#classes=half:1/2``.

SELECTION is a comma-separated list of items, each one of

* a class name (``alien``), exactly as the reader lists it;
* an index ``I`` or an inclusive index range ``I-J`` into the reader's class list (label order,
  which is alphabetical for every directory reader: meshes, modelnet40, ...);
* ``part:K/N``: the K-th of N contiguous, near-equal parts of the class list (``half:1/2`` and
  ``half:2/2`` are spellings of ``part:1/2`` and ``part:2/2``), so two parts of the same N are
  always disjoint and together cover every class.

Kept classes keep their relative order and are relabelled 0..n-1 (``classes`` holds their names),
so a classifier head or an SVM sees an ordinary n-class problem. The subset's fingerprint covers
the full spec and the remapped labels, so caches and results record which classes they used.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from i2p.common.datasets.base import PointDataset, Sample
from i2p.common.errors import DataSpecError

SUFFIX_KEYS = ("classes",)
_PART = re.compile(r"^(?:part|half):(\d+)/(\d+)$")
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def split_suffix(spec: str) -> tuple[str, dict[str, str]]:
    """``KIND:ARG#k=v#k=v`` -> (``KIND:ARG``, {k: v}). Only a ``#`` followed by a known key
    starts a suffix, so a path that merely contains ``#`` is left alone."""
    if not isinstance(spec, str) or "#" not in spec:
        return spec, {}
    pattern = re.compile(r"#(?=(?:" + "|".join(SUFFIX_KEYS) + r")=)")
    parts = pattern.split(spec)
    base, opts = parts[0], {}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key in opts:
            raise DataSpecError(f"data spec {spec!r} gives #{key}= twice")
        if not value:
            raise DataSpecError(f"data spec {spec!r}: #{key}= needs a value (e.g. #classes=half:1/2)")
        opts[key] = value
    return base, opts


def select_classes(selection: str, classes: Sequence[str], spec: str) -> list[int]:
    """Indices into ``classes`` (sorted, unique) named by ``selection`` (see module docstring)."""
    n = len(classes)
    by_name = {c: i for i, c in enumerate(classes)}
    keep: set[int] = set()
    for item in (x.strip() for x in selection.split(",")):
        if not item:
            raise DataSpecError(f"empty item in #classes={selection} of {spec!r}")
        if item in by_name:  # a name wins over an index reading ("0" could be a class name)
            keep.add(by_name[item])
            continue
        part, rng = _PART.match(item), _RANGE.match(item)
        if part:
            k, parts = int(part.group(1)), int(part.group(2))
            if item.startswith("half:") and parts != 2:
                raise DataSpecError(f"#classes={item} in {spec!r}: half:K/2 only (use part:K/N for other splits)")
            if not 1 <= k <= parts or parts > n:
                raise DataSpecError(f"#classes={item} in {spec!r}: need 1 <= K <= N <= {n} (the number of classes)")
            lo, hi = (k - 1) * n // parts, k * n // parts
            keep.update(range(lo, hi))
        elif rng:
            lo = int(rng.group(1))
            hi = int(rng.group(2)) if rng.group(2) is not None else lo
            if lo > hi or hi >= n:
                raise DataSpecError(f"#classes={item} in {spec!r}: class indices run 0..{n - 1}")
            keep.update(range(lo, hi + 1))
        else:
            shown = ", ".join(classes[:12]) + (f", ... ({n} in all)" if n > 12 else "")
            raise DataSpecError(f"unknown class {item!r} in {spec!r}: classes are {shown} "
                                "(or use indices I-J, part:K/N, half:1/2)")
    return sorted(keep)


class ClassSubset(PointDataset):
    """A reader's samples of some classes, relabelled 0..n-1 in the reader's class order.
    Everything but ids/labels/classes is the reader's own (attribute reads fall through)."""

    def __init__(self, base: PointDataset, spec: str, selection: str):
        self.base, self.spec, self.selection = base, spec, selection
        self.split, self.num_points = base.split, base.num_points
        kept = select_classes(selection, list(base.classes), spec)
        self.classes = [str(base.classes[i]) for i in kept]
        remap = np.full(len(base.classes), -1, dtype=np.int64)
        remap[kept] = np.arange(len(kept))
        labels = remap[np.asarray(base.labels, dtype=np.int64)]
        self._index = np.flatnonzero(labels >= 0)
        self._labels = labels[self._index]
        self._labels.setflags(write=False)
        base_ids = base.ids
        self._ids = [str(base_ids[i]) for i in self._index]
        self._remap = remap

    def __getattr__(self, name):  # reader-specific attributes (seed, root, ...)
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def __len__(self) -> int:
        return len(self._index)

    @property
    def ids(self) -> list[str]:
        return self._ids

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def has_split(self, split: str) -> bool:
        return self.base.has_split(split)

    def load(self, index: int) -> Sample:
        n = len(self._index)
        if not -n <= index < n:
            raise IndexError(f"sample index {index} out of range for {n} samples")
        s = self.base.load(int(self._index[int(index) % n]))
        return Sample(s.points, int(self._remap[s.label]), s.id)
