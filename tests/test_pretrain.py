"""Stage 2 end to end on a small cache: loss falls, exact resume after SIGKILL, torchrun DDP,
cached targets equal online-teacher targets, refusals."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TinyTestTeacher, build_small_cache, subprocess_env
from i2p.cache.reader import CacheDataset
from i2p.common.checkpoint import load_checkpoint
from i2p.common.errors import CacheError
from i2p.stage2_pretrain import config as pcfg
from i2p.stage2_pretrain.train import TrainingError, pretrain

RUNNER = str(Path(__file__).with_name("cli_runner.py"))
FAST = ["model.enc_depths=[1,1,1]", "model.drop_path=0.0", "data.workers=1", "log.ckpt_every_steps=4",
        "log.progress=false", "optim.warmup_epochs=1", "data.holdout=0"]


def losses(run_dir) -> dict[int, float]:
    recs = [json.loads(ln) for ln in Path(run_dir, "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def cli(*args, env_extra=None, check=True, launcher=None):
    env = subprocess_env()
    env.update(env_extra or {})
    cmd = (launcher or [sys.executable]) + [RUNNER, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def tiny_cfg(**sets) -> pcfg.PretrainConfig:
    extra = [f"{k}={v}" for k, v in sets.items()]
    return pcfg.resolve("tiny", FAST + ["optim.batch_size=8", "log.progress=false"] + extra)


def test_loss_falls_and_run_dir_is_complete(small_cache, tmp_path):
    cfg = tiny_cfg(**{"optim.epochs": 6})
    result = pretrain(small_cache, str(tmp_path / "run"), cfg)
    assert result.step == 36
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 36 and all(math.isfinite(r["loss"]) for r in recs)
    l3 = [r["loss_3d"] for r in recs]
    # The 3D reconstruction falls fast and steadily; the 2D part is checked on a fixed batch in
    # test_model (here each step sees other shapes and other visible tokens, so it is noisy).
    assert sum(l3[-6:]) / 6 < 0.5 * sum(l3[:3]) / 3, l3
    assert all(r["loss"] == pytest.approx(r["loss_3d"] + r["w_2d"] * r["loss_2d"], rel=1e-5) for r in recs)
    # the automatic balance, warmed up over the first tenth of the run (step 0: no 2D weight)
    assert recs[0]["w_2d"] == 0 and all(0 < r["w_2d"] < 10 for r in recs[1:])
    run = tmp_path / "run"
    assert (run / "config.yaml").exists() and (run / "last.ckpt").exists() and (run / "epoch-0005.ckpt").exists()
    assert any((run / "tb").iterdir())
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("step", "epoch", "loss", "loss_3d", "loss_2d", "lr", "samples_per_s", "sal_visible", "sal_masked"):
        assert key in rec
    ckpt = load_checkpoint(run / "last.ckpt")  # weights_only=True inside
    assert ckpt["step"] == 36 and not any("teacher" in k for k in ckpt["model"])


def test_sigkill_mid_epoch_then_rerun_reproduces_losses_exactly(small_cache, tmp_path):
    args = ["pretrain", "--cache", small_cache, "--config", "tiny", "--epochs", "3", "--batch-size", "8",
            "--device", "cpu"] + [a for s in FAST for a in ("--set", s)]
    ref, run = tmp_path / "ref", tmp_path / "run"
    cli(*args, "--out", str(ref))
    killed = cli(*args, "--out", str(run), env_extra={"I2P_TEST_KILL_AT_STEP": "11"}, check=False)
    assert killed.returncode == -9
    assert load_checkpoint(run / "last.ckpt")["step"] == 8  # mid-epoch 1 (6 steps per epoch)
    cli(*args, "--out", str(run))
    a, b = losses(ref), losses(run)
    assert sorted(a) == sorted(b) == list(range(1, 19))
    assert a == b  # exact equality, step by step
    ca, cb = load_checkpoint(ref / "last.ckpt"), load_checkpoint(run / "last.ckpt")
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k


def test_torchrun_two_processes_match_one(small_cache, tmp_path):
    sets = FAST + ["model.embed_norm=layer", "data.augment=true"]
    args = ["pretrain", "--cache", small_cache, "--config", "tiny", "--epochs", "1", "--batch-size", "8",
            "--device", "cpu"] + [a for s in sets for a in ("--set", s)]
    cli(*args, "--out", str(tmp_path / "one"))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    cli(*args, "--out", str(tmp_path / "two"), launcher=launcher)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b)
    # Batch 8 on one process and 2 x 4 on two round differently in the last bit from the first
    # forward on (1e-7); Adam turns such noise into lr-sized moves of near-zero-gradient weights,
    # so the gap grows ~10x a step (1e-7, 0, 5e-6, 3e-5, 3e-4 measured). A sharding or gradient
    # averaging bug shows at once: the first steps match tightly, the later ones to 1%.
    for step in a:
        rel = 1e-5 if step <= 3 else 1e-2
        assert b[step] == pytest.approx(a[step], rel=rel, abs=1e-6), step


def test_cached_targets_equal_online_teacher_targets(small_cache):
    from i2p.stage1_project.projection import back_project, project, to_teacher_input

    ds = CacheDataset(small_cache)
    teacher = TinyTestTeacher().freeze("cpu")
    items = [ds[i] for i in (0, 7, 31)]
    points = torch.stack([it["points"] for it in items])
    depth, proj = project(points)
    f, s = teacher(to_teacher_input(depth, teacher.mean, teacher.std))
    f, s = f.view(3, 3, *f.shape[1:]), s.view(3, 3, *s.shape[1:])
    cached_f = torch.stack([it["features"] for it in items]).float()
    cached_s = torch.stack([it["saliency"] for it in items])
    cached_p = torch.stack([it["proj"] for it in items])
    assert torch.equal(cached_p, proj)
    # the cache ran the teacher on batches of another size: conv reductions may then differ in
    # the last bit with the thread count (seen with OMP_NUM_THREADS=1), hence 1e-6, not equal
    torch.testing.assert_close(cached_s, s, rtol=0, atol=1e-6)
    torch.testing.assert_close(cached_f, f.half().float())  # stored as float16
    on = back_project(f.half().float(), points, proj)
    off = back_project(cached_f, points, cached_p)
    assert torch.equal(on, off)


def test_online_teacher_mode_runs(small_cache, tmp_path):
    from i2p.stage2_pretrain.train import pretrain as run

    cfg = pcfg.resolve("tiny", FAST + ["optim.batch_size=8", "online_teacher=true"])
    res = run(small_cache, str(tmp_path / "run"), cfg, max_steps=2)
    assert res.step == 2 and len(losses(tmp_path / "run")) == 2


def test_random_mask_3d_targets(small_cache, tmp_path):
    cfg = tiny_cfg(**{"model.mask_mode": "random", "model.targets": "3d"})
    pretrain(small_cache, str(tmp_path / "run"), cfg, max_steps=3)
    recs = losses(tmp_path / "run")
    assert len(recs) == 3
    rec = json.loads(Path(tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["loss_2d"] == 0.0 and rec["loss"] == pytest.approx(rec["loss_3d"])


def test_refusals(small_cache, tmp_path):
    with pytest.raises(CacheError, match="512 points"):
        pretrain(small_cache, str(tmp_path / "a"), tiny_cfg(**{"data.points": 1024}))
    with pytest.raises(CacheError, match="no i2p cache"):
        pretrain(str(tmp_path / "missing"), str(tmp_path / "b"), tiny_cfg())
    partial = tmp_path / "partial"
    from i2p.cache import store as cs
    orig = cs.mark_shard_done
    try:
        cs.mark_shard_done = lambda *a, **k: None  # nothing gets marked done
        build_small_cache(partial, data="builtin:primitives?n_train=1&n_test=1", points=256)
    finally:
        cs.mark_shard_done = orig
    with pytest.raises(CacheError, match="incomplete"):
        pretrain(str(partial), str(tmp_path / "c"), tiny_cfg())
    proc = cli("pretrain", "--cache", str(tmp_path / "missing"), "--out", str(tmp_path / "d"), check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(small_cache, tmp_path, monkeypatch):
    from i2p.stage2_pretrain.model.mae import I2PMAE

    cfg = tiny_cfg(**{"log.ckpt_every_steps": 2})
    calls = {"n": 0}
    forward = I2PMAE.forward

    def poisoned(self, *a, **k):
        out = forward(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 4:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(I2PMAE, "forward", poisoned)
    with pytest.raises(TrainingError, match="nan.*step 3"):
        pretrain(small_cache, str(tmp_path / "run"), cfg)
    assert load_checkpoint(tmp_path / "run" / "last.ckpt")["step"] == 2


def test_two_caches_train_together_and_mismatch_is_refused(small_cache, tmp_path):
    other = tmp_path / "other"
    build_small_cache(other, data="builtin:primitives?n_train=1&n_test=1", points=512)
    cfg = tiny_cfg()
    res = pretrain([small_cache, str(other)], str(tmp_path / "run"), cfg, max_steps=2)
    assert res.step == 2
    ckpt = load_checkpoint(tmp_path / "run" / "last.ckpt")
    assert ckpt["cache"]["paths"] == [small_cache, str(other)]
    from i2p.cache.reader import MultiCacheDataset
    ds = MultiCacheDataset([small_cache, str(other)])
    assert len(ds) == 52 + 13 and len({ds[i]["index"] for i in range(len(ds))}) == 65
    wrong = tmp_path / "wrong"
    build_small_cache(wrong, data="builtin:primitives?n_train=1&n_test=1", points=256)
    with pytest.raises(CacheError, match="num_points|points"):
        pretrain([small_cache, str(wrong)], str(tmp_path / "run2"), cfg)


def test_loss_weight_override_spellings():
    assert pcfg.resolve("tiny", ["loss.lambda_2d=0.25"]).model.lambda_2d == 0.25
    assert pcfg.resolve("tiny", ["model.lambda_2d=0.5"]).model.lambda_2d == 0.5
    with pytest.raises(Exception, match="unknown config key loss"):
        pcfg.resolve("tiny", ["loss.nope=1"])
