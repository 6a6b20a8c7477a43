"""The fault matrix of docs/RELIABILITY.md, one test per fault: what the user sees (one line),
what is kept, and that re-running the same command finishes."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import signal
import warnings
from pathlib import Path

import pytest
import torch

from i2p.cli import main
from i2p.common.checkpoint import FORMAT, CheckpointError, load_checkpoint
from i2p.common.signals import EXIT_REQUEUE
from i2p.stage2_pretrain import config as pcfg
from i2p.stage2_pretrain.diagnostics import MetricsLog
from i2p.stage2_pretrain.run_dir import RunDirLock
from i2p.stage2_pretrain.train import TrainingError, pretrain

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["model.enc_depths=[1,1,1]", "model.drop_path=0.0", "data.workers=0", "log.ckpt_every_steps=4",
        "log.progress=false", "optim.warmup_epochs=1", "data.holdout=0", "optim.batch_size=8"]


def cfg(epochs=2, **sets):
    return pcfg.resolve("tiny", FAST + [f"optim.epochs={epochs}"] + [f"{k}={v}" for k, v in sets.items()])


def cli_args(cache, out, *extra):
    return ["pretrain", "--cache", cache, "--out", str(out), "--config", "tiny", "--device", "cpu",
            "--epochs", "1"] + [a for s in FAST for a in ("--set", s)] + list(extra)


def losses(run_dir) -> dict[int, float]:
    recs = [json.loads(ln) for ln in Path(run_dir, "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


class Evil:
    """Unpickling it would write a file: the payload of a hostile checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "code ran"))


