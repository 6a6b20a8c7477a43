"""Overall vs mean per-class accuracy, the confusion matrix, and the result.json a program reads.

The hand-made set: 3 classes with 6, 2 and 2 test shapes. Class a is always right, b and c are
each right once out of two (their misses predicted as a). By hand:
  accuracy            = (6 + 1 + 1) / 10                 = 0.8
  mean class accuracy = (6/6 + 1/2 + 1/2) / 3            = 2/3
  confusion (rows true, cols predicted) = [[6,0,0],[1,1,0],[1,0,1]]
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from i2p.common.errors import UserError
from i2p.common.invocation import command_line, recording
from i2p.stage3_eval import fewshot as fs
from i2p.stage3_eval import metrics, report

CLASSES = ["a", "b", "c"]
Y_TRUE = [0, 0, 0, 0, 0, 0, 1, 1, 2, 2]
Y_PRED = [0, 0, 0, 0, 0, 0, 0, 1, 2, 0]


def _result(protocol="svm"):
    return {"protocol": protocol, "data": "builtin:primitives", "checkpoint": {"path": "random"},
            "settings": {"points": 1024}, "accuracy": 0.8}


def test_hand_made_accuracy_differs_from_mean_class_accuracy():
    m = metrics.classification_metrics(Y_TRUE, Y_PRED, CLASSES)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["mean_class_accuracy"] == pytest.approx(2 / 3)
    assert m["per_class_accuracy"] == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.5})
    assert m["per_class_support"] == {"a": 6, "b": 2, "c": 2}
    assert m["confusion_matrix"] == [[6, 0, 0], [1, 1, 0], [1, 0, 1]]
    assert m["classes"] == CLASSES
    assert metrics.mean_class_accuracy(Y_TRUE, Y_PRED) == pytest.approx(2 / 3)


def test_class_without_test_shapes_is_left_out_of_the_mean():
    # 4 classes, none of class d in the test set; a label past the class list gets its index as name
    m = metrics.classification_metrics([0, 1, 1, 4], [0, 1, 0, 4], ["a", "b", "c", "d"])
    assert m["classes"] == ["a", "b", "c", "d", "4"]
    assert set(m["per_class_accuracy"]) == {"a", "b", "4"}
    assert m["mean_class_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert len(m["confusion_matrix"]) == 5 and m["confusion_matrix"][2] == [0] * 5


def test_result_json_is_readable_by_a_program(tmp_path):
    with recording(["eval", "svm", "--ckpt", "random", "--data", "builtin:primitives?n_train=2"]):
        report.write_result(tmp_path, _result(), Y_TRUE, Y_PRED, CLASSES)
    data = json.loads((tmp_path / "result.json").read_text())
    assert data["schema"] == report.SCHEMA == "i2p.eval.result/1"
    assert data["protocol"] == "svm"
    assert data["command"] == "i2p eval svm --ckpt random --data 'builtin:primitives?n_train=2'"
    assert data["metrics"] == ["accuracy", "mean_class_accuracy"]
    assert data["accuracy"] == pytest.approx(0.8) and data["mean_class_accuracy"] == pytest.approx(2 / 3)
    assert data["per_class_accuracy"] == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.5})
    assert data["confusion_matrix"] == [[6, 0, 0], [1, 1, 0], [1, 0, 1]] and data["classes"] == CLASSES
    assert (tmp_path / "confusion.png").stat().st_size > 0
    md = (tmp_path / "result.md").read_text()
    assert "mean_class_accuracy | 66.67%" in md and "| b | 50.00% | 2 |" in md


def test_command_outside_main_is_sys_argv(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["my_script.py", "--x", "a b"])
    assert command_line() == "my_script.py --x 'a b'"
    assert report.write_result(tmp_path, _result())["command"] == "my_script.py --x 'a b'"


def test_main_records_its_argv(tmp_path, capsys, monkeypatch):
    """main([...]) makes command_line() the argv it was given (not the test runner's sys.argv)."""
    from i2p.cli import main

    report.write_result(tmp_path / "r", _result(), Y_TRUE, Y_PRED, CLASSES)
    seen, real = [], report.compare_rows

    def spy(results):
        seen.append(command_line())
        return real(results)

    monkeypatch.setattr(report, "compare_rows", spy)
    assert main(["eval", "compare", str(tmp_path / "r")]) == 0
    assert seen == [f"i2p eval compare {tmp_path / 'r'}"]
    assert "66.67%" in capsys.readouterr().out  # the mean-class column
    assert command_line() != seen[0]  # restored after main returns


def test_compare_reads_old_results_without_schema(tmp_path):
    new = report.write_result(tmp_path / "new", _result(), Y_TRUE, Y_PRED, CLASSES)
    old = {k: v for k, v in _result("knn").items()}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "result.json").write_text(json.dumps(old))
    loaded = report.load_result(tmp_path / "old")
    assert loaded["schema"] is None and loaded["metrics"] == ["accuracy"]
    rows = report.compare_rows([tmp_path / "new", tmp_path / "old"])
    assert len(rows[0]) == len(report.COMPARE_HEADER)
    assert rows[0][5] == "66.67%" and rows[1][5] == "-" and rows[1][4] == "80.00%"
    assert new["schema"] == report.SCHEMA
    (tmp_path / "alien").mkdir()
    (tmp_path / "alien" / "result.json").write_text(json.dumps({**old, "schema": "other.thing/3"}))
    with pytest.raises(UserError, match="schema"):
        report.load_result(tmp_path / "alien")


