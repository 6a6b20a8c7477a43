"""Several weighted ``--cache`` sources in one run, and ``data.fraction`` (data-efficiency curves):
the seeded epoch plan, its resume, the weighted target statistics, the CLI spellings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import build_small_cache, subprocess_env
from i2p.common.geometry import stable_seed
from i2p.stage2_pretrain import config as pcfg
from i2p.stage2_pretrain.mixing import epoch_order, fraction_subset, parse_weighted_caches, training_plan

FAST = ["model.enc_depths=[1,1,1]", "model.drop_path=0.0", "data.workers=0", "log.ckpt_every_steps=4",
        "log.progress=false", "optim.warmup_epochs=1", "data.holdout=0", "optim.batch_size=8"]


@pytest.fixture(scope="module")
def second_cache(tmp_path_factory):
    """12 primitives of 6 classes (the first half), same tiny teacher and point count as small_cache."""
    out = tmp_path_factory.mktemp("cache") / "half"
    build_small_cache(out, data="builtin:primitives?n_train=2&n_test=1#classes=half:1/2")
    return str(out)


def test_parse_weighted_caches():
    assert parse_weighted_caches(["a", "b:0.3"]) == (["a", "b"], [1.0, 0.3])
    assert parse_weighted_caches(["a", "b:1"]) == (["a", "b"], None)  # all ones: a plain mix
    assert parse_weighted_caches(["s3://bucket/c", "/x/y:2"]) == (["s3://bucket/c", "/x/y"], [1.0, 2.0])
    assert parse_weighted_caches(["a", "b"], "1,0.25") == (["a", "b"], [1.0, 0.25])
    for entries, text, match in ((["a", "b"], "1", "2 --cache"), (["a:0.5", "b"], "1,1", "not both"),
                                 (["a:0", "b:0"], None, "at least one"), (["a", "b"], "1,x", "numbers")):
        with pytest.raises(ValueError, match=match):
            parse_weighted_caches(entries, text)


def test_epoch_order_draws_each_source_by_its_weight():
    sources = np.array([0] * 40 + [1] * 10)
    # no weights: exactly the permutation a run without mixing uses (existing runs unchanged)
    plain = np.random.default_rng(stable_seed("order", 3, 5)).permutation(50)
    assert np.array_equal(epoch_order(sources, None, 3, 5), plain)
    assert np.array_equal(epoch_order(sources, [1.0, 1.0], 3, 5), plain)
    a = epoch_order(sources, [0.25, 2.5], 3, 5)
    assert len(a) == 10 + 25
    assert (sources[a] == 0).sum() == 10 and len(set(a[sources[a] == 0].tolist())) == 10  # a subset, no repeat
    counts = np.bincount(a[sources[a] == 1], minlength=50)[40:]
    assert counts.min() == 2 and counts.max() == 3 and counts.sum() == 25  # twice each, plus 5 drawn once more
    assert np.array_equal(a, epoch_order(sources, [0.25, 2.5], 3, 5))  # (seed, epoch) fixes it: resumable
    b = epoch_order(sources, [0.25, 2.5], 3, 6)
    assert set(a[sources[a] == 0].tolist()) != set(b[sources[b] == 0].tolist())  # a fresh subset per epoch


def test_fraction_subset_is_stratified_nested_and_seeded():
    labels = np.repeat(np.arange(4), [10, 10, 20, 3])
    pos = list(range(len(labels)))
    quarter = fraction_subset(pos, labels, 0.25, seed=0)
    half = fraction_subset(pos, labels, 0.5, seed=0)
    assert np.bincount(labels[quarter]).tolist() == [2, 2, 5, 1]  # round(0.25 n), at least 1 per class
    assert np.bincount(labels[half]).tolist() == [5, 5, 10, 2]
    assert set(quarter) <= set(half) and quarter == sorted(quarter)
    assert fraction_subset(pos, labels, 0.5, seed=1) != half and fraction_subset(pos, labels, 1.0, 0) == pos


def test_training_plan_counts(small_cache, second_cache):
    from i2p.cache.reader import MultiCacheDataset

    full = MultiCacheDataset([small_cache, second_cache], with_targets=False)
    cfg = pcfg.resolve("tiny", FAST + ["data.cache_weights=[0.5,2]"])
    plan = training_plan(full, cfg.data, 0)
    assert plan["epoch_size"] == 26 + 24 and plan["sources"].tolist() == [0] * 52 + [1] * 12
    cfg = pcfg.resolve("tiny", FAST + ["data.fraction=0.5", "data.holdout=8"])
    plan = training_plan(full, cfg.data, 0)
    assert len(plan["held_pos"]) == 8 and plan["epoch_size"] == len(plan["train_pos"]) < 64 - 8
    assert not set(plan["held_pos"]) & set(plan["train_pos"])
    with pytest.raises(pcfg.cfgutil.ConfigError, match="fraction"):
        pcfg.resolve("tiny", ["data.fraction=0"])


def test_weighted_target_statistics(small_cache, second_cache):
    """Weights [1, 0] / [0, 1]: one cache's statistics alone; equal shares: the unweighted pooling."""
    from i2p.cache.reader import MultiCacheDataset
    from i2p.stage2_pretrain.teacher_targets import target_stats

    both = MultiCacheDataset([small_cache, second_cache], with_targets=False)
    alone = target_stats(MultiCacheDataset([small_cache], with_targets=False), 12)
    only_first = target_stats(both, 24, [1.0, 0.0])
    for k in alone:
        assert torch.allclose(only_first[k], alone[k], rtol=1e-5, atol=1e-6), k
    plain, even = target_stats(both, 24), target_stats(both, 24, [1.0, 52 / 12])  # equal shares, 12 read each
    for k in plain:
        assert torch.allclose(plain[k], even[k], rtol=1e-4, atol=1e-5), k
    second = target_stats(MultiCacheDataset([second_cache], with_targets=False), 12)
    only_second = target_stats(both, 24, [0.0, 1.0])
    for k in second:
        assert torch.allclose(only_second[k], second[k], rtol=1e-5, atol=1e-6), k


