"""A damaged cache: ``verify`` names the shard and the samples, and re-running the same
``cache build`` rebuilds exactly the damaged shards, byte for byte as they were."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import zarr

from conftest import build_small_cache
from i2p.cache.inspect import verify_cache
from i2p.cache.store import DATA_ARRAYS

DATA = "builtin:primitives?n_train=6&n_test=1"  # 78 samples: 2 shards


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _shard_file(root, name, shard):
    return next(p for p in (root / name / "c" / str(shard)).rglob("*") if p.is_file())


def test_flipped_bytes_and_nan_are_named_and_repaired_byte_identical(tmp_path):
    out = tmp_path / "c"
    build_small_cache(out, data=DATA, points=128)
    before = _files(out)
    assert verify_cache(str(out)) == []

    f = _shard_file(out, "features", 1)
    data = bytearray(f.read_bytes())
    for k in range(len(data) // 3, len(data) // 3 + 4):  # inside a chunk, not the shard index
        data[k] ^= 0xFF
    f.write_bytes(bytes(data))
    sal = zarr.open_group(str(out), mode="a")["saliency"]
    row = sal[3]
    row[0, 0, 0] = np.nan
    sal[3] = row

    problems = verify_cache(str(out))
    assert any(p.startswith("shard 1: features unreadable for") for p in problems), problems
    assert "shard 0: saliency has unwritten or non-finite values for 1 samples (3)" in problems, problems

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_small_cache(out, data=DATA, points=128)
    assert any("rebuilding 2 damaged shards" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert verify_cache(str(out)) == []
    after = _files(out)
    data_files = [p for p in before if p.parts[0] in DATA_ARRAYS and p.parts[1] == "c"]
    assert len(data_files) == 2 * len(DATA_ARRAYS)
    changed = [p for p in data_files if before[p] != after.get(p)]
    assert changed == [], changed  # every shard file as it was built the first time
    # the shard markers and the root attributes hold the build's timings: only those differ
    assert [p for p in before if before[p] != after.get(p) and p.parts[0] != "shards" and str(p) != "zarr.json"] == []


def test_pretrain_refuses_a_damaged_cache_with_one_line(tmp_path):
    from i2p.common.errors import CacheError
    from i2p.stage2_pretrain import config as pcfg
    from i2p.stage2_pretrain.train import pretrain

    out = tmp_path / "c"
    build_small_cache(out, data="builtin:primitives?n_train=2&n_test=1", points=512)
    f = _shard_file(out, "features", 0)
    data = bytearray(f.read_bytes())
    for k in range(len(data) // 3, len(data) // 3 + 4):
        data[k] ^= 0xFF
    f.write_bytes(bytes(data))
    cfg = pcfg.resolve("tiny", ["data.workers=0", "log.progress=false", "optim.batch_size=8", "optim.epochs=1",
                                "data.holdout=0", "model.enc_depths=[1,1,1]"])
    with pytest.raises(CacheError, match=r"features of sample \d+ \(shard 0\) cannot be read") as info:
        pretrain(str(out), str(tmp_path / "run"), cfg)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_disk_full_during_a_shard_write_is_one_line_and_a_rerun_completes(tmp_path, monkeypatch):
    import errno
    import os

    from zarr.storage import LocalStore

    from i2p.common.errors import CacheError

    out = tmp_path / "c"
    ref = tmp_path / "ref"
    build_small_cache(ref, data=DATA, points=128)
    original = LocalStore.set

    async def full(self, key, value):
        if key.startswith("features/c/1"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await original(self, key, value)

    monkeypatch.setattr(LocalStore, "set", full)
    with pytest.raises(CacheError, match="cannot write shard 1 .*No space left on device.*re-run") as info:
        build_small_cache(out, data=DATA, points=128)
    assert "\n" not in str(info.value)
    monkeypatch.setattr(LocalStore, "set", original)
    assert any("shard" in p for p in verify_cache(str(out)))  # shard 0 kept, shard 1 missing
    build_small_cache(out, data=DATA, points=128)
    assert verify_cache(str(out)) == []
    a, b = _files(ref), _files(out)
    data_files = [p for p in a if p.parts[0] in DATA_ARRAYS and p.parts[1] == "c"]
    assert data_files and all(a[p] == b[p] for p in data_files)


def test_a_damaged_sample_read_in_a_loader_worker_is_the_same_one_line(tmp_path, capsys):
    import torch

    from i2p.cache.reader import CacheDataset
    from i2p.cli import main
    from i2p.common.errors import CacheError

    out = tmp_path / "c"
    build_small_cache(out, data="builtin:primitives?n_train=2&n_test=1", points=512)
    f = _shard_file(out, "features", 0)
    data = bytearray(f.read_bytes())
    for k in range(len(data) // 3, len(data) // 3 + 4):
        data[k] ^= 0xFF
    f.write_bytes(bytes(data))
    ds = CacheDataset(str(out))
    in_main = {}
    for i in range(len(ds)):
        try:
            ds[i]
        except CacheError as exc:
            in_main[i] = str(exc)
    assert in_main, "the flipped bytes damaged no sample"
    i, line = next(iter(in_main.items()))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, [i]), num_workers=1)
    with pytest.raises(CacheError) as info:
        next(iter(loader))
    assert str(info.value) == line and "\n" not in line  # not "Caught CacheError in DataLoader worker ..."

    rc = main(["pretrain", "--cache", str(out), "--out", str(tmp_path / "run"), "--config", "tiny", "--device", "cpu",
               "--epochs", "1", "--batch-size", "8", "--set", "data.workers=1", "--set", "data.holdout=0",
               "--set", "log.progress=false", "--set", "data.normalize_targets=false",
               "--set", "model.global_ratio=0"])  # no target statistics: the first read is in the worker
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("i2p: error: cache ") and "cannot be read" in err[0], err
    assert not (tmp_path / "run" / "last.ckpt").exists()


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_pretrain_checks_every_shard_up_front(tmp_path, damage):
    from i2p.common.errors import CacheError
    from i2p.stage2_pretrain import config as pcfg
    from i2p.stage2_pretrain.train import pretrain

    out = tmp_path / "c"
    build_small_cache(out, data=DATA, points=128)
    f = _shard_file(out, "saliency", 1)  # the last shard: read last by an epoch
    if damage == "truncated":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:
        f.unlink()
    cfg = pcfg.resolve("tiny", ["data.workers=0", "log.progress=false", "optim.batch_size=8", "optim.epochs=1",
                                "data.holdout=0", "model.enc_depths=[1,1,1]", "data.points=128"])
    with pytest.raises(CacheError, match=r"saliency of shard 1 (cannot be read|holds NaN/Inf)") as info:
        pretrain(str(out), str(tmp_path / "run"), cfg)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()  # refused before the run directory, let alone a checkpoint
