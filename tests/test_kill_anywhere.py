"""Kill anywhere: ``i2p pretrain`` SIGKILLed at five points drawn at random per run (after a
step, half-way through a checkpoint's bytes, between the two renames of a checkpoint rotation,
and at a random time), re-run with the same command each time, ends with the losses of the
uninterrupted run for every step, bit for bit, and the same weights."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import subprocess_env
from i2p.common.checkpoint import load_checkpoint

RUNNER = str(Path(__file__).with_name("cli_runner.py"))
# 42 training samples (10 held out), batch 8: 5 steps per epoch, 20 steps; a checkpoint every 3
# steps and at each epoch's end; held-out R2 every epoch and diagnostics every 4 steps run too.
SETS = ["model.enc_depths=[1,1,1]", "data.workers=1", "log.ckpt_every_steps=3", "log.progress=false",
        "optim.warmup_epochs=1", "log.diag_every_steps=4"]
TOTAL = 20
CKPT_STEPS = sorted({s for s in range(1, TOTAL + 1) if s % 3 == 0 or s % 5 == 0})


def _args(cache, out):
    return [sys.executable, RUNNER, "pretrain", "--cache", cache, "--out", str(out), "--config", "tiny",
            "--epochs", "4", "--batch-size", "8", "--device", "cpu"] + [a for s in SETS for a in ("--set", s)]


def _losses(run_dir) -> dict[int, float]:
    recs = [json.loads(ln) for ln in Path(run_dir, "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def _run(cache, out, env_extra=None, kill_after_s=None):
    env = subprocess_env()
    env.update(env_extra or {})
    proc = subprocess.Popen(_args(cache, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after_s is not None:
        try:
            proc.wait(timeout=kill_after_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    out_s, err = proc.communicate(timeout=600)
    return proc.returncode, err


def _plan(rng: random.Random) -> list[tuple[str, object]]:
    """Five kill points in increasing step order: one of each kind plus one more drawn at random."""
    kinds = ["step", "ckpt", "rotate", "time", rng.choice(["step", "ckpt", "rotate"])]
    rng.shuffle(kinds)
    plan, lo = [], 1
    for i, kind in enumerate(kinds):
        hi = TOTAL - (len(kinds) - i)  # leave room for the remaining points
        if kind == "time":
            plan.append((kind, round(rng.uniform(2.0, 12.0), 2)))
            continue
        pool = [s for s in range(lo, hi + 1) if kind == "step" or s in CKPT_STEPS]
        s = rng.choice(pool or [hi])
        plan.append((kind, s))
        lo = s + 1
    return plan


@pytest.mark.slow
def test_sigkill_at_five_random_points_resumes_bit_identical(small_cache, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    rc, err = _run(small_cache, ref)
    assert rc == 0, err[-3000:]
    seed = int(os.environ.get("I2P_KILL_SEED", time.time_ns() % 2**31))
    plan = _plan(random.Random(seed))
    print(f"kill plan (I2P_KILL_SEED={seed}): {plan}")
    env_of = {"step": "I2P_TEST_KILL_AT_STEP", "ckpt": "I2P_TEST_KILL_IN_CKPT", "rotate": "I2P_TEST_KILL_IN_ROTATE"}
    for kind, at in plan:
        if kind == "time":
            rc, err = _run(small_cache, run, kill_after_s=at)
        else:
            rc, err = _run(small_cache, run, {env_of[kind]: str(at)})
        assert rc in (0, -9), (kind, at, err[-3000:])
        # a killed atomic write may leave a ``.NAME.*.tmp`` beside its target (never a broken target)
    rc, err = _run(small_cache, run)
    assert rc == 0, (plan, err[-3000:])
    a, b = _losses(ref), _losses(run)
    assert sorted(a) == sorted(b) == list(range(1, TOTAL + 1)), plan
    diff = [s for s in a if a[s] != b[s]]
    assert not diff, (seed, plan, [(s, a[s], b[s]) for s in diff[:3]])
    ca, cb = load_checkpoint(ref / "last.ckpt"), load_checkpoint(run / "last.ckpt")
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"]), plan
