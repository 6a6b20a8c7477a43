"""Reading cache samples without zarr (``i2p.cache.direct_read``): the same bytes as zarr for
every sample of every array, the same errors, and zarr kept for whatever it does not know."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from conftest import build_small_cache
from i2p.cache import direct_read
from i2p.cache.direct_read import ShardedArrayReader
from i2p.cache.reader import CacheDataset
from i2p.stage1_project.aug_renders import AugRenders

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = "builtin:primitives?n_train=6&n_test=1"  # 78 samples: 2 shards, the second one partial


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("direct") / "c"
    build_small_cache(out, data=DATA, points=128, aug=AugRenders(renders=2, scale=(0.7, 1.4), shift=0.2, rotate=30.0))
    return out


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_every_sample_of_every_array_is_zarrs_bytes(cache):
    root = zarr.open_group(str(cache), mode="r")
    read = {}
    for name, arr in root.arrays():
        rd = ShardedArrayReader.for_array(arr)
        if arr.dtype.kind != "f":  # labels and ids: read once, whole, through zarr
            assert rd is None, name
            continue
        assert rd is not None, name
        whole = arr[:]
        for i in range(arr.shape[0]):
            if name.startswith("aug_"):
                got = [rd.read(i, r) for r in range(arr.shape[1])]
                assert all(_same(g, whole[i, r]) for r, g in enumerate(got)), (name, i)
            else:
                assert _same(rd.read(i), whole[i]), (name, i)
        read[name] = arr.shape[0]
    assert {"points", "proj", "features", "saliency", "aug_features", "aug_saliency", "aug_proj", "aug_params"} <= set(read)
    assert read["features"] == 78


@pytest.mark.parametrize("renders", [False, True])
def test_the_dataset_reads_the_same_items_with_or_without_zarr(cache, monkeypatch, renders):
    direct = CacheDataset(str(cache), augment=True, seed=3, aug_renders=renders)
    items = [direct[k] for k in range(len(direct))]
    assert all(r is not None for r in direct._direct.values()) and len(direct._direct) == 4
    monkeypatch.setattr(ShardedArrayReader, "for_array", classmethod(lambda cls, arr: None))
    via_zarr = CacheDataset(str(cache), augment=True, seed=3, aug_renders=renders)
    for k, item in enumerate(items):
        ref = via_zarr[k]
        assert item.keys() == ref.keys()
        for key, v in item.items():
            assert torch.equal(v, ref[key]) if isinstance(v, torch.Tensor) else v == ref[key], (k, key)


def test_a_flipped_byte_is_refused_and_named_through_zarr(tmp_path):
    from i2p.common.errors import CacheError

    out = tmp_path / "c"
    build_small_cache(out, data="builtin:primitives?n_train=2&n_test=1", points=128)
    arr = zarr.open_group(str(out), mode="r")["features"]
    rd = ShardedArrayReader.for_array(arr)
    f = out / "features" / "c" / "0" / "0" / "0" / "0" / "0"
    data = bytearray(f.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside some sample's chunk
    f.write_bytes(bytes(data))
    bad = []
    for i in range(arr.shape[0]):
        try:
            rd.read(i)
        except ValueError as exc:
            assert "checksum" in str(exc)
            bad.append(i)
    assert len(bad) == 1  # one chunk damaged: only its sample fails, the others still read
    ds = CacheDataset(str(out))
    k = int(np.nonzero(ds.indices == bad[0])[0][0])
    with pytest.raises(CacheError, match=rf"features of sample {bad[0]} \(shard 0\) cannot be read"):
        ds[k]


def test_a_damaged_shard_index_is_refused(tmp_path):
    out = tmp_path / "c"
    build_small_cache(out, data="builtin:primitives?n_train=2&n_test=1", points=128)
    arr = zarr.open_group(str(out), mode="r")["saliency"]
    f = out / "saliency" / "c" / "0" / "0" / "0" / "0"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0x01  # the index's last entry
    f.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="index checksum"):
        ShardedArrayReader.for_array(arr).read(0)


def test_a_shard_never_written_reads_as_the_fill_value(tmp_path):
    out = tmp_path / "c"
    build_small_cache(out, data=DATA, points=128)
    for name in ("points", "features"):
        arr = zarr.open_group(str(out), mode="r")[name]
        for f in (out / name / "c" / "1").rglob("*"):
            if f.is_file():
                f.unlink()
        got = ShardedArrayReader.for_array(arr).read(70)
        assert got.shape == arr.shape[1:] and np.isnan(got).all() and _same(got, arr[70])


def test_a_rebuilt_shard_is_read_anew(tmp_path):
    """The kept shard index is the file's: a shard rewritten since (repair) is read again."""
    out = tmp_path / "c"
    build_small_cache(out, data="builtin:primitives?n_train=2&n_test=1", points=128)
    arr = zarr.open_group(str(out), mode="a")["proj"]
    rd = ShardedArrayReader.for_array(arr)
    assert _same(rd.read(5), arr[5])
    rows = arr[:]
    rows[5] += 1.0
    arr[:] = rows
    assert _same(rd.read(5), rows[5])


def test_unknown_layouts_stay_with_zarr(tmp_path):
    plain = zarr.create_array(str(tmp_path / "plain"), shape=(8, 3), chunks=(1, 3), dtype="float32")
    other_codecs = zarr.create_array(str(tmp_path / "lz"), shape=(8, 3), chunks=(1, 3), shards=(4, 3), dtype="float32",
                                     compressors=[zarr.codecs.BloscCodec()])
    in_memory = zarr.create_array(zarr.storage.MemoryStore(), shape=(8, 3), chunks=(1, 3), shards=(4, 3),
                                  dtype="float32", compressors=[zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()])
    local = zarr.create_array(str(tmp_path / "ok"), shape=(8, 3), chunks=(1, 3), shards=(4, 3), dtype="float32",
                              compressors=[zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()], fill_value=np.nan)
    assert [ShardedArrayReader.for_array(a) for a in (plain, other_codecs, in_memory)] == [None, None, None]
    local[:] = np.arange(24, dtype=np.float32).reshape(8, 3)
    rd = ShardedArrayReader.for_array(local)
    assert rd is not None and all(_same(rd.read(i), local[i]) for i in range(8))
    with pytest.raises(IndexError):
        rd.read(8)
    assert direct_read.EMPTY == np.uint64(2 ** 64 - 1)