def test_checkpoint_that_would_run_code_is_refused_by_every_loader(small_cache, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"format": FORMAT, "model": {}, "step": 1, "payload": Evil(str(marker))}, evil)
    torch.load(evil, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(evil)
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.ckpt").write_bytes(evil.read_bytes())
    assert main(cli_args(small_cache, run)) == 2  # pretrain resume
    assert main(["eval", "svm", "--ckpt", str(evil), "--data", "builtin:primitives?n_train=2&n_test=1",
                 "--device", "cpu", "--out", str(tmp_path / "svm")]) == 2
    assert main(["convert", str(evil), "--from", "i2p-mae", "--out", str(tmp_path / "conv")]) == 2
    assert main(["export", "--ckpt", str(evil), "--out", str(tmp_path / "exp")]) == 2
    err = capsys.readouterr().err
    assert err.count("i2p: error:") == 4, err
    import i2p

    with pytest.raises(CheckpointError, match="cannot be read"):
        i2p.load_encoder(str(evil), device="cpu")  # the Python API
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_last_ckpt_falls_back_to_previous_and_finishes(small_cache, tmp_path, damage):
    ref = tmp_path / "ref"
    pretrain(small_cache, str(ref), cfg(epochs=2))
    run = tmp_path / "run"
    pretrain(small_cache, str(run), cfg(epochs=2), max_steps=9)  # checkpoints at 4, 6 (epoch), 8, 9
    last = run / "last.ckpt"
    assert load_checkpoint(run / "last.ckpt.prev")["step"] == 8
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    with pytest.warns(UserWarning, match="resuming from last.ckpt.prev \\(step 8\\)"):
        result = pretrain(small_cache, str(run), cfg(epochs=2))
    assert result.step == 12
    assert losses(ref) == losses(run)  # nothing lost but the re-done step, bit for bit


def test_second_pretrain_on_one_directory_is_refused_and_a_stale_lock_taken_over(small_cache, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    held = RunDirLock(run).acquire()
    try:
        assert main(cli_args(small_cache, run, "--max-steps", "1")) == 2
    finally:
        held.release()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pid {os.getpid()}" in err[0] and "started" in err[0], err
    # a killed holder: its lock file stays, its flock went with the process
    (run / ".lock").write_text(json.dumps({"pid": 999_999_999, "host": "gone", "started": "then"}))
    assert main(cli_args(small_cache, run, "--max-steps", "1")) == 0
    assert load_checkpoint(run / "last.ckpt")["step"] == 1


def test_disk_full_during_checkpoint_write_keeps_previous_and_rerun_completes(small_cache, tmp_path, monkeypatch):
    from i2p.common import checkpoint as ck

    ref = tmp_path / "ref"
    pretrain(small_cache, str(ref), cfg(epochs=2))
    run = tmp_path / "run"
    save = torch.save

    def full_disk(obj, fh, *a, **k):
        if isinstance(obj, dict) and obj.get("step") == 8:
            fh.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, fh, *a, **k)

    monkeypatch.setattr(ck.torch, "save", full_disk)
    with pytest.raises(TrainingError, match="step 8.*No space left on device.*previous checkpoint is intact"):
        pretrain(small_cache, str(run), cfg(epochs=2))
    monkeypatch.setattr(ck.torch, "save", save)
    assert load_checkpoint(run / "last.ckpt")["step"] == 6
    assert not list(run.glob(".*.tmp"))  # the half-written temporary file is gone
    assert pretrain(small_cache, str(run), cfg(epochs=2)).step == 12
    assert losses(ref) == losses(run)


def test_sigterm_writes_a_checkpoint_and_exits_for_requeue(small_cache, tmp_path, monkeypatch):
    write = MetricsLog.write

    def term_at_3(self, rec):
        write(self, rec)
        if rec.get("step") == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(MetricsLog, "write", term_at_3)
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(cli_args(small_cache, run)) == EXIT_REQUEUE
    assert load_checkpoint(run / "last.ckpt")["step"] == 3



# ---------------------------------------------------------------- i2p eval finetune
# 13 shapes (1 carved off for validation), batch 4: 3 steps per epoch, 3 epochs.
FT = ["eval", "finetune", "--ckpt", "random", "--data", "builtin:primitives?n_train=1&n_test=1", "--points", "256",
      "--epochs", "3", "--batch-size", "4", "--warmup-epochs", "1", "--device", "cpu", "--no-progress"]


def ft_result(out) -> tuple:
    res = json.loads(Path(out, "result.json").read_text())
    return losses(out), res["history"], res["selected_epoch"], res["accuracy"]


@pytest.fixture(scope="module")
def ft_ref(tmp_path_factory):
    """An uninterrupted fine-tune: its per-step losses, history, selection and accuracy."""
    out = tmp_path_factory.mktemp("ft") / "ref"
    assert main(FT + ["--out", str(out)]) == 0
    return ft_result(out)


def test_finetune_sigterm_mid_epoch_exits_for_requeue_and_resumes_exactly(ft_ref, tmp_path, monkeypatch, capsys):
    write = MetricsLog.write

    def term_at_4(self, rec):
        write(self, rec)
        if rec.get("step") == 4 and "loss" in rec:  # the first step of epoch 2
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(MetricsLog, "write", term_at_4)
    out = tmp_path / "ft"
    assert main(FT + ["--out", str(out)]) == EXIT_REQUEUE
    assert "stopped by SIGTERM after step 4 of 9" in capsys.readouterr().err
    ck = load_checkpoint(out / "last.ckpt")
    assert (ck["step"], ck["epoch"], ck["pos"]) == (4, 1, 1) and ck["rng"] is not None
    monkeypatch.setattr(MetricsLog, "write", write)
    assert main(FT + ["--out", str(out)]) == 0
    assert ft_result(out) == ft_ref  # the RNG streams continued mid-epoch: bit for bit


def test_finetune_damaged_or_hostile_last_ckpt(ft_ref, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(FT + ["--out", str(out)]) == 0
    last = out / "last.ckpt"
    assert load_checkpoint(last.with_name("last.ckpt.prev"))["step"] == 6
    last.write_bytes(last.read_bytes()[:1000])  # truncated: falls back to epoch 2 and redoes epoch 3
    with pytest.warns(UserWarning, match="resuming from last.ckpt.prev \\(step 6\\)"):
        assert main(FT + ["--out", str(out)]) == 0
    assert ft_result(out) == ft_ref

    marker = tmp_path / "pwned"
    torch.save({"format": FORMAT, "model": {}, "step": 9, "payload": Evil(str(marker))}, last)
    last.with_name("last.ckpt.prev").unlink()
    capsys.readouterr()
    assert main(FT + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no intact checkpoint" in err[0] and "cannot be read" in err[0], err
    assert not marker.exists()


def test_finetune_disk_full_keeps_previous_checkpoint_and_rerun_completes(ft_ref, tmp_path, monkeypatch, capsys):
    from i2p.common import checkpoint as ck

    save = torch.save

    def full_disk(obj, fh, *a, **k):
        if isinstance(obj, dict) and obj.get("step") == 6:
            fh.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, fh, *a, **k)

    monkeypatch.setattr(ck.torch, "save", full_disk)
    out = tmp_path / "ft"
    assert main(FT + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.ckpt of step 6" in err[0] and "No space left on device" in err[0], err
    assert "previous checkpoint is intact" in err[0]
    assert load_checkpoint(out / "last.ckpt")["step"] == 3 and not list(out.glob(".*.tmp"))
    monkeypatch.setattr(ck.torch, "save", save)
    assert main(FT + ["--out", str(out)]) == 0
    assert ft_result(out) == ft_ref


def test_second_finetune_on_one_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "ft"
    out.mkdir()
    held = RunDirLock(out, "i2p eval finetune").acquire()
    try:
        assert main(FT + ["--out", str(out), "--epochs", "1"]) == 2
    finally:
        held.release()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "in use by another i2p eval finetune" in err[0] and f"pid {os.getpid()}" in err[0], err
    assert not (out / "last.ckpt").exists()
