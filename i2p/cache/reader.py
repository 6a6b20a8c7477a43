"""Reading a finished cache for training: a map-style torch Dataset over its valid samples.

Each DataLoader worker opens the store itself (zarr handles are not shared across processes),
and reads one sample = one inner chunk per array, which is what the 1-sample inner chunking is
for. Per-sample augmentation parameters are drawn here from ``(seed, epoch, index)`` so they
do not depend on worker count, rank count or where a resumed run starts.
"""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from i2p.cache import store as cs
from i2p.cache.augment import apply_transform
from i2p.cache.direct_read import ShardedArrayReader
from i2p.common.errors import CacheError
from i2p.common.geometry import stable_seed


def open_for_training(url: str, num_points: int | None = None) -> dict:
    """Check that the cache at ``url`` is usable and return its attributes.

    Refuses (one line): a missing path, another format version, an incomplete cache, or a
    cache built with another point count than asked for.
    """
    root = cs.open_store(url)
    attrs = dict(root.attrs)
    layout = cs.layout_of(root)
    done = cs.done_shards(root)
    if not attrs.get("complete") or len(done) < layout.num_shards:
        raise CacheError(f"cache {url} is incomplete ({len(done)}/{layout.num_shards} shards): "
                         "finish it by re-running the same `i2p cache build` command")
    if num_points is not None and layout.num_points != num_points:
        raise CacheError(f"cache {url} was built with {layout.num_points} points per cloud, the run asks for "
                         f"{num_points}: rebuild the cache with --points {num_points} or drop the setting")
    if attrs.get("num_valid", 0) < 1:
        raise CacheError(f"cache {url} holds no valid sample")
    _probe_shards(root, layout, done, url)
    return attrs


def _probe_shards(root, layout, done: dict, url: str) -> None:
    """Read one valid sample of every shard of every array, up front. Why: a shard file that is
    missing, truncated or overwritten (its index, at the end, no longer reads) then stops the run
    before its directory is made, not at the shard's first batch hours in; the cost is one
    chunk per shard and array, not the full read of ``i2p cache verify``. Flipped bytes inside
    another chunk are caught when that sample is read (its CRC32C), also before a step uses it."""
    skipped = {k["index"] for m in done.values() for k in m.get("skips", [])}
    for shard in sorted(done):
        i = next((j for j in range(*layout.shard_range(shard)) if j not in skipped), None)
        for name in layout.array_specs() if i is not None else ():
            try:
                ok = bool(np.isfinite(np.asarray(root[name][i], dtype=np.float32)).all())
            except Exception as exc:  # noqa: BLE001 - corrupt bytes surface as codec errors
                ok, why = False, f"cannot be read ({type(exc).__name__})"
            else:
                why = "holds NaN/Inf (not written?)"
            if not ok:
                raise CacheError(f"cache {url}: {name} of shard {shard} {why}; run 'i2p cache verify' and "
                                 "re-run the cache build to repair it")


def augmentation_draw(seed: int, epoch: int, index: int, scale_range: tuple[float, float] = (2 / 3, 3 / 2),
                      shift_range: float = 0.2, renders: int = 0) -> tuple[np.ndarray, np.ndarray, int | None]:
    """The augmentation of sample ``index`` in ``epoch``, drawn from ``(seed, epoch, index)``:
    ``(scale [1,3], shift [1,3], render)`` with per-axis scale U[scale_range], shift
    U[-shift_range, shift_range], and, when the cache holds ``renders`` K > 0 augmented renders,
    the one picked (uniform over 0..K-1, drawn after the scale and shift, which therefore do not
    change); ``render`` is None when ``renders`` is 0."""
    rng = np.random.default_rng(stable_seed(seed, epoch, int(index)))
    scale = rng.uniform(*scale_range, size=(1, 3))
    shift = rng.uniform(-shift_range, shift_range, size=(1, 3))
    render = int(rng.integers(renders)) if renders > 0 else None
    return scale.astype(np.float32), shift.astype(np.float32), render


