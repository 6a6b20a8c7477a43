"""``i2p submit`` on a real one-node Slurm (scripts/slurm-local.sh), the batch script's signal
handling, and torchrun (2 CPU processes, gloo) resume.

The Slurm tests skip when the cluster cannot start (not root, packages missing) unless
``I2P_REQUIRE_SLURM=1`` (set by .ci/run after installing the packages), where they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, subprocess_env
from i2p.cluster import slurm as sl
from i2p.common.checkpoint import load_checkpoint

RUNNER = str(Path(__file__).with_name("cli_runner.py"))
EXE = f"{sys.executable} {RUNNER}"
SLURM_LOCAL = REPO / "scripts" / "slurm-local.sh"
FAST = ["data.holdout=0", "model.enc_depths=[1,1,1]", "model.drop_path=0.0", "data.workers=1", "log.ckpt_every_steps=4",
        "log.progress=false", "optim.warmup_epochs=1"]
SETS = [a for s in FAST for a in ("--set", s)]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}


# ---- the local cluster ---------------------------------------------------------------------

class LocalSlurm:
    def __init__(self, root: Path):
        self.root = root
        self.env = subprocess_env()
        self.env["SLURM_CONF"] = str(root / "slurm.conf")
        self.env["PATH"] = self.env.get("PATH", "") + ":/usr/sbin:/sbin"

    def run(self, *argv, check=True, timeout=120) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def i2p(self, *argv, **kw) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "i2p", *argv, **kw)

    def states(self, job_id: str) -> list[dict]:
        old = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = self.env["SLURM_CONF"]
        try:
            return sl.job_states(job_id)
        finally:
            if old is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old

    def wait_for(self, job_id: str, pred, timeout: float = 240, what: str = "") -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            recs = self.states(job_id)
            if recs and pred(recs):
                return recs
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id}: timed out waiting for {what}: "
                                     f"{[(r.get('JobId'), r.get('JobState'), r.get('Reason')) for r in recs]}")
            time.sleep(0.3)

    def wait_done(self, job_id: str, timeout: float = 240) -> list[dict]:
        return self.wait_for(job_id, lambda rs: all(r.get("JobState") in TERMINAL for r in rs), timeout, "the end")

    def release_requeued(self, job_id: str) -> None:
        """A requeued job is held ~2 minutes (BeginTime); let it start now -- but only once the
        node has finished cleaning up the previous run (state COMPLETING): a launch during
        clean-up can be refused by slurmd, and the job then ends FAILED without running (seen
        on a loaded 2-core machine)."""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            node = self.run("scontrol", "show", "node", "-o").stdout
            if "COMPLETING" not in node:
                break
            time.sleep(0.5)
        # slurmd may still be killing the previous batch step after the node looks idle
        # ("Job N already killed, do not launch batch job"): a real requeue waits ~2 minutes.
        time.sleep(3.0)
        self.run("scontrol", "update", f"jobid={job_id}", "StartTime=now")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    required = os.environ.get("I2P_REQUIRE_SLURM") == "1"
    skip = pytest.fail if required else pytest.skip
    if os.geteuid() != 0:
        skip("local Slurm needs root")
    if not any(shutil.which(x) or Path("/usr/sbin", x).exists() for x in ("slurmctld",)):
        skip("Slurm not installed (apt-get install --no-install-recommends slurm-wlm slurmctld slurmd "
             "slurm-client munge)")
    root = tmp_path_factory.mktemp("slurm")
    up = subprocess.run(["bash", str(SLURM_LOCAL), "up", str(root)], capture_output=True, text=True, timeout=120)
    if up.returncode != 0:
        skip(f"local Slurm did not start (exit {up.returncode}): {up.stderr.strip()[-800:]}")
    cluster = LocalSlurm(root)
    try:
        yield cluster
    finally:
        subprocess.run(["bash", str(SLURM_LOCAL), "down", str(root)], capture_output=True, text=True, timeout=120)


def _logs(directory: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text()[-2500:]}" for p in sorted(Path(directory).glob("*.out")))


def _losses(run_dir) -> dict[int, float]:
    recs = [json.loads(ln) for ln in Path(run_dir, "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def _max_step(run_dir) -> int:
    try:
        return max(_losses(run_dir), default=0)
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _assert_same_checkpoint(a, b):
    ca, cb = load_checkpoint(Path(a) / "last.ckpt"), load_checkpoint(Path(b) / "last.ckpt")
    assert ca["step"] == cb["step"]
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k


def _assert_same_cache(a: Path, b: Path):
    import zarr

    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    assert ga.attrs["complete"] is True and gb.attrs["complete"] is True
    for name in ("points", "features", "saliency", "proj", "label", "id"):
        x, y = ga[name][:], gb[name][:]
        assert x.shape == y.shape and x.dtype == y.dtype, name
        assert (x.tobytes() == y.tobytes()) if x.dtype != object else (x == y).all(), name
        files_a = sorted(p.relative_to(a / name) for p in (a / name).rglob("*") if p.is_file())
        files_b = sorted(p.relative_to(b / name) for p in (b / name).rglob("*") if p.is_file())
        assert files_a == files_b, name
        for rel in files_a:  # the stored bytes, not only the decoded values
            assert (a / name / rel).read_bytes() == (b / name / rel).read_bytes(), f"{name}/{rel}"
    volatile = {"timings", "throughput_shapes_per_s"}
    assert {k: v for k, v in ga.attrs.items() if k not in volatile} == \
           {k: v for k, v in gb.attrs.items() if k not in volatile}


# ---- the batch script, without Slurm -------------------------------------------------------

def test_dry_run_scripts(capsys):
    from i2p.cli import main

    rc = main(["submit", "pretrain", "--scheduler", "slurm", "--nodes", "2", "--gpus", "4", "--cpus", "16",
               "--time", "24:00:00", "--partition", "gpu", "--output", "/scratch/logs", "--dry-run", "--",
               "--cache", "/scratch/cache", "--out", "/scratch/pt", "--config", "paper"])
    script = capsys.readouterr().out
    assert rc == 0
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --cpus-per-task=16", "#SBATCH --time=24:00:00", "#SBATCH --partition=gpu",
                 "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120", "#SBATCH --open-mode=append",
                 "#SBATCH --output=/scratch/logs/%x-%j.out", "-m torch.distributed.run",
                 '--rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT"', "--nproc-per-node 4", "srun",
                 "-m i2p pretrain", "--cache /scratch/cache", "trap 'forward USR1' USR1", "scontrol requeue"):
        assert line in script, line
    from i2p import __version__
    assert f"# i2p {__version__}" in script and "# stage command:" in script and "# submitted with:" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0

    rc = main(["submit", "cache-build", "--array", "4", "--dry-run", "--", "--data", "builtin:primitives",
               "--out", "/c"])
    script = capsys.readouterr().out
    assert rc == 0 and "#SBATCH --array=0-3" in script and '--shard "${SLURM_ARRAY_TASK_ID}/4"' in script
    assert "%x-%A_%a.out" in script and "srun" not in script

    rc = main(["submit", "pipeline", "--data", "builtin:primitives", "--teacher", "effnet-lite2", "--workdir",
               "/w", "--array", "3", "--config", "tiny", "--dry-run", "--pretrain-args", "--epochs 2"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("#!/bin/bash") == 3
    assert "--dependency=afterok:<job id of i2p-cache-build>" in out
    assert "--dependency=afterok:<job id of i2p-pretrain>" in out
    assert "--ckpt /w/pretrain/last.ckpt" in out and "--epochs 2" in out

    for bad in (["submit", "cache-build", "--array", "2", "--dry-run", "--", "--out", "x", "--shard", "0/2"],
                ["submit", "eval", "--nodes", "2", "--dry-run", "--", "svm"],
                ["submit", "pretrain", "--dry-run"],
                ["submit", "pretrain", "--scheduler", "pbs", "--dry-run", "--", "--out", "x"]):
        assert main(bad) == 2, bad
    capsys.readouterr()


FAKE_STAGE = """
import signal, sys, time, pathlib
flag = []
signal.signal(signal.SIGTERM, lambda s, f: flag.append(s))
pathlib.Path(sys.argv[-1]).write_text("started")
while not flag:
    time.sleep(0.02)
