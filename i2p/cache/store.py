"""The stage-1 cache: a Zarr v3 store (a directory or any fsspec URL).

Layout (first axis = sample)::

    points    [N,P,3]      float32  the P-point cloud that was projected (unit sphere)
    features  [N,V,h,w,C]  float16  teacher feature maps
    saliency  [N,V,h,w]    float32  teacher saliency maps
    proj      [N,V,5]      float32  per-view raster params (min a, min b, cell, shift a, shift b)
    label     [N]          int64    written once at creation
    id        [N]          str      written once at creation
    shards/NNNNN           group    completion marker of shard NNNNN (attrs: skips, timings)

Only with ``--aug-renders K`` (settings ``aug_renders`` > 0; see :mod:`i2p.cache.augment`)::

    aug_features [N,K,V,h,w,C] float16  teacher maps of K transformed copies of each cloud
    aug_saliency [N,K,V,h,w]   float32
    aug_proj     [N,K,V,5]     float32  raster params of each transformed cloud
    aug_params   [N,K,7]       float32  each transform: scale xyz, shift xyz, angle about y

These arrays are additive (one render per inner chunk): a cache without them is the same
format, and a reader that does not know them reads the rest unchanged, so the format version
stays 1.

Why this shape: samples are sharded 64 to a shard file with one sample per inner chunk (random
sample reads are ~20x faster than with 64-sample chunks); arrays are pre-allocated with a NaN
fill so an unwritten sample is loud, never silent zeros; a shard's data is written whole (one
atomic file per array) and only then its marker group, so "marker present" means "done" and a
killed or parallel build redoes exactly the missing shards.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
import zarr.codecs

from i2p.common.errors import CacheError

FORMAT_VERSION = 1
SHARD = 64
DATA_ARRAYS = ("points", "features", "saliency", "proj")


@dataclass(frozen=True)
class CacheLayout:
    num_samples: int
    num_points: int
    views: int
    feature_shape: tuple[int, int, int]  # h, w, C
    aug_renders: int = 0  # K augmented renders per shape (0: none, no aug_* arrays)

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_samples / SHARD)

    def shard_range(self, shard: int) -> tuple[int, int]:
        return shard * SHARD, min((shard + 1) * SHARD, self.num_samples)

    def array_specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        n, p, v, k = self.num_samples, self.num_points, self.views, self.aug_renders
        h, w, c = self.feature_shape
        specs = {
            "points": ((n, p, 3), "float32"),
            "features": ((n, v, h, w, c), "float16"),
            "saliency": ((n, v, h, w), "float32"),
            "proj": ((n, v, 5), "float32"),
        }
        if k > 0:
            specs.update({
                "aug_features": ((n, k, v, h, w, c), "float16"),
                "aug_saliency": ((n, k, v, h, w), "float32"),
                "aug_proj": ((n, k, v, 5), "float32"),
                "aug_params": ((n, k, 7), "float32"),
            })
        return specs


def _racing(make, attempts: int = 20):
    """Run ``make()`` (open-or-create of a group) and retry when a parallel builder created the
    same group between zarr's existence check and its own create (ContainsGroupError)."""
    for _ in range(attempts - 1):
        try:
            return make()
        except zarr.errors.ContainsGroupError:
            time.sleep(0.05)
    return make()


def _inner_chunk(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """One sample per inner chunk; for the aug_* arrays one render of one sample (training
    reads one of the K)."""
    return (1, 1) + shape[2:] if name.startswith("aug_") else (1,) + shape[1:]


def create_store(url: str, layout: CacheLayout, settings: dict[str, Any], labels: np.ndarray,
                 ids: list[str], extra_attrs: dict[str, Any]) -> zarr.Group:
    """Pre-allocate every array and write labels, ids and the settings attributes.

    Safe to race: two processes creating the same cache write the same bytes.
    """
    root = _racing(lambda: zarr.open_group(url, mode="a"))
    n = max(layout.num_samples, 1)
    # Each inner chunk (one sample; one render of one sample for the aug_* arrays) carries a
    # CRC32C of its compressed bytes: a flipped byte fails the read of exactly that chunk
    # (``i2p cache verify`` names the sample) instead of decoding to other numbers.
    codecs = [zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()]
    specs = {name: dict(shape=shape, dtype=dtype, chunks=_inner_chunk(name, shape), shards=(SHARD,) + shape[1:],
                        fill_value=np.nan, compressors=codecs) for name, (shape, dtype) in layout.array_specs().items()}
    specs["label"] = dict(shape=(layout.num_samples,), dtype="int64", chunks=(n,), fill_value=-1)
    specs["id"] = dict(shape=(layout.num_samples,), dtype=str, chunks=(n,))
    for name, spec in specs.items():
        if name not in root:
            try:  # never overwrite=True: a parallel builder may be writing the same array now
                root.create_array(name, overwrite=False, **spec)
            except zarr.errors.ContainsArrayError:
                pass
    # Labels and ids are cheap and identical for every builder: (re)write them every time, so a
    # builder killed between creating and filling them cannot leave -1 labels behind.
    root["label"][:] = np.asarray(labels, dtype=np.int64)
    root["id"][:] = np.asarray(ids, dtype=object).astype(str)
    root.attrs.update({"format_version": FORMAT_VERSION, "settings": settings, **extra_attrs})
    return root


def open_store(url: str, mode: str = "r") -> zarr.Group:
    try:
        root = zarr.open_group(url, mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError) as exc:
        raise CacheError(f"no i2p cache at {url} ({type(exc).__name__})") from None
    if "format_version" not in root.attrs:
        raise CacheError(f"{url} is not an i2p cache (no format_version attribute)")
    version = root.attrs["format_version"]
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CacheError(f"cache {url} has format version {version}, newer than this i2p reads "
                         f"({FORMAT_VERSION}): upgrade i2p to read it")
    if version != FORMAT_VERSION:
        raise CacheError(f"cache {url} has format version {root.attrs['format_version']}, "
                         f"this i2p reads version {FORMAT_VERSION}: rebuild it with `i2p cache build`")
    return root


def layout_of(root: zarr.Group) -> CacheLayout:
    s = root.attrs["settings"]
    return CacheLayout(s["num_samples"], s["num_points"], s["views"], tuple(s["feature_shape"]),
                       int(s.get("aug_renders") or 0))


def done_shards(root: zarr.Group) -> dict[int, dict]:
    """Shard index -> its marker attributes, for every finished shard."""
    if "shards" not in root:
        return {}
    out = {}
    for name, grp in root["shards"].groups():
        out[int(name)] = dict(grp.attrs)
    return out


def write_shard(root: zarr.Group, shard: int, lo: int, hi: int, arrays: dict[str, np.ndarray]) -> None:
    """Write one shard's arrays (its marker comes after, from the caller). A failed write (disk
    full, quota, I/O error) is one line; the shard has no marker, so a re-run redoes it."""
    try:
        for name, value in arrays.items():
            root[name][lo:hi] = value
    except OSError as exc:
        raise CacheError(f"cannot write shard {shard} of the cache at {root.store} ({exc.strerror or exc}); "
                         "the shards already written are kept: free space and re-run the same command") from None


def mark_shard_done(root: zarr.Group, shard: int, attrs: dict) -> None:
    grp = _racing(lambda: root.require_group("shards"))
    grp.create_group(f"{shard:05d}", overwrite=True, attributes=attrs)
