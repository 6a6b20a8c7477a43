"""Stage-3 protocols on synthetic features (fast): SVM, C selection, kNN, few-shot, reports."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from i2p.common.errors import UserError
from i2p.stage3_eval import fewshot as fs
from i2p.stage3_eval import report, svm
from i2p.stage3_eval.knn import run_knn


def blobs(n_per_class=30, classes=4, dim=16, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    X = np.concatenate([c + spread * rng.normal(size=(n_per_class, dim)) for c in centres])
    y = np.repeat(np.arange(classes), n_per_class)
    return X.astype(np.float32), y


def split(X, y, seed=1, frac=0.5):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))
    cut = int(len(y) * frac)
    return X[idx[:cut]], y[idx[:cut]], X[idx[cut:]], y[idx[cut:]]


# ------------------------------------------------------------------ SVM
def test_svm_separable_blobs_score_one():
    Xtr, ytr, Xte, yte = split(*blobs())
    res = svm.run_svm(Xtr, ytr, Xte, yte, C="auto", folds=3, grid=(0.01, 0.1, 1.0))
    assert res["accuracy"] >= 0.99
    assert res["accuracy_paper_C"] >= 0.9
    assert res["C_mode"] == "auto" and res["C"] in (0.01, 0.1, 1.0)


def test_svm_random_labels_near_chance():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 16)).astype(np.float32)
    y = rng.integers(0, 4, size=400)
    res = svm.run_svm(X[:200], y[:200], X[200:], y[200:], C=0.1)
    assert 0.1 < res["accuracy"] < 0.42
    assert res["C_mode"] == "fixed"


def test_C_auto_never_reads_test_labels():
    X, y = blobs(n_per_class=20, spread=2.5, seed=5)  # overlapping: C matters
    Xtr, ytr, Xte, yte = split(X, y)
    grid = (0.001, 0.01, 0.1, 1.0)
    a = svm.run_svm(Xtr, ytr, Xte, yte, C="auto", folds=3, grid=grid)
    perm = np.random.default_rng(0).permutation(yte)
    b = svm.run_svm(Xtr, ytr, Xte, perm, C="auto", folds=3, grid=grid)
    assert a["C"] == b["C"]
    assert a["C_selection"]["grid"] == b["C_selection"]["grid"]
    assert a["accuracy"] != b["accuracy"]


def test_paper_C_by_data_kind():
    assert svm.paper_C_for("scanobjectnn:/x") == 0.018
    assert svm.paper_C_for("modelnet40:/x") == 0.0093
    assert svm.paper_C_for("builtin:primitives") == 0.0093


def test_choose_C_falls_back_with_one_shape_per_class():
    X, y = blobs(n_per_class=1)
    assert svm.choose_C(X, y)["method"] == "fallback"


# ------------------------------------------------------------------ kNN
def test_knn_blobs_and_random():
    Xtr, ytr, Xte, yte = split(*blobs())
    for vote in ("majority", "weighted"):
        res = run_knn(Xtr, ytr, Xte, yte, k=5, vote_mode=vote)
        assert res["accuracy"] >= 0.95 and res["backend"] == "faiss-cpu"
    rng = np.random.default_rng(4)
    X = rng.normal(size=(400, 16)).astype(np.float32)
    y = rng.integers(0, 4, size=400)
    assert run_knn(X[:200], y[:200], X[200:], y[200:], k=20)["accuracy"] < 0.42
    assert run_knn(Xtr, ytr, Xte, yte, k=1000)["k_used"] == len(ytr)


def test_knn_without_faiss_gives_the_same_neighbours(monkeypatch):
    """faiss is optional: with its import made to fail, the exact torch search finds the same
    neighbours (random features: no ties) and the same predictions."""
    import sys

    from i2p.stage3_eval import knn

    pytest.importorskip("faiss")
    rng = np.random.default_rng(7)
    X = rng.normal(size=(300, 24)).astype(np.float32)
    y = rng.integers(0, 5, size=300)
    s_f, i_f, b_f = knn.search(X[:200], X[200:], 10)
    res_f = run_knn(X[:200], y[:200], X[200:], y[200:], k=10, vote_mode="weighted")
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    s_t, i_t, b_t = knn.search(X[:200], X[200:], 10)
    res_t = run_knn(X[:200], y[:200], X[200:], y[200:], k=10, vote_mode="weighted")
    assert b_f == "faiss-cpu" and b_t.startswith("torch-exact") and res_t["backend"] == b_t
    np.testing.assert_array_equal(i_f, i_t)
    np.testing.assert_allclose(s_f, s_t, atol=1e-5)
    np.testing.assert_array_equal(res_f["predictions"], res_t["predictions"])
    assert res_f["accuracy"] == res_t["accuracy"]


# ------------------------------------------------------------------ few-shot
def test_episodes_deterministic_and_disjoint():
    y = np.repeat(np.arange(8), 40)
    a = fs.sample_episode(y, 5, 10, 20, seed=7, fold=3)
    b = fs.sample_episode(y, 5, 10, 20, seed=7, fold=3)
    c = fs.sample_episode(y, 5, 10, 20, seed=7, fold=4)
    assert np.array_equal(a["support"], b["support"]) and np.array_equal(a["query"], b["query"])
    assert not np.array_equal(a["support"], c["support"])
    assert not set(a["support"]) & set(a["query"])
    assert len(a["support"]) == 50 and len(a["query"]) == 100
    assert set(y[a["support"]]) == set(a["classes"]) == set(y[a["query"]])
    # two pools: support indexes train, query indexes test
    yq = np.repeat(np.arange(8), 25)
    d = fs.sample_episode(y, 5, 10, 20, seed=7, fold=0, query_labels=yq)
    assert set(yq[d["query"]]) == set(d["classes"])


def test_fewshot_refusal_names_the_numbers():
    y = np.concatenate([np.repeat(np.arange(3), 30), np.repeat(np.arange(3, 8), 20)])
    with pytest.raises(UserError) as e:
        fs.sample_episode(y, 5, 10, 20, 0, 0)
    assert str(e.value) == ("5-way 10-shot with 20 query needs 30 shapes in 5 classes; "
                            "only 3 classes have >= 30 (max 30)")


def test_fewshot_blobs_mean_std():
    X, y = blobs(n_per_class=35, classes=6)
    res = fs.run_fewshot(X, y, way=5, shot=5, query=10, folds=4, seed=1, C=0.1)
    assert len(res["fold_accuracy"]) == 4 and res["accuracy_mean"] >= 0.99
    assert res["accuracy_std"] == pytest.approx(np.std(res["fold_accuracy"]))
    assert res == fs.run_fewshot(X, y, way=5, shot=5, query=10, folds=4, seed=1, C=0.1)
    with pytest.raises(UserError, match="finetune"):
        fs.run_fewshot(X, y, mode="finetune")


def test_read_modelnet_fewshot_fold_file(tmp_path):
    rng = np.random.default_rng(0)
    data = {"train": [(rng.normal(size=(64, 6)).astype(np.float32), i % 2, "airplane") for i in range(4)],
            "test": [(rng.normal(size=(64, 3)), np.int64(i % 2)) for i in range(2)]}
    path = fs.fold_path(tmp_path, 2, 2, 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(data))
    out = fs.read_fold_file(path)
    assert len(out["train"]) == 4 and out["train"][0][0].shape == (64, 3) and out["test"][1][1] == 1
    samples = list(fs.fold_samples(out["train"], 32, 0, "t"))
    assert samples[0].points.shape == (32, 3)
    assert np.linalg.norm(samples[0].points, axis=1).max() <= 1 + 1e-5


def test_fold_file_refuses_foreign_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "0.pkl"
    path.write_bytes(pickle.dumps({"train": [Evil()], "test": []}))
    with pytest.raises(UserError, match="only numpy arrays"):
        fs.read_fold_file(path)


# ------------------------------------------------------------------ reports
def _fake_result(acc, ckpt="random"):
    return {"protocol": "svm", "data": "builtin:primitives", "fingerprints": {"train": "ab", "test": "cd"},
            "checkpoint": {"path": ckpt, "sha256": None}, "seeds": {"seed": 0},
            "settings": {"points": 1024, "pool": "max", "C": "auto"}, "accuracy": acc,
            "accuracy_paper_C": acc - 0.01, "C": np.float64(0.01)}


def test_report_files_and_compare(tmp_path):
    import matplotlib.image as mpimg

    y = np.array([0, 1, 2, 2, 1])
    p = np.array([0, 1, 1, 2, 1])
    r1 = report.write_result(tmp_path / "a", _fake_result(0.8), y, p, ["cube", "sphere", "cone"])
    report.write_result(tmp_path / "b", {**_fake_result(0.6, "x.ckpt"), "accuracy": 0.6})
    data = json.loads((tmp_path / "a" / "result.json").read_text())
    for key in ("protocol", "data", "fingerprints", "checkpoint", "seeds", "settings", "accuracy",
                "versions", "timestamp"):
        assert key in data
    assert {"i2p", "torch", "sklearn"} <= set(data["versions"])
    assert r1["accuracy"] == 0.8
    md = (tmp_path / "a" / "result.md").read_text()
    assert "80.00%" in md and "| field | value |" in md
    img = mpimg.imread(tmp_path / "a" / "confusion.png")
    assert img.shape[0] > 0 and img.shape[1] > 0
    table = report.compare([tmp_path / "a", tmp_path / "b" / "result.json"])
    lines = table.strip().splitlines()
    assert len(lines) == 4 and "80.00%" in lines[2] and "x.ckpt" in lines[3]
    with pytest.raises(UserError):
        report.compare([tmp_path / "nothing"])


def test_fewshot_report_headline(tmp_path):
    res = {"protocol": "fewshot", "data": "d", "checkpoint": {"path": "random"}, "settings": {},
           **fs.summarize([0.9, 1.0])}
    out = report.write_result(tmp_path, res)
    assert "95.00 ± 5.00% (2 folds)" in report.headline(out)
    assert "fold 1" in (tmp_path / "result.md").read_text()
