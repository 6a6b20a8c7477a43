"""V3 of docs/FIDELITY.md: ``i2p eval svm --sampling official`` gives the encoder each cloud's
first N stored points, not re-normalised, encoded as given -- the official SVM's
``data[item][:1024]`` of ``modelnet40_ply_hdf5_2048`` (datasets/ModelNetDataset.py:50)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from i2p.common.datasets import create_dataset
from i2p.common.datasets.stored import stored_points
from i2p.common.errors import DataSpecError
from i2p.stage3_eval import runner

pytestmark = pytest.mark.usefixtures("one_thread")


def _write(path, data, label):
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("label", data=label)


@pytest.fixture
def h5_dir(tmp_path):
    """modelnet40_ply_hdf5_2048 laid out small: 2 classes, 8 train and 6 test clouds of 2048
    points, each off-centre and not at unit radius (so re-normalising would move it)."""
    rng = np.random.default_rng(0)
    for name, n in (("ply_data_train0.h5", 8), ("ply_data_test0.h5", 6)):
        label = (np.arange(n) % 2).astype(np.uint8)[:, None]
        shape = np.stack([rng.normal(size=(2048, 3)) * (np.array([1.0, 0.3, 0.3]) if c else np.array([0.3, 0.3, 1.0]))
                          for c in label[:, 0]])
        _write(tmp_path / name, (0.4 * shape + 0.2).astype(np.float32), label)
    return tmp_path


def test_stored_points_are_the_first_points_as_stored(h5_dir):
    spec = f"modelnet40-h5:{h5_dir}"
    ds = stored_points(create_dataset(spec, "test", num_points=1024, seed=0))
    with h5py.File(h5_dir / "ply_data_test0.h5") as f:
        want, labels = f["data"][:], f["label"][:, 0]
    for i in (0, 3, 5):
        s = ds.load(i)
        assert s.points.dtype == np.float32 and np.array_equal(s.points, want[i, :1024])
        assert s.label == labels[i] and s.id == f"test/{i:06d}"
    ours = create_dataset(spec, "test", num_points=1024, seed=0)
    assert not np.allclose(ours.load(0).points, want[0, :1024])  # the default: resampled, re-normalised
    assert ds.fingerprint() != ours.fingerprint() and list(ds.labels) == list(ours.labels)
    too_many = stored_points(create_dataset(spec, "test", num_points=4096, seed=0))
    with pytest.raises(Exception, match="2048 stored points"):
        too_many.load(0)
    with pytest.raises(DataSpecError, match="no stored order"):
        stored_points(create_dataset("builtin:primitives?n_train=1&n_test=1", "train", num_points=256))


def test_svm_official_sampling_features_and_result(h5_dir, tmp_path):
    from i2p.common.datasets.stored import StoredPoints
    from i2p.stage3_eval.features import dataset_clouds

    spec = f"modelnet40-h5:{h5_dir}"
    _, splits, dev, _, feats = runner._train_test_features("random", spec, 1024, "max", 0, "cpu", 32, "tiny",
                                                           False, "official")
    assert all(isinstance(ds, StoredPoints) for ds in splits.values())
    # by hand: the same encoder (seeded random init, the same BatchNorm re-estimation), the
    # file's first 1024 points encoded with normalize=False
    enc, _ = runner.encoder_for("random", dev, "tiny", 0, lambda: dataset_clouds(splits["train"]), 32)
    with h5py.File(h5_dir / "ply_data_test0.h5") as f:
        first = f["data"][:, :1024]
    want = enc.embed(first, pool="max", normalize=False)
    np.testing.assert_allclose(feats["test"].X, want, rtol=0, atol=1e-5)
    moved = enc.embed(first, pool="max")  # the encoder's own default centres and scales each cloud
    assert np.abs(feats["test"].X - moved).max() > 1e-3
    res = runner.svm("random", spec, str(tmp_path / "svm"), points=1024, C=0.0093, seed=0, device="cpu",
                     progress=False, sampling="official")
    saved = json.loads((tmp_path / "svm" / "result.json").read_text())
    assert saved["settings"]["sampling"] == "official" and res["n_test"] == 6 and 0 <= res["accuracy"] <= 1


def test_cli_sampling_flag(h5_dir, tmp_path, capsys):
    from typer.testing import CliRunner

    from i2p.cli import app

    r = CliRunner().invoke(app, ["eval", "svm", "--ckpt", "random", "--data", f"modelnet40-h5:{h5_dir}",
                                 "--sampling", "official", "--C", "0.0093", "--device", "cpu", "--no-progress",
                                 "--out", str(tmp_path / "svm")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "svm" / "result.json").read_text())["settings"]
    assert (s["sampling"], s["points"]) == ("official", 1024)
    from i2p.cli import main

    assert main(["eval", "svm", "--ckpt", "random", "--data", "builtin:primitives?n_train=1&n_test=1",
                 "--sampling", "official", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no stored order" in err[0], err
