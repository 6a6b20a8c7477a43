"""Reading one sample of a local cache array without zarr's machinery: same bytes, a tenth of the time.

Why: a training step reads each sample's points, projection, teacher maps and saliency
(four arrays). Through zarr v3 every read costs ~1.8 ms even for the 60 bytes of a
projection (async hand-off to zarr's I/O thread, codec pipeline, sharding index decode on every
call), so the 2D half's two extra arrays made a tiny-model step read twice as long as a
3D-only one (``benchmarks``: 32 vs 15 ms per batch of 4). The cache's layout is fixed by
``store.create_store`` (shards of 64 samples, one sample per inner chunk, codecs bytes ->
zstd -> crc32c, shard index at the end with its own crc32c), so a local read is: the shard
file's index (read once per shard and kept: 16 bytes per sample), one ``pread`` of the inner
chunk, its crc32c checked, zstd decoded, viewed as the array's dtype.

Only what zarr would return is returned: the checksum is checked as zarr checks it (a mismatch
raises, and the caller then reads through zarr, whose error names the array); an inner chunk
that was never written reads as the fill value, as in zarr. Anything this module does not
recognise (another store, codec, chunking or zarr metadata) gets no direct reader: the caller
keeps reading through zarr. Nothing here loads a whole shard: the index is 1 KiB per shard.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import google_crc32c  # zarr's own crc32c dependency
import numpy as np

EMPTY = np.uint64(2 ** 64 - 1)  # offset and length of an inner chunk that was never written
_INNER = [{"name": "bytes", "configuration": {"endian": "little"}},
          {"name": "zstd", "configuration": {"level": 0, "checksum": False}},
          {"name": "crc32c"}]
_INDEX = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]


def _crc32c(data) -> bytes:
    return np.uint32(google_crc32c.value(data)).tobytes()


class ShardedArrayReader:
    """Direct reads of ``array[i]`` (or ``array[i, r]``) from a local sharded array written by
    ``store.create_store``. Build with :meth:`for_array`, which returns None for any array it
    cannot read exactly as zarr does."""

    def __init__(self, directory: Path, shape: tuple, dtype: np.dtype, shard: tuple, inner: tuple, fill):
        from numcodecs.zstd import Zstd

        self.directory, self.shape, self.dtype = directory, shape, dtype
        self.shard, self.inner, self.fill = shard, inner, fill
        self.grid = tuple(s // c for s, c in zip(shard, inner))  # inner chunks per shard, per axis
        self.n_inner = int(np.prod(self.grid))
        self.itemsize = int(np.prod(inner)) * dtype.itemsize
        self._zstd = Zstd()
        self._index: dict[int, tuple[tuple, np.ndarray]] = {}

    @classmethod
    def for_array(cls, arr) -> "ShardedArrayReader | None":
        """The direct reader of zarr array ``arr``, or None when it is not a local array with
        exactly the layout and codecs the cache writes."""
        try:
            from zarr.storage import LocalStore

            if not isinstance(arr.store, LocalStore) or not hasattr(os, "pread"):  # pread: POSIX only
                return None
            meta = json.loads(json.dumps(arr.metadata.to_dict(), default=str))  # tuples -> lists
            if meta.get("zarr_format") != 3 or meta.get("storage_transformers"):
                return None
            enc = meta["chunk_key_encoding"]
            if enc.get("name") != "default" or (enc.get("configuration") or {}).get("separator") != "/":
                return None
            (codec,) = meta["codecs"]
            conf = codec["configuration"]
            if codec["name"] != "sharding_indexed" or conf.get("index_location", "end") != "end" \
                    or conf["codecs"] != _INNER or conf["index_codecs"] != _INDEX:
                return None
            shape = tuple(int(s) for s in meta["shape"])
            shard = tuple(int(s) for s in meta["chunk_grid"]["configuration"]["chunk_shape"])
            inner = tuple(int(s) for s in conf["chunk_shape"])
            dtype = np.dtype(arr.dtype).newbyteorder("<")
            if dtype.kind != "f" or len(shape) < 2 or any(s % c for s, c in zip(shard, inner)) \
                    or inner[0] != 1 or any(c != s for c, s in zip(inner[2:], shape[2:])) or inner[1] not in (1, shape[1]):
                return None
            return cls(Path(arr.store.root) / arr.path, shape, dtype, shard, inner, arr.fill_value)
        except Exception:  # noqa: BLE001 - an unknown zarr version or layout: zarr reads it
            return None

    def _shard_index(self, fd: int, shard: int) -> np.ndarray:
        """``[n_inner, 2]`` (offset, length) of shard ``shard``'s inner chunks, read once per
        version of the file (size and mtime: a rebuilt shard is re-read)."""
        st = os.fstat(fd)
        stamp = (st.st_size, st.st_mtime_ns)
        hit = self._index.get(shard)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        size = self.n_inner * 16
        raw = os.pread(fd, size + 4, st.st_size - size - 4)
        if len(raw) != size + 4 or _crc32c(raw[:size]) != raw[size:]:
            raise ValueError(f"shard {shard}: index checksum mismatch")
        index = np.frombuffer(raw[:size], dtype="<u8").reshape(self.n_inner, 2)
        self._index[shard] = (stamp, index)
        return index

    def read(self, i: int, sub: int | None = None) -> np.ndarray:
        """``array[i]`` (``sub`` None; one sample per inner chunk) or ``array[i, sub]``, as a
        new numpy array. Raises on a checksum or decode error (the caller then asks zarr)."""
        if not 0 <= i < self.shape[0]:
            raise IndexError(i)
        shard, local = divmod(i, self.shard[0])
        if sub is None:
            if self.inner[1] != self.shape[1]:
                raise ValueError("a whole sample spans several inner chunks")
            pos, picked = local * self.grid[1], (0, 0)
        else:
            pos, picked = local * self.grid[1] + sub // self.inner[1], (0, sub % self.inner[1])
        key = self.directory / "c" / str(shard) / "/".join("0" * (len(self.shape) - 1))
        try:
            fd = os.open(key, os.O_RDONLY)
        except FileNotFoundError:  # a shard never written: zarr returns the fill value
            chunk = np.full(self.inner, self.fill, dtype=self.dtype)
        else:
            try:
                offset, length = self._shard_index(fd, shard)[pos]
                if offset == EMPTY and length == EMPTY:
                    chunk = np.full(self.inner, self.fill, dtype=self.dtype)
                else:
                    raw = os.pread(fd, int(length), int(offset))
                    body = raw[:-4]
                    if len(raw) != length or length < 4 or _crc32c(body) != raw[-4:]:
                        raise ValueError(f"sample {i}: chunk checksum mismatch")
                    data = self._zstd.decode(body)
                    if len(data) != self.itemsize:
                        raise ValueError(f"sample {i}: {len(data)} bytes decoded, {self.itemsize} expected")
                    chunk = np.frombuffer(data, dtype=self.dtype).reshape(self.inner)
            finally:
                os.close(fd)
        out = chunk[0] if sub is None else chunk[picked]
        return np.array(out, dtype=self.dtype.newbyteorder("="))
