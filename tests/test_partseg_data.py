"""Part-labelled data: the ``shapenetpart:`` reader (on a folder in the release layout written
here) and the part labels of ``builtin:primitives``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from i2p.common.datasets import create_dataset
from i2p.common.datasets._common import finish_cloud
from i2p.common.datasets._shapes import generate
from i2p.common.errors import DataSpecError, SampleError
from i2p.common.geometry import stable_seed

from shapenetpart_fixture import write_shapenetpart


@pytest.fixture()
def snp(tmp_path):
    return write_shapenetpart(tmp_path / "snp", counts=(("train", 3), ("val", 1), ("test", 2)), rows=300)


def test_shapenetpart_splits_labels_parts(snp):
    spec = f"shapenetpart:{snp}"
    tr, va, te = (create_dataset(spec, s, num_points=256) for s in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (6, 2, 4)
    assert len(create_dataset(spec, "all", num_points=256)) == 12
    assert tr.classes == ["Airplane", "Mug"] and tr.class_parts == [[0, 1, 2, 3], [36, 37]]
    assert len(tr.part_names) == 50 and tr.part_names[36] == "Mug/0"
    assert tr.ids[0] == "02691156/train000" and list(tr.labels) == [0, 0, 0, 1, 1, 1]
    s = tr.load(4)
    assert s.points.shape == (256, 3) and s.parts.shape == (256,) and s.label == 1
    assert set(np.unique(s.parts)) == {36, 37}
    assert abs(np.linalg.norm(s.points - s.points.mean(0), axis=1).max() - 1) < 0.05
    a = create_dataset(spec, "train", num_points=256, seed=3).load(0)
    b = create_dataset(spec, "train", num_points=256, seed=3).load(0)
    assert np.array_equal(a.points, b.points) and np.array_equal(a.parts, b.parts)
    assert set(np.unique(a.parts)) <= {0, 1, 2} and len(np.unique(a.parts)) == 3


def test_shapenetpart_pack_parses_once(snp):
    spec = f"shapenetpart:{snp}"
    first = create_dataset(spec, "test", num_points=128).load(1)
    packs = sorted((snp / ".i2p-cache").glob("test-*.npz"))
    assert len(packs) == 1
    (snp / "02691156" / "test001.txt").unlink()  # the pack answers from now on
    again = create_dataset(spec, "test", num_points=128).load(1)
    assert np.array_equal(first.points, again.points) and np.array_equal(first.parts, again.parts)
    # an edited list is a new pack (the removed file is now reported, naming it)
    lst = snp / "train_test_split" / "shuffled_test_file_list.json"
    lst.write_text(json.dumps(json.loads(lst.read_text())[::-1]))
    ds = create_dataset(spec, "test", num_points=128)
    with pytest.raises(SampleError, match=r"test001\.txt: file missing"):
        ds.load(ds.ids.index("02691156/test001"))


def test_shapenetpart_bad_files(snp):
    spec = f"shapenetpart:{snp}"
    f0 = snp / "02691156" / "train000.txt"
    lines = f0.read_text().splitlines()
    lines[4] = " ".join(lines[4].split()[:6])
    f0.write_text("\n".join(lines) + "\n")
    f1 = snp / "03797390" / "train001.txt"
    rows = np.loadtxt(f1)
    rows[7, 6] = 3  # an Airplane part in a mug
    np.savetxt(f1, rows, fmt=["%.6f"] * 6 + ["%d"])
    ds = create_dataset(spec, "train", num_points=128)
    with pytest.raises(SampleError, match=r"train000\.txt: line 5 has 6 columns, expected 7"):
        ds.load(0)
    with pytest.raises(SampleError, match=r"train001\.txt: part id 3 on line 8 is outside Mug's parts 36-37"):
        ds.load(4)
    assert ds.load(1).points.shape == (128, 3)  # the others still load
    lst = snp / "train_test_split" / "shuffled_val_file_list.json"
    lst.write_text(json.dumps(["shape_data/02691156"]))
    with pytest.raises(DataSpecError, match=r"shuffled_val_file_list\.json: malformed entry"):
        create_dataset(spec, "val")
    lst.unlink()
    with pytest.raises(DataSpecError, match=r"split list not found: .*shuffled_val_file_list\.json"):
        create_dataset(spec, "val")
    (snp / "synsetoffset2category.txt").write_text("Spaceship\t99999999\n")
    with pytest.raises(DataSpecError, match="synsetoffset2category.txt:1"):
        create_dataset(spec, "train")


def test_val_split_only_where_defined():
    with pytest.raises(DataSpecError, match="unknown split 'val'"):
        create_dataset("builtin:primitives", split="val")


def test_primitives_parts_keep_points():
    ds = create_dataset("builtin:primitives?n_train=2&n_test=0", "train", num_points=512)
    counts = {}
    for i, sid in enumerate(ds.ids):
        s = ds.load(i)
        name, split, k = sid.split("/")
        shape_rng = np.random.default_rng(stable_seed("primitives", name, split, int(k)))
        sample_rng = np.random.default_rng(stable_seed(0, sid, "surface"))
        plain = finish_cloud(generate(name, shape_rng, sample_rng, 2048), 512, 0, sid)
        assert np.array_equal(plain, s.points)  # classification sees the same clouds as before
        assert set(np.unique(s.parts)) <= set(ds.class_parts[s.label])
        counts[name] = len(np.unique(s.parts))
    assert counts["table"] == 2 and counts["chair"] == 3 and counts["mug"] == 2 and counts["sphere"] == 1
    assert sum(len(p) for p in ds.class_parts) == len(ds.part_names) == 21
    # a table's top sits above its legs
    t = ds.load(ds.ids.index("table/train/0000"))
    top, legs = ds.class_parts[ds.classes.index("table")]
    assert t.points[t.parts == top, 2].mean() > t.points[t.parts == legs, 2].mean() + 0.15


def test_shapenetpart_missing_dir_and_category_file(tmp_path):
    with pytest.raises(DataSpecError, match="does_not_exist"):
        create_dataset(f"shapenetpart:{tmp_path / 'does_not_exist'}")
    with pytest.raises(DataSpecError, match=r"category list not found: .*synsetoffset2category\.txt"):
        create_dataset(f"shapenetpart:{tmp_path}")
