"""Every data reader, on tiny files written here in each format's exact layout (plus the real
SHREC'16 meshes when they are present)."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from i2p.common.datasets import create_dataset, list_readers
from i2p.common.errors import DataSpecError, SampleError

SHREC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "shrec16"
P = 256


def blob(rng, n=600, offset=(3.0, -2.0, 5.0), scale=7.0):
    """A lumpy cloud far from the origin and far from unit size."""
    return (rng.standard_normal((n, 3)) * [1.0, 0.5, 2.0] * scale + offset).astype(np.float32)


def check_sample(s, num_points=P):
    assert s.points.shape == (num_points, 3) and s.points.dtype == np.float32
    assert np.isfinite(s.points).all()
    norms = np.linalg.norm(s.points, axis=1)
    assert norms.max() <= 1.0 + 1e-5
    assert isinstance(s.label, int) and isinstance(s.id, str)


def check_dense_frame(ds, i=0):
    """Asked for exactly as many points as the file has, the cloud is the whole file: its
    centroid must be 0 and its farthest point on the unit sphere."""
    pts = ds.load(i).points
    assert np.abs(pts.mean(0)).max() < 1e-4
    assert abs(np.linalg.norm(pts, axis=1).max() - 1.0) < 1e-5


def check_determinism(spec, split="train", i=0):
    a = create_dataset(spec, split=split, num_points=P, seed=0).load(i).points
    b = create_dataset(spec, split=split, num_points=P, seed=0).load(i).points
    c = create_dataset(spec, split=split, num_points=P, seed=1).load(i).points
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


# ---------------------------------------------------------------- spec handling

def test_all_readers_registered():
    assert {"builtin", "meshes", "shapenet55", "modelnet40", "modelnet40-h5", "scanobjectnn", "npz"} <= set(
        list_readers())


@pytest.mark.parametrize("spec", ["nocolon", "bogus:x", "meshes:", "builtin:cubes", "builtin:primitives?n_train",
                                  "builtin:primitives?colour=red", "builtin:primitives?n_train=abc",
                                  "scanobjectnn:/tmp?variant=nope"])
def test_malformed_specs(spec):
    with pytest.raises(DataSpecError):
        create_dataset(spec)


@pytest.mark.parametrize("kind", ["meshes", "shapenet55", "modelnet40", "modelnet40-h5", "scanobjectnn", "npz"])
def test_missing_path_names_it(tmp_path, kind):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(DataSpecError, match="does_not_exist"):
        create_dataset(f"{kind}:{missing}")


def test_unknown_split():
    with pytest.raises(DataSpecError):
        create_dataset("builtin:primitives", split="val")


# ---------------------------------------------------------------- builtin:primitives

def test_primitives_classes_splits_ids():
    tr = create_dataset("builtin:primitives?n_train=3&n_test=2", split="train", num_points=P)
    te = create_dataset("builtin:primitives?n_train=3&n_test=2", split="test", num_points=P)
    al = create_dataset("builtin:primitives?n_train=3&n_test=2", split="all", num_points=P)
    k = len(tr.classes)
    assert k >= 10 and len(set(tr.classes)) == k
    assert (len(tr), len(te), len(al)) == (3 * k, 2 * k, 5 * k)
    assert list(al.ids) == list(tr.ids) + list(te.ids)
    assert len(set(al.ids)) == len(al)
    assert np.bincount(tr.labels, minlength=k).tolist() == [3] * k
    s = tr.load(4)
    check_sample(s)
    assert s.label == tr.labels[4] and s.id == tr.ids[4]
    default = create_dataset("builtin:primitives", split="train")
    assert len(default) == 32 * k and len(create_dataset("builtin:primitives", split="test")) == 8 * k


def test_primitives_variation_and_determinism():
    ds = create_dataset("builtin:primitives?n_train=6&n_test=0", split="train", num_points=1024)
    box = ds.classes.index("box")
    idx = np.flatnonzero(ds.labels == box)
    ratios = []
    for i in idx:
        ext = np.ptp(ds.load(int(i)).points, axis=0)
        ratios.append(sorted(ext / ext.max()))
    ratios = np.array(ratios)
    assert np.ptp(ratios[:, 0]) > 0.1  # instances differ in proportions
    check_determinism("builtin:primitives?n_train=2&n_test=1", split="test")
    # the instance is fixed by (class, split, index): another seed moves points, not the shape
    a = create_dataset("builtin:primitives?n_train=2", num_points=2048, seed=0).load(int(idx[0]) // 3).points
    b = create_dataset("builtin:primitives?n_train=2", num_points=2048, seed=5).load(int(idx[0]) // 3).points
    assert np.allclose(np.ptp(a, 0), np.ptp(b, 0), atol=0.05)
    # train and test instances differ
    tr = create_dataset("builtin:primitives?n_train=1&n_test=1", split="train", num_points=P).load(0).points
    te = create_dataset("builtin:primitives?n_train=1&n_test=1", split="test", num_points=P).load(0).points
    assert not np.allclose(np.ptp(tr, 0), np.ptp(te, 0), atol=1e-3)


def test_primitives_centred_and_fast():
    ds = create_dataset("builtin:primitives?n_train=31&n_test=0", split="train", num_points=2048)
    t0 = time.perf_counter()
    clouds = [ds.load(i).points for i in range(len(ds))]
    elapsed = time.perf_counter() - t0
    assert len(clouds) >= 400
    assert elapsed < 5.0, f"{len(clouds)} shapes took {elapsed:.2f}s"
    for c in clouds[::37]:
        assert np.abs(c.mean(0)).max() < 1e-4
        assert abs(np.linalg.norm(c, axis=1).max() - 1) < 1e-5


def test_primitives_no_test_split():
    ds = create_dataset("builtin:primitives?n_test=0", split="train", num_points=P)
    assert not ds.has_split("test")
    with pytest.raises(DataSpecError, match="no test split"):
        create_dataset("builtin:primitives?n_test=0", split="test")


def test_index_errors_and_pickle():
    ds = create_dataset("builtin:primitives?n_train=1&n_test=0", num_points=P)
    with pytest.raises(IndexError):
        ds.load(len(ds))
    assert np.array_equal(ds[-1].points, ds.load(len(ds) - 1).points)
    assert np.array_equal(pickle.loads(pickle.dumps(ds)).load(0).points, ds.load(0).points)


# ---------------------------------------------------------------- meshes:DIR

CUBE_V = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float)
CUBE_F = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                   [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
TET_V = np.array([[0, 0, 0], [2, 0, 0], [0, 3, 0], [0, 0, 1]], float)
TET_F = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


def write_obj(path, v, f):
    lines = [f"v {a} {b} {c}" for a, b, c in v] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in f]
    path.write_text("\n".join(lines) + "\n")


def write_off(path, v, f):
    lines = ["OFF", f"{len(v)} {len(f)} 0"] + [f"{a} {b} {c}" for a, b, c in v] + [f"3 {a} {b} {c}" for a, b, c in f]
    path.write_text("\n".join(lines) + "\n")


def write_ply(path, v, f):
    head = ["ply", "format ascii 1.0", f"element vertex {len(v)}", "property float x", "property float y",
            "property float z", f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
    lines = head + [f"{a} {b} {c}" for a, b, c in v] + [f"3 {a} {b} {c}" for a, b, c in f]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def mesh_dir(tmp_path):
    root = tmp_path / "meshes"
    for cls, (v, f) in {"cube": (CUBE_V * [1, 2, 3] + 10, CUBE_F), "tet": (TET_V, TET_F)}.items():
        for split, n in (("train", 3), ("test", 1)):
            d = root / cls / split
            d.mkdir(parents=True)
            for k, writer in zip(range(n), (write_obj, write_off, write_ply)):
                writer(d / f"{cls}{k}.{writer.__name__[-3:]}", v * (1 + 0.1 * k), f)
    return root


def test_meshes_layout(mesh_dir):
    tr = create_dataset(f"meshes:{mesh_dir}", split="train", num_points=P)
    te = create_dataset(f"meshes:{mesh_dir}", split="test", num_points=P)
    al = create_dataset(f"meshes:{mesh_dir}", split="all", num_points=P)
    assert tr.classes == ["cube", "tet"] and (len(tr), len(te), len(al)) == (6, 2, 8)
    assert tr.ids[:3] == ["cube/train/cube0", "cube/train/cube1", "cube/train/cube2"]
    assert tr.labels.tolist() == [0, 0, 0, 1, 1, 1] and te.labels.tolist() == [0, 1]
    for i in range(len(tr)):  # obj, off and ply all load
        check_sample(tr.load(i))
    check_determinism(f"meshes:{mesh_dir}", i=4)


def test_mesh_points_on_cube_surface(mesh_dir):
    pts = create_dataset(f"meshes:{mesh_dir}", num_points=2048).load(0).points.astype(np.float64)
    assert np.abs(pts.mean(0)).max() < 1e-4
    # an anisotropic box [1,2,3]: every point has one coordinate on a face of the box
    pts -= (pts.max(0) + pts.min(0)) / 2
    half = pts.max(0)
    on_face = (np.abs(np.abs(pts) - half) < 1e-3).any(axis=1)
    assert on_face.all()
    # area weighting: the share of points per face pair follows its area (yz:xz:xy = 6:3:2)
    counts = np.array([(np.abs(np.abs(pts[:, a]) - half[a]) < 1e-3).sum() for a in range(3)])
    assert np.allclose(counts / counts.sum(), np.array([6, 3, 2]) / 11, atol=0.04)


def test_mesh_unit_cube_surface(tmp_path):
    d = tmp_path / "unit" / "cube" / "train"
    d.mkdir(parents=True)
    write_obj(d / "c.obj", CUBE_V, CUBE_F)
    pts = create_dataset(f"meshes:{tmp_path / 'unit'}", num_points=2048).load(0).points
    # every point has a coordinate equal to that axis' extreme: it lies on a face, not inside
    # (extremes per axis, not max |coord|: the sampled centroid is off the cube centre by ~1%)
    on_face = (np.abs(pts - pts.max(0)) < 1e-4) | (np.abs(pts - pts.min(0)) < 1e-4)
    assert on_face.any(axis=1).all()
    assert np.allclose(pts.max(0) - pts.min(0), 2 / np.sqrt(3), atol=0.02)  # unit cube, radius sqrt(3)/2


def test_meshes_bad_files(tmp_path):
    root = tmp_path / "bad"
    d = root / "junk" / "train"
    d.mkdir(parents=True)
    (d / "a_garbage.obj").write_text("this is not a mesh\n@@@ 1 2\n")
    (d / "b_noface.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    write_obj(d / "c_nan.obj", np.array([[0, 0, 0], [1, 0, 0], [np.nan, 1, 0]]), np.array([[0, 1, 2]]))
    write_obj(d / "d_flat.obj", np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]]), np.array([[0, 1, 2]]))
    (d / "e_binary.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\n\x00\xff\x13garbage")
    ds = create_dataset(f"meshes:{root}", num_points=P)
    assert len(ds) == 5 and not ds.has_split("test")
    for i in range(len(ds)):
        with pytest.raises(SampleError):
            ds.load(i)
    with pytest.raises(DataSpecError, match="no test split"):
        create_dataset(f"meshes:{root}", split="test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSpecError):
        create_dataset(f"meshes:{tmp_path / 'empty'}")


def test_shrec16():
    if not SHREC.is_dir():
        pytest.skip(f"SHREC'16 not present at {SHREC}")
    tr = create_dataset(f"meshes:{SHREC}", split="train", num_points=1024)
    te = create_dataset(f"meshes:{SHREC}", split="test", num_points=1024)
    assert (len(tr), len(te), len(tr.classes)) == (480, 120, 30)
    assert np.bincount(tr.labels).tolist() == [16] * 30 and np.bincount(te.labels).tolist() == [4] * 30
    for i in (0, 200, 479):
        check_sample(tr.load(i), 1024)
    check_sample(te.load(119), 1024)


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
