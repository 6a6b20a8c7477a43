"""``SPEC#classes=...``: class subsets for every reader (the class-disjoint transfer protocols)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, SHREC, build_small_cache, subprocess_env
from i2p.common.datasets import create_dataset
from i2p.common.errors import DataSpecError

PRIMS = "builtin:primitives?n_train=4&n_test=2"
# the shared data beside the main checkout or beside a worktree's parent
SHREC16 = next((p for p in (SHREC, REPO.parents[1] / "shared" / "data" / "shrec16") if p.is_dir()), SHREC)


def test_halves_are_disjoint_cover_all_and_are_relabelled():
    full = create_dataset(PRIMS, "train", num_points=64)
    a = create_dataset(PRIMS + "#classes=half:1/2", "train", num_points=64)
    b = create_dataset(PRIMS + "#classes=half:2/2", "train", num_points=64)
    assert len(full.classes) == 13
    assert a.classes == full.classes[:6] and b.classes == full.classes[6:]
    assert len(a) == 6 * 4 and len(b) == 7 * 4 and set(a.ids).isdisjoint(b.ids)
    assert sorted(a.ids + b.ids) == sorted(full.ids)
    assert sorted(set(a.labels.tolist())) == list(range(6)) and sorted(set(b.labels.tolist())) == list(range(7))
    # a sample of the subset is the reader's own sample (same points), with the new label
    i = b.ids.index("mug/train/0001")
    s, ref = b.load(i), full.load(full.ids.index("mug/train/0001"))
    assert np.array_equal(s.points, ref.points) and s.id == ref.id
    assert b.classes[s.label] == "mug" and full.classes[ref.label] == "mug" and s.label != ref.label
    # the test split gets the same classes in the same order
    bt = create_dataset(PRIMS + "#classes=half:2/2", "test", num_points=64)
    assert bt.classes == b.classes and len(bt) == 7 * 2


@pytest.mark.parametrize("sel,want", [("0-2", [0, 1, 2]),
                                      ("torus,box", [1, 4]),  # the reader's order, not the list's
                                      ("12,0", [0, 12]),
                                      ("part:3/3", list(range(8, 13))),  # 13 classes: [0,4) [4,8) [8,13)
                                      ("part:1/3,half:2/2", list(range(0, 4)) + list(range(6, 13))),
                                      ("box,1,0-1", [0, 1])])
def test_selection_forms(sel, want):
    full = create_dataset(PRIMS, "train", num_points=32).classes
    assert full[:2] == ["sphere", "box"] and full[4] == "torus"
    ds = create_dataset(f"{PRIMS}#classes={sel}", "train", num_points=32)
    assert ds.classes == [full[i] for i in want]
    assert len(ds) == 4 * len(want)


def test_fingerprint_follows_the_subset():
    fps = {create_dataset(s, "train", num_points=32).fingerprint()
           for s in (PRIMS, PRIMS + "#classes=half:1/2", PRIMS + "#classes=half:2/2")}
    assert len(fps) == 3
    assert create_dataset(PRIMS + "#classes=half:1/2", "train", num_points=32).fingerprint() == \
        create_dataset(PRIMS + "#classes=half:1/2", "train", num_points=32).fingerprint()


@pytest.mark.parametrize("sel,match", [("dragon", "unknown class 'dragon'.*sphere, box"),
                                       ("half:3/2", "1 <= K <= N"), ("half:1/3", "half:K/2 only"),
                                       ("0-13", "indices run 0..12"), ("box,,torus", "empty item"),
                                       ("", "needs a value")])
def test_bad_selections_are_one_line_errors(sel, match):
    with pytest.raises(DataSpecError, match=match) as err:
        create_dataset(f"{PRIMS}#classes={sel}", "train", num_points=32)
    assert "\n" not in str(err.value)


def test_hash_not_followed_by_a_key_is_part_of_the_path(tmp_path):
    f = tmp_path / "a#b.npz"
    rng = np.random.default_rng(0)
    np.savez(f, points=rng.standard_normal((6, 50, 3)).astype(np.float32), labels=np.array([0, 0, 1, 1, 2, 2]),
             classes=np.array(["x", "y", "z"]))
    assert len(create_dataset(f"npz:{f}", "all", num_points=16)) == 6
    sub = create_dataset(f"npz:{f}#classes=y,z", "all", num_points=16)
    assert sub.classes == ["y", "z"] and sub.labels.tolist() == [0, 0, 1, 1]


@pytest.mark.skipif(not SHREC16.is_dir(), reason="SHREC'16 not present")
def test_shrec_halves():
    a = create_dataset(f"meshes:{SHREC16}#classes=half:1/2", "train", num_points=64)
    b = create_dataset(f"meshes:{SHREC16}#classes=half:2/2", "test", num_points=64)
    assert len(a.classes) == 15 and len(b.classes) == 15 and not set(a.classes) & set(b.classes)
    assert a.classes[0] == "alien" and len(a) == 15 * 16 and len(b) == 15 * 4


def test_cache_build_records_the_subset(tmp_path):
    from i2p.cache.reader import CacheDataset, open_for_training

    spec = PRIMS + "#classes=half:2/2"
    build_small_cache(tmp_path / "c", data=spec, points=64)
    attrs = open_for_training(str(tmp_path / "c"))
    assert attrs["settings"]["data_spec"] == spec
    assert attrs["settings"]["data_fingerprint"] == create_dataset(spec, "train", num_points=64).fingerprint()
    ds = CacheDataset(str(tmp_path / "c"), with_targets=False)
    assert len(ds) == 28 and sorted(set(np.asarray(ds.labels).tolist())) == list(range(7))


def test_eval_on_a_subset_via_the_cli(tmp_path):
    """`i2p eval svm --data SPEC#classes=...` unquoted through a shell; the result names 7 classes."""
    escaped = PRIMS.replace("&", r"\&")  # the reader option's '&' needs a shell escape; the '#' does not
    cmd = (f"{sys.executable} -m i2p eval svm --ckpt random --data {escaped}#classes=half:2/2 "
           f"--points 512 --C 0.01 --no-progress --out {tmp_path}/svm")
    r = subprocess.run(cmd, shell=True, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "svm" / "result.json").read_text())
    assert res["data"].endswith("#classes=half:2/2") and res["n_test"] == 14 and res["n_train"] == 28
    bad = subprocess.run(f"{sys.executable} -m i2p eval svm --ckpt random --data builtin:primitives#classes=dragon "
                         f"--points 64 --out {tmp_path}/bad", shell=True, env=subprocess_env(),
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown class 'dragon'" in bad.stderr
    assert "Traceback" not in bad.stderr
