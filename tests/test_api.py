"""The user's surface: ``i2p.load_encoder`` / ``Encoder``, ``i2p export`` and ``i2p embed``.

One tiny pretrain (2 steps on the shared small cache) gives a real run directory; everything
else is checked against it: export == checkpoint, invariance to moving and scaling,
shapes and array kinds, batching, no pickle in an export, embedding files with ids and labels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHREC, subprocess_env
from i2p.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

# ../shared/data/shrec16 beside the repository; I2P_SHREC16 points elsewhere (e.g. from a worktree)
SHREC16 = Path(os.environ.get("I2P_SHREC16", SHREC))
SPEC = "builtin:primitives?n_train=2&n_test=1"
FAST = ["model.enc_depths=[1,1,1]", "model.drop_path=0.0", "data.workers=1", "log.progress=false",
        "optim.warmup_epochs=1", "data.holdout=0", "optim.batch_size=8"]


@pytest.fixture(scope="module")
def run_dir(small_cache, tmp_path_factory):
    from i2p.stage2_pretrain import config as pcfg
    from i2p.stage2_pretrain.train import pretrain

    out = tmp_path_factory.mktemp("api") / "run"
    pretrain(small_cache, str(out), pcfg.resolve("tiny", FAST, seed=3), max_steps=2)
    return out


@pytest.fixture(scope="module")
def export_dir(run_dir):
    out = run_dir.parent / "export"
    assert main(["export", "--ckpt", str(run_dir / "last.ckpt"), "--out", str(out), "--device", "cpu"]) == 0
    return out


def clouds(n=3, points=300, seed=0):
    """Primitives (real shapes, not noise), each in its own pose: centred, unit sphere."""
    from i2p.common.datasets import create_dataset

    ds = create_dataset("builtin:primitives?n_train=1", "train", num_points=points, seed=seed)
    return np.stack([ds.load(i).points for i in range(n)])


def test_import_i2p_does_not_import_torch():
    code = "import i2p, sys; i2p.__version__; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_export_equals_checkpoint_and_run_dir(run_dir, export_dir):
    import i2p
    from i2p.common.checkpoint import file_sha256

    x = clouds()
    ck = i2p.load_encoder(run_dir / "last.ckpt", device="cpu")
    z = ck.embed(x)
    for source in (run_dir, export_dir, export_dir / "model.safetensors"):
        np.testing.assert_allclose(i2p.load_encoder(str(source), device="auto").embed(x), z, atol=1e-5, rtol=0)
    cfg = json.loads((export_dir / "config.json").read_text())
    prov = cfg["provenance"]
    assert cfg["format"] == "i2p-encoder-1" and cfg["i2p_version"] == i2p.__version__
    assert cfg["pooling"] == "levels" and cfg["normalization"]["enabled"] is True  # the default pooling
    assert cfg["architecture"]["enc_dims"] == [48, 96, 192] and cfg["embedding_dim"] == 2 * (48 + 96 + 192)
    assert prov["checkpoint_sha256"] == file_sha256(run_dir / "last.ckpt") and prov["step"] == 2
    assert prov["cache_teacher"] == "test-tiny" and prov["seed"] == 3 and prov["epoch"] == 0
    card = (export_dir / "README.md").read_text()
    assert "i2p.load_encoder" in card and prov["checkpoint_sha256"] in card
    # re-exporting gives byte-identical files (no timestamp), and an export of an export too
    again = export_dir.parent / "again"
    assert main(["export", "--ckpt", str(export_dir), "--out", str(again)]) == 0
    for name in ("model.safetensors", "config.json", "README.md"):
        assert (again / name).read_bytes() == (export_dir / name).read_bytes(), name


def test_export_holds_encoder_weights_only_and_loads_without_pickle(export_dir, monkeypatch):
    import pickle

    from safetensors.torch import load_file

    import i2p

    state = load_file(str(export_dir / "model.safetensors"))
    assert state and not any(k.startswith(("decoder", "head", "encoder.")) for k in state)
    assert any(k.startswith("stacks.") for k in state)

    def refuse(*a, **k):
        raise AssertionError("pickle used to load an export")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    enc = i2p.load_encoder(export_dir, device="cpu")
    assert enc.embed(clouds(1)).shape == (1, 672)  # the default pooling, levels: 2 x (48 + 96 + 192)


def test_corrupt_or_mismatched_export_is_one_line(export_dir, tmp_path):
    import shutil

    import i2p
    from i2p.common.errors import UserError

    bad = tmp_path / "bad"
    shutil.copytree(export_dir, bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match the sha256") as e:
        i2p.load_encoder(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="neither a run directory"):
        i2p.load_encoder(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        i2p.load_encoder(tmp_path / "nope.ckpt")
    assert main(["embed", "--ckpt", str(tmp_path / "nope"), "--data", SPEC, "--out", str(tmp_path / "e.npy")]) == 2


def test_moved_and_scaled_cloud_gives_the_same_embedding(run_dir):
    import i2p

    enc = i2p.load_encoder(run_dir, device="cpu")
    x = clouds()
    moved = x * 7.3 + np.array([4.0, -12.0, 0.5], dtype=np.float32)
    np.testing.assert_allclose(enc.embed(moved), enc.embed(x), atol=1e-3, rtol=0)
    np.testing.assert_allclose(enc.point_features(moved), enc.point_features(x), atol=1e-3, rtol=0)
    raw = enc.embed(moved, normalize=False)  # off: the network sees the moved cloud as it is
    assert np.abs(raw - enc.embed(x)).max() > 1e-2


def test_kinds_shapes_batching_and_modes(run_dir):
    import i2p

    enc = i2p.load_encoder(run_dir, device="cpu", batch_size=2)
    enc.network.train()  # a caller's mode is restored after embed, which runs in eval mode
    x = clouds(5)
    z = enc.embed(x)
    assert isinstance(z, np.ndarray) and z.shape == (5, 672) and z.dtype == np.float32 and enc.dim == 672
    assert enc.network.training
    enc.network.eval()
    zt = enc.embed(torch.from_numpy(x))
    assert isinstance(zt, torch.Tensor) and zt.shape == (5, 672)
    np.testing.assert_allclose(zt.numpy(), z, atol=1e-6, rtol=0)
    np.testing.assert_allclose(enc.embed(x, batch_size=5), z, atol=1e-5, rtol=0)  # batching: same values
    np.testing.assert_allclose(enc.embed(x[1]), z[1], atol=1e-5, rtol=0)  # one cloud [N,3] -> [D]
    f = enc.point_features(torch.from_numpy(x[:2]))
    assert isinstance(f, torch.Tensor) and f.shape == (2, 300, enc.point_dim) and enc.point_dim == 48 + 96 + 192
    assert np.isfinite(f.numpy()).all()
    assert enc.point_features(x[:2], batch_size=1).shape == (2, 300, 336)
    assert enc.embed(x, pool="meanmax").shape == (5, 384)


def test_levels_pooling_is_every_levels_mean_and_max(run_dir):
    """``levels``: per level, the mean and the max of its encoded tokens, finest level first;
    padding rows (tokens a level did not encode) take part in neither."""
    import i2p
    from i2p.api.encoder import normalize_clouds, pool_levels, pooled_dim
    from i2p.stage2_pretrain.model.encoder import LevelOutput

    enc = i2p.load_encoder(run_dir, device="cpu")
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(3, 300, 3)).astype(np.float32))
    got = enc.embed(x, pool="levels")
    assert got.shape == (3, pooled_dim(enc.config.enc_dims, "levels")) == (3, 2 * (48 + 96 + 192))
    with torch.no_grad():
        levels = enc.network.eval()(normalize_clouds(x))
    want = torch.cat([torch.cat([lv.tokens.mean(1), lv.tokens.amax(1)], -1) for lv in levels], -1)
    torch.testing.assert_close(got, want)
    # the last 192 columns are the paper's max-pooled coarsest tokens
    torch.testing.assert_close(got[:, -192:], enc.embed(x, pool="max"))
    torch.testing.assert_close(got, enc.embed(x))  # the default
    # a padding row (valid False) with a huge value changes nothing
    t = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [1e6, 1e6]]])
    lv = LevelOutput(tokens=t, valid=torch.tensor([[True, True, False]]), order=None, centers=None,
                     full=None, visible=None)
    assert pool_levels([lv], "levels").tolist() == [[2.0, -1.0, 3.0, 0.0]]


def test_bad_inputs_are_one_line_user_errors(run_dir):
    import i2p
    from i2p.common.errors import UserError

    enc = i2p.load_encoder(run_dir, device="cpu")
    for bad, msg in [(np.zeros((2, 300, 6)), "shape"), (np.zeros((1, 100, 3)), "at least 256"),
                     (np.full((1, 300, 3), np.nan), "NaN"), ([np.zeros((300, 3)), np.zeros((290, 3))], "numeric")]:
        with pytest.raises(UserError, match=msg):
            enc.embed(bad)
    with pytest.raises(UserError, match="2D teacher"):
        i2p.load_encoder("teacher:effnet-lite2")


def _ds(split="test"):
    from i2p.common.datasets import create_dataset

    return create_dataset(SPEC, split, num_points=1024, seed=0)


def test_embed_writes_rows_with_ids_and_labels(export_dir, tmp_path):
    ds = _ds()
    base = ["embed", "--ckpt", str(export_dir), "--data", SPEC, "--split", "test", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "e.npy")]) == 0
    X = np.load(tmp_path / "e.npy")
    side = json.loads((tmp_path / "e.ids.json").read_text())
    assert X.shape == (len(ds), 672) and X.dtype == np.float32
    assert side["ids"] == list(ds.ids) and side["labels"] == [int(v) for v in ds.labels]
    assert side["classes"] == list(ds.classes) and side["rows"] == len(ds) and side["split"] == "test"

    assert main([*base, "--out", str(tmp_path / "e.npz")]) == 0
    with np.load(tmp_path / "e.npz") as z:  # allow_pickle stays False
        np.testing.assert_array_equal(z["embeddings"], X)
        assert list(z["ids"]) == list(ds.ids) and list(z["labels"]) == list(ds.labels)
        assert json.loads(str(z["meta"]))["data"] == SPEC

    pq = pytest.importorskip("pyarrow.parquet")
    assert main([*base, "--out", str(tmp_path / "e.parquet")]) == 0
    t = pq.read_table(tmp_path / "e.parquet")
    assert t.num_rows == len(ds) and t.column("id").to_pylist() == list(ds.ids)
    np.testing.assert_array_equal(np.array(t.column("embedding").to_pylist(), dtype=np.float32), X)
    assert json.loads(t.schema.metadata[b"i2p"])["rows"] == len(ds)


def test_embed_parquet_without_pyarrow_is_one_line(export_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    rc = main(["embed", "--ckpt", str(export_dir), "--data", SPEC, "--out", str(tmp_path / "e.parquet")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "pip install pyarrow" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "e.parquet").exists()


def test_eval_protocols_take_an_export_dir(export_dir, tmp_path):
    from i2p.stage3_eval import runner

    res = runner.knn(str(export_dir), SPEC, str(tmp_path / "knn"), points=300, k=3, device="cpu", progress=False)
    assert res["checkpoint"]["path"] == str(export_dir) and res["checkpoint"]["bn_calibration_shapes"] > 0
    assert 0 <= res["accuracy"] <= 1


@pytest.mark.slow
@pytest.mark.skipif(not SHREC16.is_dir(), reason="SHREC'16 data not present (set I2P_SHREC16=DIR)")
def test_embed_shrec16_test_split(run_dir, tmp_path):
    out = tmp_path / "shrec.npz"
    assert main(["embed", "--ckpt", str(run_dir / "last.ckpt"), "--data", f"meshes:{SHREC16}", "--split", "test",
                 "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    with np.load(out) as z:
        assert z["embeddings"].shape == (120, 672) and len(set(z["ids"].tolist())) == 120
        assert len(set(z["labels"].tolist())) == 30