def test_fewshot_reports_mean_over_episodes_and_pools_per_class():
    rng = np.random.default_rng(0)
    # 4 classes; classes 2 and 3 overlap (hard to tell apart), 0 and 1 are far apart
    centres = np.array([[0.0, 0], [10, 0], [0, 10], [0.3, 10]])
    y = np.repeat(np.arange(4), 30)
    X = centres[y] + rng.normal(scale=0.5, size=(len(y), 2))
    res = fs.run_fewshot(X, y, way=3, shot=5, query=8, folds=6, seed=0, C=1.0)
    eps = res["episodes"]
    assert res["accuracy"] == res["accuracy_mean"] == pytest.approx(np.mean([e["accuracy"] for e in eps]))
    assert res["mean_class_accuracy"] == pytest.approx(np.mean([e["mean_class_accuracy"] for e in eps]))
    assert res["mean_class_accuracy_std"] == pytest.approx(np.std([e["mean_class_accuracy"] for e in eps]))
    for e in eps:  # balanced query sets: the two agree per episode
        assert e["mean_class_accuracy"] == pytest.approx(e["accuracy"])
    pooled = res["predictions"]
    assert len(pooled["y_true"]) == len(pooled["y_pred"]) == 6 * 3 * 8
    assert set(pooled["y_true"]) <= {0, 1, 2, 3}  # the data set's labels, not 0..way-1
    m = metrics.classification_metrics(pooled["y_true"], pooled["y_pred"])
    assert min(m["per_class_accuracy"]["0"], m["per_class_accuracy"]["1"]) >= 0.95
    assert m["confusion_matrix"][2][3] + m["confusion_matrix"][3][2] > 0  # the overlapping pair


def test_pooled_episode_maps_labels_back():
    pooled = fs._Pooled()
    # episode classes [5, 2]: episode label 0 is class 5, 1 is class 2; 3 of 4 right, unbalanced
    mca = pooled.add([0, 0, 0, 1], [0, 0, 1, 1], label_of=[5, 2])
    assert pooled.y_true == [5, 5, 5, 2] and pooled.y_pred == [5, 5, 2, 2]
    assert mca == pytest.approx((2 / 3 + 1) / 2)


def test_fewshot_result_file_has_per_class_and_confusion(tmp_path):
    res = {"protocol": "fewshot", "data": "d", "checkpoint": {"path": "random"}, "settings": {},
           **fs.summarize([0.9, 1.0], [0.85, 1.0])}
    out = report.write_result(tmp_path, res, Y_TRUE, Y_PRED, CLASSES)
    assert out["accuracy"] == pytest.approx(0.95)  # the episode mean, not the pooled 0.8
    assert out["mean_class_accuracy"] == pytest.approx(0.925)
    assert out["per_class_accuracy"]["b"] == pytest.approx(0.5)
    assert out["metrics"] == ["accuracy", "mean_class_accuracy", "accuracy_std", "mean_class_accuracy_std",
                              "accuracy_mean"]
    assert (tmp_path / "confusion.png").is_file()
