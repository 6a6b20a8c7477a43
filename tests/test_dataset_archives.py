"""The archive and array readers (ShapeNet-55, ModelNet40 and its HDF5 form, ScanObjectNN, npz)
on tiny files written here in each format's exact layout."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from i2p.common.datasets import create_dataset
from i2p.common.errors import DataSpecError, SampleError

from dataset_checks import P, blob, check_dense_frame, check_determinism, check_sample

# ---------------------------------------------------------------- shapenet55:DIR

def write_shapenet(root, rng):
    (root / "shapenet_pc").mkdir(parents=True)
    train = ["02691156-aaa.npy", "02691156-bbb.npy", "03001627-ccc.npy"]
    test = ["03001627-ddd.npy", "04379243-eee.npy"]
    for name in train + test:
        np.save(root / "shapenet_pc" / name, blob(rng, 8192))
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "test.txt").write_text("\n".join(test) + "\n")


def test_shapenet55(tmp_path):
    rng = np.random.default_rng(0)
    write_shapenet(tmp_path, rng)
    tr = create_dataset(f"shapenet55:{tmp_path}", split="train", num_points=P)
    te = create_dataset(f"shapenet55:{tmp_path}", split="test", num_points=P)
    assert tr.classes == ["02691156", "03001627", "04379243"] == te.classes
    assert tr.ids == ["02691156-aaa", "02691156-bbb", "03001627-ccc"]
    assert tr.labels.tolist() == [0, 0, 1] and te.labels.tolist() == [1, 2]
    assert len(create_dataset(f"shapenet55:{tmp_path}", split="all")) == 5
    check_sample(te.load(1))
    check_dense_frame(create_dataset(f"shapenet55:{tmp_path}", num_points=8192))
    check_determinism(f"shapenet55:{tmp_path}")
    bad = np.zeros((8192, 3), np.float32)
    bad[5] = np.nan
    np.save(tmp_path / "shapenet_pc" / "02691156-aaa.npy", bad)
    (tmp_path / "shapenet_pc" / "02691156-bbb.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(SampleError, match="NaN"):
        tr.load(0)
    with pytest.raises(SampleError):
        tr.load(1)
    (tmp_path / "test.txt").unlink()
    with pytest.raises(DataSpecError, match="test.txt"):
        create_dataset(f"shapenet55:{tmp_path}", split="test")


# ---------------------------------------------------------------- modelnet40:DIR

def test_modelnet40(tmp_path):
    rng = np.random.default_rng(1)
    classes = ["airplane", "night_stand", "vase"]
    (tmp_path / "modelnet40_shape_names.txt").write_text("\n".join(classes) + "\n")
    train, test = ["airplane_0001", "night_stand_0001", "night_stand_0002"], ["vase_0001", "airplane_0002"]
    for sid in train + test:
        d = tmp_path / sid.rsplit("_", 1)[0]
        d.mkdir(exist_ok=True)
        xyz = blob(rng, 500)
        normals = rng.standard_normal((500, 3))
        np.savetxt(d / f"{sid}.txt", np.hstack([xyz, normals]), fmt="%.6f", delimiter=",")
    (tmp_path / "modelnet40_train.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "modelnet40_test.txt").write_text("\n".join(test) + "\n")
    spec = f"modelnet40:{tmp_path}"
    tr, te = create_dataset(spec, split="train", num_points=P), create_dataset(spec, split="test", num_points=P)
    assert tr.classes == classes and tr.ids == train and te.ids == test
    assert tr.labels.tolist() == [0, 1, 1] and te.labels.tolist() == [2, 0]
    assert len(create_dataset(spec, split="all")) == 5
    check_sample(tr.load(1))
    check_dense_frame(create_dataset(spec, num_points=500))
    check_determinism(spec)
    (tmp_path / "vase" / "vase_0001.txt").write_text("1,2,3,0,0,1\nnan,1,1,0,0,1\n4,5,6,0,0,1\n")
    with pytest.raises(SampleError):
        te.load(0)
    (tmp_path / "modelnet40_test.txt").unlink()
    with pytest.raises(DataSpecError, match="modelnet40_test.txt"):
        create_dataset(spec, split="test")


# ---------------------------------------------------------------- modelnet40-h5:DIR

def write_h5(path, data, label):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("label", data=label)


def test_modelnet40_h5(tmp_path):
    rng = np.random.default_rng(2)
    n_pts = 2048
    for name, n in (("ply_data_train0.h5", 3), ("ply_data_train1.h5", 2), ("ply_data_test0.h5", 2)):
        data = np.stack([blob(rng, n_pts) for _ in range(n)])
        write_h5(tmp_path / name, data, rng.integers(0, 4, (n, 1)).astype(np.uint8))
    write_h5(tmp_path / "ply_data_train10.h5", np.stack([blob(rng, n_pts)]), np.array([[5]], np.uint8))
    spec = f"modelnet40-h5:{tmp_path}"
    tr, te = create_dataset(spec, split="train", num_points=P), create_dataset(spec, split="test", num_points=P)
    al = create_dataset(spec, split="all", num_points=P)
    assert (len(tr), len(te), len(al)) == (6, 2, 8)
    assert tr.classes == [str(c) for c in range(6)] and tr.labels[-1] == 5  # train10 sorts after train1
    assert tr.ids[0] == "train/000000" and te.ids[1] == "test/000001" and len(set(al.ids)) == 8
    with h5py.File(tmp_path / "ply_data_train1.h5") as f:
        assert tr.labels[3] == f["label"][0, 0]
    check_sample(tr.load(3))
    check_dense_frame(create_dataset(spec, num_points=n_pts), 4)
    check_determinism(spec, split="test", i=1)
    (tmp_path / "shape_names.txt").write_text("\n".join(f"c{k}" for k in range(40)) + "\n")
    assert create_dataset(spec).classes[:2] == ["c0", "c1"]
    assert pickle.loads(pickle.dumps(tr)).load(2).points.shape == (P, 3)
    for f in tmp_path.glob("ply_data_test*.h5"):
        f.unlink()
    assert not create_dataset(spec).has_split("test")
    with pytest.raises(DataSpecError):
        create_dataset(spec, split="test")


# ---------------------------------------------------------------- scanobjectnn:DIR

@pytest.mark.parametrize("variant,sub,train_name", [
    (None, "main_split", "training_objectdataset.h5"),
    ("obj_only", "main_split_nobg", "training_objectdataset.h5"),
    ("pb_t50_rs", "main_split", "training_objectdataset_augmentedrot_scale75.h5"),
    ("obj_bg", "", "training_objectdataset.h5"),
])
def test_scanobjectnn(tmp_path, variant, sub, train_name):
    rng = np.random.default_rng(3)
    test_name = train_name.replace("training", "test")
    folder = tmp_path / sub if sub else tmp_path
    write_h5(folder / train_name, np.stack([blob(rng, 2048) for _ in range(4)]), np.array([0, 14, 3, 3]))
    write_h5(folder / test_name, np.stack([blob(rng, 2048) for _ in range(2)]), np.array([7, 1]))
    spec = f"scanobjectnn:{tmp_path}" + (f"?variant={variant}" if variant else "")
    tr, te = create_dataset(spec, split="train", num_points=P), create_dataset(spec, split="test", num_points=P)
    assert len(tr.classes) == 15 and tr.classes[0] == "bag" and tr.classes[14] == "toilet"
    assert tr.labels.tolist() == [0, 14, 3, 3] and te.labels.tolist() == [7, 1]
    assert te.ids == ["test/000000", "test/000001"]
    check_sample(te.load(0))
    check_dense_frame(create_dataset(spec, num_points=2048), 2)
    check_determinism(spec)


def test_scanobjectnn_missing_variant_files(tmp_path):
    write_h5(tmp_path / "main_split" / "training_objectdataset.h5", np.zeros((1, 16, 3), np.float32), np.array([0]))
    with pytest.raises(DataSpecError, match="test_objectdataset"):
        create_dataset(f"scanobjectnn:{tmp_path}", split="test")
    with pytest.raises(DataSpecError, match="main_split_nobg"):
        create_dataset(f"scanobjectnn:{tmp_path}?variant=obj_only")
    ds = create_dataset(f"scanobjectnn:{tmp_path}", num_points=P)
    with pytest.raises(SampleError, match="distinct"):  # all-zero cloud
        ds.load(0)


# ---------------------------------------------------------------- npz:FILE

def test_npz_single_array_with_split(tmp_path):
    rng = np.random.default_rng(4)
    pts = np.stack([blob(rng, 300) for _ in range(5)])
    pts[4, 7] = np.inf
    path = tmp_path / "d.npz"
    np.savez_compressed(path, points=pts, labels=np.array([0, 1, 1, 2, 0]), ids=np.array(list("abcde")),
                        split=np.array(["train", "test", "train", "test", "train"]),
                        classes=np.array(["x", "y", "z"]))
    tr = create_dataset(f"npz:{path}", split="train", num_points=P)
    te = create_dataset(f"npz:{path}", split="test", num_points=P)
    al = create_dataset(f"npz:{path}", split="all", num_points=P)
    assert tr.ids == ["a", "c", "e"] and te.ids == ["b", "d"] and al.ids == ["a", "c", "e", "b", "d"]
    assert tr.labels.tolist() == [0, 1, 0] and te.labels.tolist() == [1, 2] and tr.classes == ["x", "y", "z"]
    assert tr.has_split("test")
    check_sample(te.load(1))
    check_dense_frame(create_dataset(f"npz:{path}", num_points=300), 1)
    check_determinism(f"npz:{path}")
    with pytest.raises(SampleError, match="NaN/Inf"):
        tr.load(2)


def test_npz_no_test_split_and_bad_files(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "only.npz"
    np.savez(path, points=np.stack([blob(rng, 100) for _ in range(3)]), labels=np.array([0, 3, 1]))
    ds = create_dataset(f"npz:{path}", num_points=P)
    assert ds.ids == ["train/000000", "train/000001", "train/000002"] and ds.classes == ["0", "1", "2", "3"]
    assert not ds.has_split("test") and len(create_dataset(f"npz:{path}", split="all")) == 3
    with pytest.raises(DataSpecError, match="no test split"):
        create_dataset(f"npz:{path}", split="test")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataSpecError):
        create_dataset(f"npz:{tmp_path / 'junk.npz'}")
    np.savez(tmp_path / "nopoints.npz", labels=np.array([1]))
    with pytest.raises(DataSpecError, match="points"):
        create_dataset(f"npz:{tmp_path / 'nopoints.npz'}")
    np.savez(tmp_path / "flat.npz", points=np.zeros((4, 3)))
    with pytest.raises(DataSpecError, match=r"\[N,P,3\]"):
        create_dataset(f"npz:{tmp_path / 'flat.npz'}")
    with pytest.raises(DataSpecError, match="directory"):
        create_dataset(f"npz:{tmp_path}")


def test_npz_split_arrays(tmp_path):
    rng = np.random.default_rng(6)
    path = tmp_path / "two.npz"
    np.savez(path, train_points=np.stack([blob(rng, 200) for _ in range(4)]), train_labels=np.array([0, 1, 0, 1]),
             test_points=np.stack([blob(rng, 200) for _ in range(2)]), test_labels=np.array([1, 0]))
    tr, te = create_dataset(f"npz:{path}", num_points=P), create_dataset(f"npz:{path}", split="test", num_points=P)
    assert (len(tr), len(te)) == (4, 2) and te.ids == ["test/000000", "test/000001"]
    assert te.labels.tolist() == [1, 0] and tr.classes == ["0", "1"]
    check_sample(te.load(1))
    check_dense_frame(create_dataset(f"npz:{path}", split="test", num_points=200), 1)
    check_determinism(f"npz:{path}", split="test")
