"""The benchmark harness runs end to end at tiny sizes and reports every ratio (no timing asserted)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")


def test_benchmark_harness_smoke(tmp_path):
    from benchmarks.run import GOALS, MAX_GOALS, RATIO_KEYS, main

    prev = torch.get_num_threads()
    try:
        # In-process so the conftest's tiny teacher (registered in this process) can stand in
        # for CLIP; the sizes are the harness's 'smoke' preset.
        report = main(["--smoke", "--in-process", "--teacher", "test-tiny", "--threads", "1",
                       "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "work")])
    finally:
        torch.set_num_threads(prev)
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(RATIO_KEYS) <= set(data["ratios"])
    for key in RATIO_KEYS:
        assert data["ratios"][key] is not None, key
    for key in (*GOALS, *MAX_GOALS):
        assert data["goals"][key]["holds"] in (True, False), key
    s2 = data["results"]["stage2"]
    for m in ("tiny", "paper"):  # the 3D-only network has no 2D head: fewer parameters
        assert s2[m]["params_3d_only_m"] < s2[m]["params_m"]
    assert s2["paper"]["loaders"]["ratio_vs_memory"]["workers_0"] > 0
    for section in ("stage1", "stage2", "reads", "point_ops"):
        assert data["results"][section]["memory"]["rss_peak_mib"] > 0
    s1 = data["results"]["stage1"]
    assert set(s1["phase_seconds"]) == {"read", "project", "teacher", "write"}
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Ratios and goals" in md and "cached_vs_online_paper" in md
    assert report["ratios"] == data["ratios"]


def test_balance_cost_benchmark_runs(small_cache):
    """The default-vs-fixed-lambda step benchmark runs on a real cache (no timing asserted)."""
    from benchmarks.balance_cost import main

    res = main(["--cache", small_cache, "--batch", "4", "--repeats", "1", "--warmup", "0"])
    assert res["default_step_s"] > 0 and res["fixed_lambda_step_s"] > 0 and res["ratio_default_over_fixed_lambda"] > 0



def test_two_d_half_ablation_runs_every_variant(small_cache):
    """``benchmarks/two_d_half.py`` times every ablation on a real cache and reports each
    against 3D-only (no timing asserted: 3D-only's own ratio is exactly 1)."""
    from benchmarks.two_d_half import main

    prev = torch.get_num_threads()
    try:
        res = main(["--cache", small_cache, "--rounds", "1", "--warmup", "0"])
    finally:
        torch.set_num_threads(prev)
    assert set(res["step_seconds"]) == {"default", "3d_only", "3d_only_reading_2d", "random_mask", "token_targets",
                                        "default_memory_fed", "3d_only_memory_fed"}
    assert all(t > 0 for t in res["step_seconds"].values())
    assert res["vs_3d_only"]["3d_only"] == 1.0 and res["memory_fed_ratio"] > 0

def test_peak_rss_of_pretrain_is_measured_in_a_child(small_cache, tmp_path):
    """``benchmarks/memory.py`` runs ``i2p pretrain --config paper`` for a step in a child
    process and reports that process's own peak RSS (more than torch alone, less than 8 GiB)."""
    from benchmarks.memory import pretrain_child

    res = pretrain_child(small_cache, tmp_path / "run", steps=1, batch=2)
    assert 200 < res["rss_peak_mib"] < 8192
    assert res["preset"] == "paper" and (tmp_path / "run" / "last.ckpt").exists()


def test_interleaved_rotates_which_variant_runs_first():
    from benchmarks.common import interleaved

    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    times = interleaved(fns, repeats=4, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # the warm-up round
    rounds = [calls[3 + 3 * r:6 + 3 * r] for r in range(4)]
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}