print("stage got", signal.Signals(flag[0]).name, flush=True)
sys.exit(0)
"""


@pytest.mark.parametrize("sig,on_signal,expect_rc,expect_requeue", [
    ("USR1", "requeue", 0, True), ("USR1", "exit", sl.EXIT_STOPPED, False), ("TERM", "requeue", 0, False)])
def test_batch_script_forwards_signal(tmp_path, sig, on_signal, expect_rc, expect_requeue):
    """The script keeps running while the stage stops: it forwards TERM, then requeues on USR1."""
    stage = tmp_path / "stage.py"
    stage.write_text(FAKE_STAGE)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.calls\n')
    (bindir / "scontrol").chmod(0o755)
    opts = sl.SlurmOptions(exe=f"{sys.executable} {stage}", on_signal=on_signal, output=str(tmp_path))
    (tmp_path / "job.sh").write_text(sl.render_script("eval", [str(tmp_path / "started")], opts))
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", SLURM_JOB_ID="4242")
    proc = subprocess.Popen(["bash", str(tmp_path / "job.sh")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.02)
    proc.send_signal(getattr(signal, f"SIG{sig}"))  # only the shell, as `--signal=B:` / `scancel --batch`
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == expect_rc, out
    assert "stage got SIGTERM" in out, out
    assert f"stopped after SIG{sig}" in out, out
    calls = (tmp_path / "scontrol.calls").read_text() if (tmp_path / "scontrol.calls").exists() else ""
    assert (calls.strip() == "requeue 4242") == expect_requeue, calls


# ---- torchrun (no Slurm needed) ------------------------------------------------------------

def test_torchrun_two_processes_resume(small_cache, tmp_path):
    """2 gloo processes: stopped early (--max-steps) and re-run == uninterrupted, tensor for tensor.
    The launcher is the one `i2p submit pretrain --nproc-per-node 2` writes into the job."""
    args = ["--cache", small_cache, "--config", "tiny", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
            *SETS, "--set", "model.embed_norm=layer", "--set", "data.workers=0"]
    opts = sl.SlurmOptions(exe=EXE, nproc_per_node=2)

    def cmd(out, *extra):
        return sl.stage_command("pretrain", args + ["--out", str(tmp_path / out), *extra], opts)

    assert cmd("x")[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = subprocess_env()
    full = subprocess.Popen(cmd("full"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    part = subprocess.run(cmd("part", "--max-steps", "3"), env=env, capture_output=True, text=True, timeout=600)
    assert part.returncode == 0, part.stderr[-3000:]
    assert load_checkpoint(tmp_path / "part" / "last.ckpt")["step"] == 3
    again = subprocess.run(cmd("part"), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    out, _ = full.communicate(timeout=600)
    assert full.returncode == 0, out[-3000:]
    assert sorted(_losses(tmp_path / "full")) == list(range(1, 7))
    assert _losses(tmp_path / "full") == _losses(tmp_path / "part")
    _assert_same_checkpoint(tmp_path / "full", tmp_path / "part")


# ---- on the local Slurm --------------------------------------------------------------------

def test_pipeline_on_local_slurm(slurm, tmp_path):
    """cache-build (2-task array) -> pretrain -> eval svm, chained with afterok; outputs equal the
    same stages run directly."""
    data = "builtin:primitives?n_train=5&n_test=2"  # 65 training shapes: 2 shards, one per array task
    cache_args = ["--points", "256", "--device", "cpu", "--batch-size", "8", "--teacher-weights", "random"]
    pre_args = ["--epochs", "1", "--batch-size", "8", "--device", "cpu", *SETS]
    eval_args = ["--points", "256", "--device", "cpu", "--cv-folds", "2"]
    work = tmp_path / "wd"
    sub = slurm.i2p("submit", "pipeline", "--scheduler", "slurm", "--data", data, "--teacher", "test-tiny",
                    "--workdir", work, "--array", "2", "--config", "tiny", "--cpus", "1", "--mem", "2G",
                    "--exe", EXE, "--cache-args", " ".join(cache_args), "--pretrain-args", " ".join(pre_args),
                    "--eval-args", " ".join(eval_args))
    rec = json.loads((work / "pipeline.json").read_text())
    jobs = {k: v["job_id"] for k, v in rec["jobs"].items()}
    assert set(jobs) == {"cache-build", "pretrain", "eval"}, sub.stdout

    # the same three stages run directly, meanwhile
    ref = tmp_path / "ref"
    direct = " && ".join([
        " ".join([EXE, "cache", "build", "--data", f"'{data}'", "--split", "train", "--teacher", "test-tiny",
                  "--out", str(ref / "cache"), "--no-progress", *cache_args]),
        " ".join([EXE, "pretrain", "--cache", str(ref / "cache"), "--out", str(ref / "pretrain"), "--config", "tiny",
                  "--set", "log.progress=false", *pre_args]),
        " ".join([EXE, "eval", "svm", "--ckpt", str(ref / "pretrain" / "last.ckpt"), "--data", f"'{data}'",
                  "--out", str(ref / "eval"), "--no-progress", *eval_args]),
    ])
    ref_proc = subprocess.Popen(["bash", "-c", direct], env=subprocess_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    results = {stage: slurm.wait_done(jid) for stage, jid in jobs.items()}
    logs = _logs(work / "logs")
    for stage, recs in results.items():
        assert [r["JobState"] for r in recs] == ["COMPLETED"] * len(recs), f"{stage}\n{logs}"
    assert len(results["cache-build"]) == 2
    ref_out, _ = ref_proc.communicate(timeout=600)
    assert ref_proc.returncode == 0, ref_out[-3000:]

    # scripts kept beside the logs, recording the command and the version
    for stage, jid in jobs.items():
        kept = work / "logs" / f"i2p-{stage}-{jid}.sbatch"
        assert kept.exists() and "# stage command:" in kept.read_text() and "submit pipeline" in kept.read_text()
    assert "array task 1" in logs and "--shard 1/2" in logs
    kept = {stage: (work / "logs" / f"i2p-{stage}-{jid}.sbatch").read_text() for stage, jid in jobs.items()}
    assert f"--dependency=afterok:{jobs['cache-build']}" in kept["pretrain"]
    assert f"--dependency=afterok:{jobs['pretrain']}" in kept["eval"]
    # each stage started only after the one before had ended
    assert results["pretrain"][0]["StartTime"] >= max(r["EndTime"] for r in results["cache-build"])
    assert results["eval"][0]["StartTime"] >= results["pretrain"][0]["EndTime"]

    _assert_same_cache(work / "cache", ref / "cache")   # finalized by the last array task
    _assert_same_checkpoint(work / "pretrain", ref / "pretrain")
    ra = json.loads((work / "eval" / "svm" / "result.json").read_text())
    rb = json.loads((ref / "eval" / "result.json").read_text())
    for key in ("accuracy", "C", "accuracy_paper_C", "n_train", "n_test"):
        assert ra[key] == rb[key], key


def test_signal_then_requeue_resumes_exactly(slurm, small_cache, tmp_path):
    """USR1 to the batch shell mid-run: the stage checkpoints and stops; the job is requeued (by
    itself with --on-signal requeue, by `scontrol requeue` with --on-signal exit) and the run
    ends with the checkpoint and losses of an uninterrupted run."""
    args = ["--cache", small_cache, "--config", "tiny", "--epochs", "3", "--batch-size", "8", "--device", "cpu",
            *SETS]
    total = 18  # 52 shapes, batch 8: 6 steps per epoch
    jobs = {}
    for mode in ("requeue", "exit"):
        sub = slurm.i2p("submit", "pretrain", "--scheduler", "slurm", "--cpus", "1", "--mem", "2G",
                        "--on-signal", mode, "--output", tmp_path / "logs", "--job-name", f"pt-{mode}",
                        "--exe", EXE, "--parsable", "--", *args, "--out", tmp_path / mode)
        jobs[mode] = sub.stdout.strip()
    ref = subprocess.Popen([sys.executable, RUNNER, "pretrain", *args, "--out", str(tmp_path / "ref")],
                           env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    signalled = set()
    deadline = time.monotonic() + 240
    while len(signalled) < 2:  # signal each job once it has logged step 2 (mid-run)
        for mode, jid in jobs.items():
            if mode not in signalled and _max_step(tmp_path / mode) >= 2:
                slurm.run("scancel", "--signal=USR1", "--batch", jid)
                signalled.add(mode)
        assert time.monotonic() < deadline, _logs(tmp_path / "logs")
        time.sleep(0.2)

    # requeue mode: the job requeued itself; exit mode: it failed with 75 and we requeue it
    slurm.wait_for(jobs["requeue"], lambda rs: int(rs[0].get("Restarts", 0)) >= 1 and
                   rs[0]["JobState"] == "PENDING", what="self-requeue")
    slurm.release_requeued(jobs["requeue"])
    rec = slurm.wait_done(jobs["exit"])[0]
    assert (rec["JobState"], rec["ExitCode"]) == ("FAILED", f"{sl.EXIT_STOPPED}:0"), _logs(tmp_path / "logs")
    slurm.run("scontrol", "requeue", jobs["exit"])
    slurm.wait_for(jobs["exit"], lambda rs: rs[0]["JobState"] == "PENDING", what="requeue")
    slurm.release_requeued(jobs["exit"])

    for mode, jid in jobs.items():
        rec = slurm.wait_done(jid)[0]
        log = (tmp_path / "logs" / f"pt-{mode}-{jid}.out").read_text()
        daemons = "".join((slurm.root / "log" / name).read_text()[-3000:]
                          for name in ("slurmd.log", "slurmctld.log") if (slurm.root / "log" / name).exists())
        assert rec["JobState"] == "COMPLETED" and rec["Restarts"] == "1", f"{rec}\n{log}\n{daemons}"
        m = re.search(r"pretrain stopped by signal .*?: step (\d+)", log)
        assert m and 2 <= int(m.group(1)) < total, log  # really stopped mid-run
        assert "stage stopped after SIGUSR1" in log and "restart 1" in log and f"step {total}, epoch 3" in log
    out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out[-3000:]
    for mode in jobs:
        assert _losses(tmp_path / mode) == _losses(tmp_path / "ref")
        assert sorted(_losses(tmp_path / mode)) == list(range(1, total + 1))
        _assert_same_checkpoint(tmp_path / mode, tmp_path / "ref")


def test_local_cluster_advertises_real_resources(slurm):
    node = slurm.run("scontrol", "show", "node", "-o").stdout
    cpus = int(re.search(r"CPUTot=(\d+)", node).group(1))
    mem = int(re.search(r"RealMemory=(\d+)", node).group(1))
    assert cpus == len(os.sched_getaffinity(0))
    total_mb = int(next(ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal"))) // 1024
    assert abs(mem - total_mb) <= 1
