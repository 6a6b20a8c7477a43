"""Stage 1 over dask (``--dask local:2``: worker processes) gives the single-process store; a
SIGTERM finishes the shard in progress and a re-run completes the same store."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import zarr

from conftest import build_small_cache, subprocess_env
from i2p.stage1_project.dask_build import parse_dask
from i2p.common.errors import UserError
from i2p.stage1_project.build import BuildConfig, build_cache

DATA = "builtin:primitives?n_train=10&n_test=2"  # 130 training shapes: 3 shards
TESTS = Path(__file__).resolve().parent

# LocalCluster spawns its worker processes, which re-import the parent's main script: a script
# that calls i2p must guard its entry point (`i2p` and `python -m i2p` do).
DRIVER = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import conftest  # registers the test-tiny teacher (dask workers import it by module name too)
from i2p.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
"""


def _same_store(a: Path, b: Path) -> None:
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    assert ga.attrs["complete"] is True and gb.attrs["complete"] is True
    for name in ("points", "features", "saliency", "proj", "label", "id"):
        files = sorted(p.relative_to(a / name) for p in (a / name).rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(b / name) for p in (b / name).rglob("*") if p.is_file()), name
        for rel in files:
            assert (a / name / rel).read_bytes() == (b / name / rel).read_bytes(), f"{name}/{rel}"
    volatile = {"timings", "throughput_shapes_per_s"}
    assert {k: v for k, v in ga.attrs.items() if k not in volatile} == \
           {k: v for k, v in gb.attrs.items() if k not in volatile}
    assert sorted(ga["shards"].group_keys()) == sorted(gb["shards"].group_keys()) == ["00000", "00001", "00002"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, one torch thread: what a dask worker runs with (its nanny sets
    OMP_NUM_THREADS=1); a CPU kernel may round differently with another thread count."""
    out = tmp_path_factory.mktemp("dask") / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_small_cache(out, data=DATA, points=256)
    finally:
        torch.set_num_threads(threads)
    return out


def test_dask_local_two_workers_equals_single_process(reference, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "dask"
    proc = subprocess.Popen([sys.executable, str(driver), "cache", "build", "--data", DATA, "--teacher", "test-tiny",
                             "--teacher-weights", "random", "--points", "256", "--batch-size", "8", "--device", "cpu",
                             "--out", str(out), "--no-progress", "--dask", "local:2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-4000:]
    assert "complete; 3 shards written" in err, err
    workers = re.findall(r"dask worker \S+:(\d+): shards \[([\d, ]+)\], teacher created (\d+)x", err)
    assert workers, err
    assert sorted(int(s) for _, shards, _ in workers for s in shards.split(",")) == [0, 1, 2]
    assert all(int(n) <= 1 for _, _, n in workers), workers  # once per worker, not per shard
    assert str(proc.pid) not in {pid for pid, _, _ in workers}  # worker processes, not the driver
    _same_store(out, reference)


def test_sigterm_finishes_the_shard_in_progress_then_rerun_completes(reference, tmp_path):
    out = tmp_path / "stopped"
    seen = []

    def on_progress(shard):
        seen.append(shard)
        if len(seen) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the build is running

    cfg = BuildConfig(data=DATA, out=str(out), teacher="test-tiny", teacher_weights="random", points=256,
                      batch_size=8, device="cpu", progress=False)
    before = signal.getsignal(signal.SIGTERM)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = build_cache(cfg, on_progress=on_progress)
        again = build_small_cache(out, data=DATA, points=256)
    finally:
        torch.set_num_threads(threads)
    assert report.stopped_by_signal == "SIGTERM"
    assert report.shards_done_now == 1 and not report.complete and seen == [0]
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored
    assert again.complete and again.shards_done_now == 2 and again.shards_skipped_existing == 1
    _same_store(out, reference)


def test_parse_dask():
    assert parse_dask("local:3") == ("local", 3)
    assert parse_dask("tcp://10.0.0.1:8786") == ("remote", "tcp://10.0.0.1:8786")
    assert parse_dask("sched:8786") == ("remote", "tcp://sched:8786")
    for bad in ("local:x", "local:0", "nowhere"):
        with pytest.raises(UserError):
            parse_dask(bad)
