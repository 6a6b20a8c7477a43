"""Clouds as the file stores them: the first N points in stored order, not re-normalised.

Every reader normally returns its cloud centred, scaled to the unit sphere and resampled to N
points with a seed (``_common.finish_cloud``): one convention for every data set. The
official linear-SVM evaluation reads ``modelnet40_ply_hdf5_2048`` as ``data[item][:1024]``
(datasets/ModelNetDataset.py:50) and ScanObjectNN as all its stored points
(datasets/ScanObjectNNDataset.py:39-46): the first N points in the file's order, as stored
(those files are already normalised as a whole cloud, the subset is not re-normalised).
:func:`stored_points` gives that view of a reader whose files hold a fixed point order;
readers that sample their points (meshes, builtin primitives) have no stored order and are
refused.
"""

from __future__ import annotations

import hashlib

import numpy as np

from i2p.common.datasets._common import READ_ERRORS, ListDataset
from i2p.common.datasets.base import PointDataset, Sample
from i2p.common.errors import DataSpecError, SampleError

# Readers whose ``_raw`` returns the points in the order the file stores them.
STORED_ORDER_KINDS = ("modelnet40-h5", "scanobjectnn", "npz", "shapenet55", "modelnet40")


class StoredPoints(PointDataset):
    """``dataset``'s samples as their first ``num_points`` stored points (float32, no
    normalisation); a cloud with fewer stored points is a ``SampleError`` (skipped)."""

    def __init__(self, dataset: ListDataset):
        self.inner = dataset
        self.spec, self.split, self.num_points = dataset.spec, dataset.split, dataset.num_points
        self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.inner)

    @property
    def ids(self):
        return self.inner.ids

    @property
    def labels(self) -> np.ndarray:
        return self.inner.labels

    def has_split(self, split: str) -> bool:
        return self.inner.has_split(split)

    def fingerprint(self) -> str:
        """The reader's fingerprint, marked: the same samples, other points."""
        return hashlib.sha256(f"{self.inner.fingerprint()}|stored-order".encode()).hexdigest()

    def load(self, index: int) -> Sample:
        n = len(self.inner)
        if not -n <= index < n:
            raise IndexError(f"sample index {index} out of range for {n} samples")
        i = int(index) % n
        try:
            raw = np.asarray(self.inner._raw(i), dtype=np.float32)[:, :3]
        except SampleError:
            raise
        except READ_ERRORS as err:
            raise SampleError(f"unreadable ({type(err).__name__}: {err})"[:300]) from err
        if len(raw) < self.num_points:
            raise SampleError(f"{len(raw)} stored points, fewer than {self.num_points}")
        if not np.isfinite(raw).all():
            raise SampleError("NaN/Inf coordinates")
        return Sample(np.ascontiguousarray(raw[:self.num_points]), int(self.inner.labels[i]), self.inner.ids[i])

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()


def stored_points(dataset: PointDataset) -> StoredPoints:
    """:class:`StoredPoints` of ``dataset``; a one-line DataSpecError for a reader without a
    stored point order."""
    kind = str(dataset.spec).split(":", 1)[0]
    if kind not in STORED_ORDER_KINDS or not isinstance(dataset, ListDataset):
        raise DataSpecError(f"data {dataset.spec}: its points have no stored order (they are sampled); "
                            f"the official sampling needs one of {', '.join(STORED_ORDER_KINDS)}")
    return StoredPoints(dataset)