def augmentation_params(seed: int, epoch: int, index: int, scale_range: tuple[float, float] = (2 / 3, 3 / 2),
                        shift_range: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """``(scale [1,3], shift [1,3])`` float32 of sample ``index`` in ``epoch``: per-axis scale
    U[scale_range], shift U[-shift_range, shift_range], drawn from ``(seed, epoch, index)``."""
    return augmentation_draw(seed, epoch, index, scale_range, shift_range)[:2]


def official_order(points: np.ndarray, scale: np.ndarray, shift: np.ndarray, seed: int, epoch: int,
                   index: int, draw: int | None = None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The official loader's steps on a cached cloud (datasets/ShapeNet55Dataset.py): a random
    order drawn from ``(seed, 'order', epoch, index)`` (the official draws a random subset, so the
    first point, where FPS starts, is random), then ``pc_norm`` (centre on the mean, divide by
    the largest norm), then the augmentation. The points are returned re-ordered but not
    re-normalised: the normalisation is folded into the augmentation, ``(p - c) / m * s + t =
    p * (s / m) + (t - c * s / m)``, because the cached 2D targets are looked up at the cached
    coordinates. ``draw``: keep only the first ``draw`` points of the random order (the official
    2048 of 8192, from a cache built with more points than the model takes)."""
    rng = np.random.default_rng(stable_seed(seed, "order", epoch, int(index)))
    pts = np.ascontiguousarray(points[rng.permutation(len(points))[:draw]])
    c = pts.mean(axis=0, keepdims=True)
    m = float(np.sqrt(((pts - c) ** 2).sum(axis=1)).max()) or 1.0
    new_scale = (scale / m).astype(np.float32)
    new_shift = (shift - c * scale / m).astype(np.float32)
    return torch.from_numpy(pts), new_scale, new_shift


class CacheDataset(torch.utils.data.Dataset):
    """Valid samples of a cache as dicts of tensors.

    Keys: ``points [P,3] f32``, ``features [V,h,w,C] f16`` and ``saliency [V,h,w] f32`` (unless
    ``with_targets=False``, e.g. for the online teacher), ``proj [V,5]``, ``label``, ``index``,
    ``scale [1,3]``, ``shift [1,3]`` (augmentation; identity when ``augment`` is False).

    ``aug_renders=True`` (a cache built with ``--aug-renders K``): when augmenting, each sample
    shows one of its K augmented renders, picked by :func:`augmentation_draw`: ``points`` are
    the stored cloud transformed by that render's parameters (exactly as the teacher saw it),
    ``features``/``saliency``/``proj`` are that render's, the random scale/shift is not applied
    (identity), and ``render`` is the pick (-1: the plain render).
    """

    def __init__(self, url: str, with_targets: bool = True, augment: bool = False, seed: int = 0,
                 scale_range: tuple[float, float] = (2 / 3, 3 / 2), shift_range: float = 0.2,
                 index_offset: int = 0, sampling: str = "fixed", draw: int | None = None,
                 aug_renders: bool = False):
        root = cs.open_store(url)
        skipped = {s["index"] for s in root.attrs.get("skips", [])}
        layout = cs.layout_of(root)
        n = layout.num_samples
        if aug_renders and layout.aug_renders < 1:
            raise CacheError(f"cache {url} has no augmented renders (built without --aug-renders): rebuild it "
                             "with `i2p cache build ... --aug-renders K` or drop data.aug_renders")
        self.renders = layout.aug_renders if aug_renders else 0
        self.url = url
        self.num_samples = n
        self.index_offset = index_offset  # makes ``index`` unique across several caches
        self.indices = np.array([i for i in range(n) if i not in skipped], dtype=np.int64)
        self.labels_all = np.asarray(root["label"][:])
        self.with_targets, self.augment, self.seed = with_targets, augment, seed
        self.scale_range, self.shift_range = scale_range, shift_range
        self.sampling, self.draw = sampling, draw  # draw: points per sample ('official' only)
        self.epoch = 0
        self._root = None
        self._handles: dict = {}
        self._direct: dict = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def labels(self) -> np.ndarray:
        return self.labels_all[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def _arrays(self):
        if self._root is None:
            self._root = cs.open_store(self.url)
        return self._root

    def _array(self, name: str):
        """The array handle, opened once per process: ``root[name]`` re-reads the array's
        metadata from the store on every call (~0.5 ms each, a fifth of a sample read)."""
        arr = self._handles.get(name)
        if arr is None:
            arr = self._handles[name] = self._arrays()[name]
        return arr

    def __getstate__(self):  # never pickle an open store into a worker
        state = dict(self.__dict__)
        state["_root"] = None
        state["_handles"] = {}
        state["_direct"] = {}
        return state

    def _direct_reader(self, name: str):
        """The :class:`~i2p.cache.direct_read.ShardedArrayReader` of array ``name`` (None:
        not a local cache of the known layout, read through zarr), built once per process."""
        if name not in self._direct:
            self._direct[name] = ShardedArrayReader.for_array(self._array(name))
        return self._direct[name]

    def _read_many(self, i: int, reads: list[tuple[str, int | None]]) -> list[torch.Tensor]:
        """Sample ``i`` of several arrays, fetched together: zarr v3 runs every read on its own
        I/O thread, so one read per array costs a thread hand-off each (~1 ms idle, far more on
        a loaded host: a third of what the 2D half added to a tiny step was these waits). One
        ``asyncio.gather`` over the arrays is one hand-off. The values are the same bytes as
        :meth:`_read`; any failure is re-read one array at a time so that the error names it.

        A local cache is read without zarr (:mod:`i2p.cache.direct_read`: the same bytes, ~10x
        faster per array); any failure there is also re-read through zarr."""
        readers = [self._direct_reader(n) for n, _ in reads]
        if all(r is not None for r in readers):
            try:
                return [self._checked(rd.read(i, r), n, i) for rd, (n, r) in zip(readers, reads)]
            except CacheError:
                raise
            except Exception:  # noqa: BLE001 - a bad checksum or chunk: zarr's read names it
                return [self._read(n, i, r) for n, r in reads]
        try:
            from zarr.core.sync import sync

            handles = [_async(self._array(n)) for n, _ in reads]  # opened here, never inside zarr's loop

            async def fetch():
                return await asyncio.gather(*[a.getitem(i if r is None else (i, r))
                                              for a, (_, r) in zip(handles, reads)])

            arrays = sync(fetch())
        except Exception:  # noqa: BLE001 - an older zarr, or a damaged chunk: the per-array path says which
            return [self._read(n, i, r) for n, r in reads]
        return [self._checked(np.ascontiguousarray(x), n, i) for x, (n, _) in zip(arrays, reads)]

    def _checked(self, x: np.ndarray, name: str, i: int) -> torch.Tensor:
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise CacheError(f"cache {self.url}: {name} of sample {i} (shard {i // cs.SHARD}) holds NaN/Inf; "
                             "run 'i2p cache verify' and re-run the cache build to repair it")
        return torch.from_numpy(x)

    def _read(self, name: str, i: int, render: int | None = None) -> torch.Tensor:
        """Sample ``i`` of array ``name`` (its augmented render ``render`` for the aug_* arrays);
        a damaged chunk (CRC, codec) or a non-finite value stops training with one line naming
        it, before anything is written."""
        try:
            x = np.ascontiguousarray(self._array(name)[i] if render is None else self._array(name)[i, render])
        except Exception as exc:  # noqa: BLE001 - corrupt bytes surface as codec errors
            raise CacheError(f"cache {self.url}: {name} of sample {i} (shard {i // cs.SHARD}) cannot be read "
                             f"({type(exc).__name__}); run 'i2p cache verify' and re-run the cache build to "
                             "repair it") from None
        return self._checked(x, name, i)

    def __getitem__(self, k: int) -> dict:
        i = int(self.indices[k])
        j = i + self.index_offset
        render = None
        if self.augment:
            scale, shift, render = augmentation_draw(self.seed, self.epoch, j, self.scale_range, self.shift_range,
                                                     self.renders)
        else:
            scale, shift = np.ones((1, 3), np.float32), np.zeros((1, 3), np.float32)
        if render is None:
            names = ("proj", "features", "saliency")
        else:  # the teacher's view of the transformed cloud; that transform replaces scale/shift
            names = ("aug_proj", "aug_features", "aug_saliency")
        reads = [("points", None), (names[0], render)]
        if self.with_targets:
            reads += [(names[1], render), (names[2], render)]
        got = self._read_many(i, reads)
        points = got[0].numpy()
        if render is not None:
            points = apply_transform(points, self._array("aug_params")[i, render])
            scale, shift = np.ones((1, 3), np.float32), np.zeros((1, 3), np.float32)
        item = {
            "points": torch.from_numpy(np.ascontiguousarray(points)),
            "proj": got[1],
            "label": int(self.labels_all[i]),
            "index": j,
            "render": -1 if render is None else render,
        }
        if self.with_targets:
            item["features"], item["saliency"] = got[2], got[3]
        if self.sampling == "official":
            item["points"], scale, shift = official_order(item["points"].numpy(), scale, shift, self.seed,
                                                          self.epoch, j, self.draw)
        item["scale"] = torch.from_numpy(scale)
        item["shift"] = torch.from_numpy(shift)
        return item


def _async(arr):
    """The asynchronous handle behind a zarr ``Array`` (public from zarr 3.1, private before)."""
    handle = getattr(arr, "async_array", None)
    return arr._async_array if handle is None else handle


TRAINING_KEYS = ("teacher", "teacher_weights_sha256", "num_points", "views", "view_axes", "image_size",
                 "feature_shape", "teacher_mean", "teacher_std")


def open_many_for_training(urls: list[str], num_points: int | None = None) -> list[dict]:
    """:func:`open_for_training` for each cache, plus a check that they can be mixed: same
    teacher (and weights), point count, views and feature shape."""
    attrs = [open_for_training(u, num_points) for u in urls]
    first = attrs[0]["settings"]
    for url, a in zip(urls[1:], attrs[1:]):
        diff = [k for k in TRAINING_KEYS if a["settings"].get(k) != first.get(k)]
        if diff:
            raise CacheError(f"cache {url} cannot be mixed with {urls[0]}: {', '.join(diff)} differ")
    return attrs


class MultiCacheDataset(torch.utils.data.ConcatDataset):
    """Several caches built with the same teacher and settings, as one dataset. Sample
    ``index`` values are offset per cache so per-sample seeds stay unique."""

    def __init__(self, urls: list[str], **kwargs):
        parts, offset = [], 0
        for url in urls:
            part = CacheDataset(url, index_offset=offset, **kwargs)
            offset += part.num_samples
            parts.append(part)
        super().__init__(parts)
        self.parts = parts

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate([p.labels for p in self.parts])
