"""The ablation study: a micro study end to end (subprocess jobs, tables, chart, docs block),
its resume rules (an interrupted pretrain is continued; a second invocation does no new work),
the study config, and the masking statistics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, subprocess_env

MICRO_SET = ["model.num_groups=[64,32,16]", "model.group_sizes=[8,4,4]", "optim.batch_size=8",
             "optim.epochs=1", "data.workers=0", "log.ckpt_every_steps=2"]


def _micro_config(tmp_path: Path, cache: str) -> Path:
    cfg = {
        "name": "micro",
        "seeds": [0, 1],
        "jobs": 2,
        "pretrain": {"caches": [cache], "preset": "tiny", "set": MICRO_SET, "max_steps": 3},
        "eval": {"data": "builtin:primitives?n_train=4&n_test=2", "points": 128, "batch_size": 16,
                 "materialize": False, "svm": {"C": 0.01}, "fewshot": {"way": 3, "shot": 2, "query": 1, "folds": 2}},
        "masking": {"samples": 8, "temperatures": [1.0, 0.05]},
        "variants": [{"name": "random-init", "pretrain": False},
                     {"name": "i2p-T1", "label": "full I2P T=1",
                      "set": ["model.mask_mode=saliency", "model.targets=2d3d", "model.temperature=1.0"]}],
    }
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _study(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "i2p", "study", "ablation", *args], cwd=cwd,
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)


def _snapshot(out: Path) -> dict:
    from i2p.common.checkpoint import load_checkpoint

    snap = {}
    for p in sorted(out.glob("runs/*/seed*/*/result.json")):
        snap[str(p)] = p.stat().st_mtime_ns
    for p in sorted(out.glob("runs/*/seed*/pretrain/last.ckpt")):
        snap[str(p)] = (p.stat().st_mtime_ns, int(load_checkpoint(p)["step"]))
    for p in sorted(out.glob("runs/*/seed*/init.ckpt")):
        snap[str(p)] = p.stat().st_mtime_ns
    return snap


def test_micro_study_end_to_end_and_resume(tmp_path, small_cache):
    cfg = _micro_config(tmp_path, small_cache)
    out = tmp_path / "study"
    docs = tmp_path / "docs" / "RESULTS.md"
    # one run was cut off after 2 of its 3 planned steps (same command, as if killed): the study
    # must continue it, not restart it
    from i2p.study import config as scfg
    from i2p.study import plan as splan

    layout = splan.Layout(out)
    argv = {t.id: t for t in splan.plan(scfg.load(cfg), layout, {})}["pretrain/i2p-T1/seed1"].argv
    assert argv[-2:] == ["--max-steps", "3"]
    subprocess.run([sys.executable, "-m", "i2p", *argv[:-2], "--max-steps", "2"], env=subprocess_env(),
                   check=True, capture_output=True, timeout=300)
    assert splan.ckpt_step(layout.pretrain("i2p-T1", 1) / "last.ckpt") == 2

    r = _study(["--config", str(cfg), "--out", str(out), "--write-docs", str(docs)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    # every run and every result is there
    for v in ("random-init", "i2p-T1"):
        for s in (0, 1):
            for proto in ("svm", "fewshot"):
                res = json.loads((out / "runs" / v / f"seed{s}" / proto / "result.json").read_text())
                assert res["seeds"]["seed"] == s
                key = "accuracy" if proto == "svm" else "accuracy_mean"
                assert 0.0 <= res[key] <= 1.0
    state = json.loads((out / "study.json").read_text())
    assert state["complete"] and all(t["status"] == "done" for t in state["tasks"].values())
    assert len(state["tasks"]) == 1 + 2 * (1 + 2) * 2  # masking + 2 seeds x 2 variants x (train|init + 2 evals)
    assert state["machine"]["nproc"] >= 1
    # the random-init baseline is the pretraining run's own step-0 encoder (same seed, same architecture)
    from i2p.common.checkpoint import load_checkpoint

    init = load_checkpoint(out / "runs" / "random-init" / "seed0" / "init.ckpt")
    pt = load_checkpoint(out / "runs" / "i2p-T1" / "seed0" / "pretrain" / "last.ckpt")
    assert init["config"]["model"]["num_groups"] == pt["config"]["model"]["num_groups"] == [64, 32, 16]
    assert int(pt["step"]) == 3
    resumed = [json.loads(x) for x in (layout.pretrain("i2p-T1", 1) / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in resumed if "loss" in x] == [1, 2, 3]  # continued from step 2
    assert splan.ckpt_step(layout.pretrain("i2p-T1", 1) / "last.ckpt") == 3
    # tables, chart, docs
    md = (out / "results.md").read_text()
    assert "full I2P T=1" in md and "random-init" in md and "Masking statistics" in md
    assert "i2p study ablation --config" in md and "CPU(s)" in md and "torch" in md
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert [r["variant"] for r in summary["rows"]] == ["random-init", "i2p-T1"]
    assert summary["rows"][1]["svm"][2] == 2  # two seeds finished
    text = docs.read_text()
    assert "BEGIN i2p-study:micro" in text and "LEAD" in text and (docs.parent / "ablation.png").is_file()

    # second invocation: nothing is re-run, nothing is rewritten
    before = _snapshot(out)
    assert len(before) == 2 * 2 * 2 + 2 + 2
    r2 = _study(["--config", str(cfg), "--out", str(out), "--write-docs", str(docs)], tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "0 to run" in r2.stderr
    assert _snapshot(out) == before
    text2 = docs.read_text()
    assert text2.count("BEGIN i2p-study:micro") == 1 and text2.count("### Reading (lead)") == 1


def test_study_config_errors(tmp_path):
    from i2p.common.errors import UserError
    from i2p.study import config as scfg

    good = {"pretrain": {"caches": ["c"]}, "eval": {"data": "builtin:primitives"},
            "variants": [{"name": "a"}, {"name": "b", "set": {"model.targets": "3d"}}]}
    study = scfg.from_dict(good)
    assert study.variant("b").set == ["model.targets=3d"] and study.seeds == [0, 1, 2]
    for bad in ({**good, "variants": [{"name": "a"}, {"name": "a"}]},
                {**good, "pretrain": {"caches": []}},
                {**good, "eval": {"data": "x", "svm": {"C": -1}}},
                {**good, "extra": 1},
                {**good, "variants": [{"name": "a/b"}]}):
        with pytest.raises(UserError):
            scfg.from_dict(bad)


def test_shipped_study_config_parses():
    from i2p.study import config as scfg

    study = scfg.load(REPO / "experiments" / "ablation-shrec.yaml")
    names = [v.name for v in study.variants]
    assert len(names) == 7 and study.seeds == [0, 1, 2] and names[0] == "random-init"
    for v in study.variants:
        if v.pretrain:
            cfg = scfg.resolve_pretrain(study, v, 0)
            assert cfg.data.points in (None, 2048)
    temps = sorted(scfg.resolve_pretrain(study, v, 0).model.temperature for v in study.variants
                   if v.pretrain and scfg.resolve_pretrain(study, v, 0).model.mask_mode == "saliency"
                   and scfg.resolve_pretrain(study, v, 0).model.targets == "2d3d")
    assert temps == [0.03, 0.1, 1.0]


def test_masking_statistics(small_cache):
    """T -> 0 keeps the most salient tokens (overlap with the top-20% ~ 1); random masking
    overlaps at chance (~ n_visible / G); T = 1 on near-uniform saliency is close to random."""
    from i2p.stage2_pretrain.model.config import ModelConfig
    from i2p.study.masking import markdown_table, masking_stats

    cfg = ModelConfig.tiny(num_points=512, num_groups=(128, 64, 20), group_sizes=(8, 4, 4))
    stats = masking_stats([small_cache], cfg, [1.0, 1e-6], samples=52, seed=0, draws=16)
    rows = {(r["mode"], r["temperature"]): r for r in stats["modes"]}
    assert stats["num_tokens"] == 20 and stats["num_visible"] == 4 and stats["top_k"] == 4
    assert stats["samples"] == 52
    rnd, cold = rows[("random", None)], rows[("saliency", 1e-6)]
    assert abs(rnd["overlap_top"] - stats["chance_overlap"]) < 0.04  # 52 x 16 draws
    assert cold["overlap_top"] > 0.97
    assert cold["sal_visible"] > cold["sal_masked"]
    assert rnd["max_over_mean"] == pytest.approx(1.0) and rnd["entropy_rel"] == pytest.approx(1.0)
    assert cold["max_over_mean"] > rows[("saliency", 1.0)]["max_over_mean"] >= 1.0
    assert "saliency T=1e-06" in markdown_table(stats)


def test_masking_statistics_common_random_numbers(small_cache):
    """Same seed -> same numbers; random masking ignores saliency entirely."""
    from i2p.stage2_pretrain.model.config import ModelConfig
    from i2p.study.masking import masking_stats

    cfg = ModelConfig.tiny(num_points=512, num_groups=(128, 64, 20), group_sizes=(8, 4, 4))
    a = masking_stats([small_cache], cfg, [0.5], samples=6, seed=3, draws=2)
    b = masking_stats([small_cache], cfg, [0.5], samples=6, seed=3, draws=2)
    assert a == b
