"""Stage-3 features from the real network (tiny, few points) and the ``i2p eval`` sub-app."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from i2p.common.checkpoint import CheckpointError, save_checkpoint
from i2p.common.datasets import create_dataset
from i2p.stage2_pretrain.model import ModelConfig, build_model
from i2p.api.encoder import normalize_clouds
from i2p.api.loading import load_encoder, model_config_for
from i2p.stage3_eval.features import extract_features

SPEC = "builtin:primitives?n_train=2&n_test=1"
POINTS = 256  # >= tiny's 256 level-1 groups; keeps a CPU forward pass cheap


@pytest.fixture(scope="module")
def random_encoder():
    return load_encoder("random", "cpu", preset="tiny", seed=0)


def test_random_encoder_features_finite(random_encoder):
    model, info = random_encoder, random_encoder.info
    assert info["checkpoint"] == "random" and info["model_config"]["enc_dims"][-1] == 192
    ds = create_dataset(SPEC, "test", num_points=POINTS, seed=0)
    X, y, ids = extract_features(model, ds, batch_size=8, device="cpu", pool="max", progress=False)
    assert X.shape == (len(ds), 192) and X.dtype == np.float32 and np.isfinite(X).all()
    assert list(y) == list(ds.labels) and list(ids) == list(ds.ids)
    Xm, _, _ = extract_features(model, ds, batch_size=5, device="cpu", pool="meanmax", progress=False)
    assert Xm.shape == (len(ds), 384)
    np.testing.assert_allclose(Xm[:, 192:], X, rtol=1e-4, atol=1e-5)  # batch size does not matter
    assert not model.training


def test_random_init_is_seeded():
    a = load_encoder("random", "cpu", seed=3)
    b = load_encoder("random", "cpu", seed=3)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def _save(path, cfg, model):
    save_checkpoint({"model": model.state_dict(), "config": {"model": cfg.to_dict()}, "epoch": 1}, path)


def test_checkpoint_round_trip_and_errors(tmp_path):
    cfg = model_config_for("tiny")
    model = build_model(cfg).eval()
    good = tmp_path / "good.ckpt"
    _save(good, cfg, model)
    loaded = load_encoder(str(good), "cpu")
    info = loaded.info
    assert info["sha256"] and info["epoch"] == 1
    x = torch.from_numpy(create_dataset(SPEC, "test", num_points=POINTS, seed=0).load(0).points)[None]
    with torch.no_grad():  # the Encoder centres and scales the cloud it is given, then runs the same network
        torch.testing.assert_close(loaded.encode(x), model.encode(normalize_clouds(x)))
        torch.testing.assert_close(load_encoder(str(good), "cpu", normalize=False).encode(x), model.encode(x))

    other = ModelConfig.tiny(enc_dims=(48, 96, 96), dec_dims=(96, 96), targets="3d")
    bad = tmp_path / "bad.ckpt"
    _save(bad, cfg, build_model(other))  # config says tiny, weights are another shape
    with pytest.raises(CheckpointError) as e:
        load_encoder(str(bad), "cpu")
    msg = str(e.value)
    assert "\n" not in msg and "shape" in msg

    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as e:
        load_encoder(str(corrupt), "cpu")
    assert "\n" not in str(e.value)


def test_cli_svm_knn_fewshot_compare(tmp_path):
    from typer.testing import CliRunner

    from i2p.stage3_eval.cli import app

    runner = CliRunner()
    common = ["--ckpt", "random", "--data", SPEC, "--points", str(POINTS), "--device", "cpu",
              "--no-progress", "--batch-size", "16"]
    r = runner.invoke(app, ["svm", *common, "--C", "auto", "--cv-folds", "2", "--out", str(tmp_path / "svm")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "svm" / "result.json").read_text())
    assert res["protocol"] == "svm" and 0 <= res["accuracy"] <= 1 and res["accuracy_paper_C"] is not None
    assert res["checkpoint"]["path"] == "random" and set(res["fingerprints"]) == {"train", "test"}
    assert (tmp_path / "svm" / "confusion.png").stat().st_size > 0
    r = runner.invoke(app, ["knn", *common, "--k", "3", "--out", str(tmp_path / "knn")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["fewshot", *common, "--way", "3", "--shot", "1", "--query", "1", "--folds", "2",
                            "--out", str(tmp_path / "fs")])
    assert r.exit_code == 0, r.output
    fsr = json.loads((tmp_path / "fs" / "result.json").read_text())
    assert len(fsr["fold_accuracy"]) == 2 and fsr["accuracy_std"] is not None
    for name in ("svm", "knn", "fs"):  # every classification protocol: OA, mAcc, per class, confusion
        res = json.loads((tmp_path / name / "result.json").read_text())
        assert res["schema"] == "i2p.eval.result/1" and res["command"]
        assert {"accuracy", "mean_class_accuracy"} <= set(res["metrics"])
        assert 0 <= res["mean_class_accuracy"] <= 1 and res["per_class_accuracy"]
        cm = np.asarray(res["confusion_matrix"])
        assert cm.shape == (len(res["classes"]),) * 2 and cm.sum() > 0
        assert (tmp_path / name / "confusion.png").stat().st_size > 0
    r = runner.invoke(app, ["fewshot", *common, "--way", "3", "--shot", "2", "--query", "2"])
    assert r.exit_code != 0 and "only 0 classes" in str(r.exception)
    r = runner.invoke(app, ["compare", "--markdown", str(tmp_path / "svm"), str(tmp_path / "knn"),
                            str(tmp_path / "fs")])
    assert r.exit_code == 0 and r.output.count("\n") == 5 and "fewshot" in r.output


def test_spec_without_test_split_is_refused(tmp_path):
    from i2p.common.errors import UserError
    from i2p.stage3_eval import runner

    with pytest.raises(UserError, match=r"has no test split"):
        runner.svm("random", "builtin:primitives?n_test=0", str(tmp_path), points=POINTS, progress=False)


FT = dict(points=POINTS, epochs=2, batch_size=16, warmup=1, votes=2, device="cpu", progress=False)
FT_SPEC = "builtin:primitives?n_train=1&n_test=1"


@pytest.mark.slow
def test_finetune_select_on_test_is_flagged_and_resume_is_exact(tmp_path, monkeypatch):
    from i2p.common.errors import UserError
    from i2p.stage3_eval import finetune_train as ft
    from i2p.stage3_eval import runner

    a = runner.finetune("random", FT_SPEC, str(tmp_path / "a"), select_on="test", **FT)
    md = (tmp_path / "a" / "result.md").read_text()
    assert md.splitlines()[0].startswith("**WARNING: model selected on the TEST split")
    assert len(a["history"]) == 2 and "test_accuracy" in a["history"][0] and 0 <= a["accuracy"] <= 1
    assert a["metrics"][:2] == ["accuracy", "mean_class_accuracy"] and "accuracy_no_vote" in a["metrics"]
    assert np.asarray(a["confusion_matrix"]).sum() == a["n_test"] and (tmp_path / "a" / "confusion.png").is_file()

    # interrupt run b after its first epoch's last.ckpt, then resume: same history as run a
    real_save, calls = ft.save_checkpoint, []

    def flaky(state, path, **kw):
        real_save(state, path, **kw)
        if str(path).endswith("last.ckpt"):
            calls.append(path)
            raise KeyboardInterrupt

    monkeypatch.setattr(ft, "save_checkpoint", flaky)
    with pytest.raises(KeyboardInterrupt):
        runner.finetune("random", FT_SPEC, str(tmp_path / "b"), select_on="test", **FT)
    monkeypatch.setattr(ft, "save_checkpoint", real_save)
    b = runner.finetune("random", FT_SPEC, str(tmp_path / "b"), select_on="test", **FT)
    assert len(calls) == 1
    assert a["history"] == b["history"]  # bit for bit (deterministic CPU kernels)
    assert a["accuracy"] == b["accuracy"]
    with pytest.raises(UserError, match="other settings"):
        runner.finetune("random", FT_SPEC, str(tmp_path / "b"), select_on="test", **{**FT, "epochs": 3})


def test_fewshot_fold_dir_end_to_end(tmp_path):
    import pickle

    from i2p.stage3_eval import runner
    from i2p.stage3_eval.fewshot import fold_path

    rng = np.random.default_rng(0)
    ds = create_dataset(SPEC, "train", num_points=300, seed=0)
    for f in range(2):
        items = [(np.concatenate([ds.load(i).points, rng.normal(size=(300, 3))], 1), i % 3, "x")
                 for i in range(f, f + 12)]
        path = fold_path(tmp_path / "folds", 3, 2, f)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps({"train": items[:6], "test": items[6:]}))
    res = runner.fewshot("random", None, str(tmp_path / "out"), way=3, shot=2, folds=2,
                         fold_dir=str(tmp_path / "folds"), points=POINTS, device="cpu", progress=False)
    assert len(res["fold_accuracy"]) == 2 and set(res["fingerprints"]) == {"fold 0", "fold 1"}
    assert res["checkpoint"]["bn_calibration_shapes"] == 6
    assert len(res["fold_mean_class_accuracy"]) == 2 and "per_class_note" in res
