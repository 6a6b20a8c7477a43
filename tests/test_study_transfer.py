"""``i2p study transfer``: a micro class-disjoint study end to end (the study caches half of the
primitives' classes, pretrains variants on them, evaluates on the other half beside random init
and the teacher's own features), its resume rule, and the shipped transfer configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, subprocess_env

PRIMS = "builtin:primitives?n_train=4&n_test=2"
MICRO_SET = ["model.num_groups=[64,32,16]", "model.group_sizes=[8,4,4]", "optim.batch_size=8",
             "optim.epochs=1", "data.workers=0", "log.ckpt_every_steps=2"]
TEACHER = "timm:mobilenetv3_small_050"  # random weights: fast, offline, creatable in a subprocess


def _config(tmp_path: Path) -> Path:
    cfg = {
        "name": "micro-transfer", "seeds": [0, 1], "jobs": 2,
        "teacher": TEACHER, "teacher_weights": "random",
        "pretrain": {"data": [PRIMS + "#classes=half:1/2"], "points": 512, "preset": "tiny", "set": MICRO_SET,
                     "build_args": ["--batch-size", "8"], "max_steps": 2},
        "eval": {"data": PRIMS + "#classes=half:2/2", "points": 256, "batch_size": 16, "protocols": ["svm"],
                 "svm": {"C": 0.01}, "also": {"seen": PRIMS + "#classes=half:1/2"},
                 "materialize": False},  # primitives are cheap to sample: no data jobs
        "masking": {"samples": 0},
        "variants": [{"name": "random-init", "pretrain": False},
                     {"name": "3d-only", "set": ["model.mask_mode=random", "model.targets=3d"]},
                     {"name": "half-data", "set": ["data.fraction=0.5"]},
                     {"name": "teacher-meanmax", "teacher": TEACHER, "pool": "meanmax"}],
    }
    path = tmp_path / "micro-transfer.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _study(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "i2p", "study", "transfer", *args], cwd=cwd,
                          env=subprocess_env(), capture_output=True, text=True, timeout=900)


def test_micro_transfer_study_end_to_end(tmp_path):
    cfg, out, docs = _config(tmp_path), tmp_path / "study", tmp_path / "docs" / "RESULTS.md"
    r = _study(["--config", str(cfg), "--out", str(out), "--write-docs", str(docs)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((out / "study.json").read_text())
    # 1 cache + 2 seeds x (init + 2 pretrain + 2 eval sets x (3 svm + 1 teacher svm))
    assert len(state["tasks"]) == 1 + 2 * (1 + 2 + 8)
    assert state["complete"] and all(t["status"] == "done" for t in state["tasks"].values())

    # the study's cache holds the first 6 of 13 classes (train split), relabelled 0..5
    from i2p.cache.reader import CacheDataset, open_for_training

    settings = open_for_training(str(out / "caches" / "src0"))["settings"]
    assert settings["data_spec"].endswith("#classes=half:1/2") and settings["teacher"] == TEACHER
    assert len(CacheDataset(str(out / "caches" / "src0"), with_targets=False)) == 6 * 4

    # every evaluation is on the 7 held-out classes; the teacher row ran the teacher
    for v in ("random-init", "3d-only", "half-data", "teacher-meanmax"):
        for s in (0, 1):
            res = json.loads((out / "runs" / v / f"seed{s}" / "svm" / "result.json").read_text())
            assert res["n_train"] == 7 * 4 and res["n_test"] == 7 * 2 and res["seeds"]["seed"] == s
            assert 0.0 <= res["accuracy"] <= 1.0
            seen = json.loads((out / "runs" / v / f"seed{s}" / "svm@seen" / "result.json").read_text())
            assert seen["n_train"] == 6 * 4 and seen["n_test"] == 6 * 2  # the 6 classes pretraining saw
    teacher = json.loads((out / "runs" / "teacher-meanmax" / "seed0" / "svm" / "result.json").read_text())
    assert teacher["checkpoint"]["path"] == f"teacher:{TEACHER}" and teacher["settings"]["pool"] == "meanmax"
    assert teacher["checkpoint"]["teacher"]["is_random"] is True

    # data.fraction=0.5 trains on 12 of the 20 training shapes (see below): 12 // 8 = 1 step
    from i2p.common.checkpoint import load_checkpoint

    assert int(load_checkpoint(out / "runs" / "half-data" / "seed0" / "pretrain" / "last.ckpt")["step"]) == 1
    assert int(load_checkpoint(out / "runs" / "3d-only" / "seed0" / "pretrain" / "last.ckpt")["step"]) == 2

    # the table: mean ± std over 2 seeds, paired Δ vs 3d-only, the teacher row
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["variant"]: r for r in summary["rows"]}
    assert summary["reference"] == "3d-only"
    per = {v: [rows[v]["per_seed"][str(s)]["svm"] for s in (0, 1)] for v in rows}
    mean_half = sum(per["half-data"]) / 2
    assert rows["half-data"]["svm"][0] == pytest.approx(mean_half) and rows["half-data"]["svm"][2] == 2
    want_delta = sum(a - b for a, b in zip(per["half-data"], per["3d-only"])) / 2
    assert rows["half-data"]["svm_delta"][0] == pytest.approx(want_delta)
    md = (out / "results.md").read_text()
    assert md.startswith("# Transfer study `micro-transfer`") and "Δ SVM vs 3d-only" in md
    assert "few-shot" not in md.split("## Accuracy")[1].split("\n\n")[1]  # svm only: no few-shot column
    assert "teacher" in md and "(ref)" in md and "Masking statistics" not in md
    assert "## Accuracy on `seen`" in md and set(summary["also"]) == {"seen"}
    seen_rows = {r["variant"]: r for r in summary["also"]["seen"]["rows"]}
    assert seen_rows["half-data"]["svm"][2] == 2 and "svm_delta" in seen_rows["half-data"]
    assert (out / "micro-transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the data-efficiency table: shapes each pretrained row trained on, fewest first per setting
    # 24 cached minus 4 held out = 20 in 6 classes of 3 or 4 ([3,4,3,3,4,3]); half of each, rounded: 2 -> 12
    assert rows["half-data"]["train_shapes"] == 12 and rows["3d-only"]["train_shapes"] == 20
    eff = md.split("## Data efficiency")[1]
    assert "| half-data | 12 |" in eff and "| 3d-only | 20 |" in eff
    text = docs.read_text()
    assert "BEGIN i2p-study:micro-transfer (generated by `i2p study transfer --write-docs`" in text
    assert "## Transfer study" in text and (docs.parent / "micro-transfer.png").is_file()

    # a second invocation does no new work
    r2 = _study(["--config", str(cfg), "--out", str(out)], tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "0 to run" in r2.stderr


def test_transfer_config_errors():
    from i2p.common.errors import UserError
    from i2p.study import config as scfg

    good = {"teacher": "effnet-lite2", "pretrain": {"data": "builtin:primitives#classes=half:1/2"},
            "eval": {"data": "builtin:primitives#classes=half:2/2", "protocols": "svm"},
            "variants": [{"name": "t", "teacher": "effnet-lite2", "pool": "meanmax"}, {"name": "d"}]}
    study = scfg.from_dict(good)
    assert study.pretrain.data == ["builtin:primitives#classes=half:1/2"] and study.eval.protocols == ["svm"]
    assert study.variant("t").pretrain is False and study.variant("t").kind == "teacher"
    for bad in ({**good, "teacher": None},  # pretrain.data needs a teacher to cache it
                {**good, "pretrain": {}},
                {**good, "eval": {"data": "x", "protocols": ["svm", "knn"]}},
                {**good, "variants": [{"name": "t", "teacher": "effnet-lite2", "set": ["model.targets=3d"]}]},
                {**good, "variants": [{"name": "d", "pool": "sum"}]}):
        with pytest.raises(UserError):
            scfg.from_dict(bad)


@pytest.mark.parametrize("name", ["transfer-shrec", "transfer-prims-to-shrec", "transfer-shrec-to-prims"])
def test_shipped_transfer_configs_parse_and_plan(name, tmp_path):
    from i2p.study import config as scfg
    from i2p.study import plan as splan

    study = scfg.load(REPO / "experiments" / f"{name}.yaml", kind="transfer")
    kinds = {v.name: v.kind for v in study.variants}
    assert kinds["random-init"] == "init" and kinds["3d-only"] == "pretrain" and kinds["default"] == "pretrain"
    assert {kinds["teacher-meanmax"], kinds["teacher-max"]} == {"teacher"} and study.seeds == [0, 1, 2]
    m = scfg.resolve_pretrain(study, study.variant("3d-only"), 0).model
    assert (m.mask_mode, m.targets) == ("random", "3d")
    assert scfg.resolve_pretrain(study, study.variant("default"), 0).optim.epochs == 30
    tasks = splan.plan(study, splan.Layout(tmp_path / "o"), {})
    ids = {t.id for t in tasks}
    assert "cache/src0" in ids and "svm/teacher-max/seed2" in ids and "pretrain/teacher-max/seed0" not in ids
    build = next(t for t in tasks if t.id == "cache/src0").argv
    assert build[build.index("--teacher") + 1] == "effnet-lite2" and build[build.index("--split") + 1] == "train"
    pre = next(t for t in tasks if t.id == "pretrain/default/seed1")
    assert "cache/src0" in pre.deps and str(splan.Layout(tmp_path / "o").cache(0)) in pre.argv
    if name == "transfer-shrec":
        assert study.pretrain.data[0].endswith("#classes=half:1/2") and study.eval.data.endswith("#classes=half:2/2")
        assert study.eval.also["seen"] == study.pretrain.data[0]  # classes A: their test split never pretrained on
        assert {"svm@seen/default/seed0", "fewshot@seen/teacher-max/seed2", "data/seen/seed1"} <= ids
    elif name == "transfer-shrec-to-prims":
        assert study.pretrain.data[0].startswith("meshes:") and study.eval.data == "builtin:primitives"
    else:
        fr = scfg.resolve_pretrain(study, study.variant("default-quarter"), 0).data.fraction
        assert study.pretrain.data == ["builtin:primitives"] and fr == 0.25