def _losses(run_dir) -> dict[int, float]:
    recs = [json.loads(ln) for ln in Path(run_dir, "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def test_weighted_mix_trains_and_resumes_bit_exact(small_cache, second_cache, tmp_path):
    from i2p.common.checkpoint import load_checkpoint
    from i2p.stage2_pretrain.train import pretrain

    cfg = pcfg.resolve("tiny", FAST + ["optim.epochs=2", "data.cache_weights=[0.5,2]"])
    ref = pretrain([small_cache, second_cache], str(tmp_path / "ref"), cfg)
    assert ref.step == 2 * ((26 + 24) // 8)
    pretrain([small_cache, second_cache], str(tmp_path / "run"), cfg, max_steps=4)  # stops mid epoch 0
    pretrain([small_cache, second_cache], str(tmp_path / "run"), cfg)  # resumes
    a, b = _losses(tmp_path / "ref"), _losses(tmp_path / "run")
    assert sorted(a) == sorted(b) == list(range(1, 13)) and a == b
    ca, cb = load_checkpoint(tmp_path / "ref" / "last.ckpt"), load_checkpoint(tmp_path / "run" / "last.ckpt")
    assert ca["config"]["data"]["cache_weights"] == [0.5, 2.0]
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k


def test_cli_weight_spellings_and_errors(small_cache, second_cache, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "i2p", "pretrain", *args, "--config", "tiny", "--max-steps", "1",
                               *[a for s in FAST for a in ("--set", s)]],
                              capture_output=True, text=True, env=subprocess_env(), timeout=300)

    bad = run("--cache", small_cache, "--cache", second_cache, "--cache-weights", "1", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--cache-weights has 1 values for 2" in bad.stderr
    ok = run("--cache", small_cache, "--cache", f"{second_cache}:0.5", "--out", str(tmp_path / "r"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "cache_weights:\n  - 1.0\n  - 0.5" in (tmp_path / "r" / "config.yaml").read_text()
