"""Pieces every reader shares: option parsing, path checks, a list-backed dataset and
area-weighted triangle sampling.

Readers differ only in how they find (id, label) pairs and how they read one raw cloud; the
rest (index checks, error wrapping, centring + unit sphere + seeded resampling) lives here so
that every format returns clouds in exactly the same frame and with the same seeding rule.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from i2p.common.datasets.base import PointDataset, Sample
from i2p.common.errors import DataSpecError, SampleError
from i2p.common.geometry import normalize_unit_sphere, resample, resample_indices, stable_seed

# Surfaces are sampled at least this densely before normalising, so the centroid and radius
# (hence the frame) of a shape do not depend on the requested point count.
DENSE_DRAW = 2048

# Errors that mean "this one file is unusable" (rather than a bug in the reader).
READ_ERRORS = (OSError, ValueError, EOFError, KeyError, IndexError, TypeError, UnicodeDecodeError)


def split_options(arg: str, spec: str, allowed: Iterable[str]) -> tuple[str, dict[str, str]]:
    """``base?k=v&k=v`` -> (base, {k: v}). Unknown keys are refused so a typo never silently
    falls back to a default."""
    base, _, query = arg.partition("?")
    opts: dict[str, str] = {}
    allowed = set(allowed)
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise DataSpecError(f"malformed option {part!r} in data spec {spec!r}: expected KEY=VALUE")
        if key not in allowed:
            choices = ", ".join(sorted(allowed)) or "none"
            raise DataSpecError(f"unknown option {key!r} in data spec {spec!r} (allowed: {choices})")
        opts[key] = value
    if not base:
        raise DataSpecError(f"data spec {spec!r} has no path/name before '?'")
    return base, opts


def int_option(opts: dict[str, str], key: str, default: int, spec: str, minimum: int = 0) -> int:
    if key not in opts:
        return default
    try:
        value = int(opts[key])
    except ValueError:
        raise DataSpecError(f"option {key}={opts[key]!r} in {spec!r} is not an integer") from None
    if value < minimum:
        raise DataSpecError(f"option {key}={value} in {spec!r} must be >= {minimum}")
    return value


def existing_path(arg: str, spec: str, want_dir: bool) -> Path:
    """Resolve ``arg`` (``~`` expanded) and fail early, naming the path, if it is missing."""
    path = Path(os.path.expanduser(arg))
    kind = "directory" if want_dir else "file"
    if not path.exists():
        raise DataSpecError(f"data {kind} not found: {path} (from spec {spec!r})")
    if want_dir and not path.is_dir():
        raise DataSpecError(f"expected a directory, got a file: {path} (from spec {spec!r})")
    if not want_dir and path.is_dir():
        raise DataSpecError(f"expected a file, got a directory: {path} (from spec {spec!r})")
    return path


def split_parts(split: str) -> tuple[str, ...]:
    """The concrete splits a requested split is made of ('all' = train then test)."""
    return ("train", "test") if split == "all" else (split,)


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a list file; a missing list is a spec error."""
    if not path.is_file():
        raise DataSpecError(f"split list not found: {path}")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def finish_cloud(raw: np.ndarray, num_points: int, seed: int, sample_id: str) -> np.ndarray:
    """The one frame every reader returns: centred, unit sphere, exactly ``num_points``
    points chosen with a seed that depends only on (seed, id)."""
    pts = normalize_unit_sphere(raw)
    return np.ascontiguousarray(resample(pts, num_points, stable_seed(seed, sample_id)), dtype=np.float32)


def finish_cloud_parts(raw: np.ndarray, parts: np.ndarray, num_points: int, seed: int,
                       sample_id: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`finish_cloud` plus the part label of every chosen point (same points, same seed)."""
    parts = np.asarray(parts).reshape(-1)
    if len(parts) != len(raw):
        raise SampleError(f"{len(parts)} part labels for {len(raw)} points")
    pts = normalize_unit_sphere(raw)
    idx = resample_indices(len(pts), num_points, stable_seed(seed, sample_id))
    return (np.ascontiguousarray(pts[idx], dtype=np.float32),
            np.ascontiguousarray(parts[idx], dtype=np.int64))


def sample_triangles(tris: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points uniform on the surface of triangles ``tris`` [k, 3, 3]: a triangle is
    chosen with probability proportional to its area, then a uniform barycentric point."""
    tris = np.asarray(tris, dtype=np.float64)
    if tris.ndim != 3 or tris.shape[1:] != (3, 3) or len(tris) == 0:
        raise SampleError("mesh has no triangles")
    if not np.isfinite(tris).all():
        raise SampleError("NaN/Inf vertex coordinates")
    e1, e2 = tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]
    areas = 0.5 * np.linalg.norm(np.cross(e1, e2), axis=1)
    total = areas.sum()
    if not (np.isfinite(total) and total > 0):
        raise SampleError("mesh has zero surface area")
    idx = rng.choice(len(tris), size=n, p=areas / total)
    u, v = rng.random((2, n))
    flip = u + v > 1.0  # fold the unit square onto the triangle: uniform, no rejection
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    return tris[idx, 0] + u[:, None] * e1[idx] + v[:, None] * e2[idx]


class ListDataset(PointDataset):
    """A dataset that knows its (id, label) list up front and reads one raw cloud per index.

    Subclasses call ``super().__init__`` with the lists and implement ``_raw(i)`` returning an
    [n, >=3] array (or raising SampleError); ``load`` does the rest. A reader with part labels
    returns ``(array, parts [n])`` instead and sets ``class_parts``; the Sample then has ``parts``.
    """

    def __init__(self, *, spec: str, split: str, num_points: int, seed: int, ids: Sequence[str],
                 labels: Sequence[int] | np.ndarray, classes: Sequence[str],
                 present_splits: Iterable[str] = ("train", "test")) -> None:
        if not isinstance(num_points, (int, np.integer)) or num_points < 1:
            raise DataSpecError(f"num_points must be a positive integer, got {num_points!r}")
        self.spec, self.split, self.num_points, self.seed = spec, split, int(num_points), int(seed)
        self.classes = [str(c) for c in classes]
        self._ids = [str(i) for i in ids]
        self._labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self._labels.setflags(write=False)
        self._present = set(present_splits)
        if len(self._ids) != len(self._labels):
            raise DataSpecError(f"{spec!r}: {len(self._ids)} ids but {len(self._labels)} labels")
        if len(set(self._ids)) != len(self._ids):
            raise DataSpecError(f"{spec!r}: sample ids are not unique")
        if len(self._labels) and (self._labels.min() < 0 or self._labels.max() >= len(self.classes)):
            raise DataSpecError(f"{spec!r}: labels outside 0..{len(self.classes) - 1}")

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        return self._ids

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def has_split(self, split: str) -> bool:
        return split == "all" or split in self._present

    def _raw(self, i: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: int) -> Sample:
        n = len(self._ids)
        if not -n <= index < n:
            raise IndexError(f"sample index {index} out of range for {n} samples")
        i = int(index) % n
        sid = self._ids[i]
        try:
            raw = self._raw(i)
        except SampleError:
            raise
        except READ_ERRORS as err:
            raise SampleError(f"unreadable ({type(err).__name__}: {err})"[:300]) from err
        if isinstance(raw, tuple):
            pts, parts = finish_cloud_parts(raw[0], raw[1], self.num_points, self.seed, sid)
            return Sample(pts, int(self._labels[i]), sid, parts)
        return Sample(finish_cloud(raw, self.num_points, self.seed, sid), int(self._labels[i]), sid)

