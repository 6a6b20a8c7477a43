"""The ablation study as a small resumable job graph run N at a time in subprocesses.

Jobs (one subprocess each, all through ``python -m i2p``, so every one is a command a person
could type; each is single-threaded: ``OMP_NUM_THREADS=1`` etc.):

* ``data/seedS``          ``i2p study materialize``: the eval clouds of seed S (npz), once;
* ``masking``             ``i2p study masking``: masking statistics (no training);
* ``init/V/seedS``        ``i2p study init-encoder``: the random-init baseline checkpoint;
* ``pretrain/V/seedS``    ``i2p pretrain ... --seed S`` (resumes from its own last.ckpt);
* ``svm/V/seedS``, ``fewshot/V/seedS``   ``i2p eval svm|fewshot --seed S``.

Resume rule: a job is skipped when its outputs are complete AND were made by the same command
(recorded in ``DIR/study.json``): a pretrain run is complete when its ``last.ckpt`` reached
the planned step count; an evaluation when its ``result.json`` exists and names the sha256 of
the checkpoint that is there now. A pretrain run directory made by a different command is
refused rather than silently continued with other settings. Interrupting the study (Ctrl-C,
SIGTERM) sends SIGTERM to the running jobs (pretraining checkpoints and exits cleanly) and
saves the state; re-running the same command continues.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from i2p.common.errors import UserError
from i2p.study.config import StudyConfig, Variant, resolve_pretrain

STATE = "study.json"
PRIORITY = {"data": 0, "masking": 1, "init": 2, "svm": 3, "fewshot": 3, "pretrain": 4}
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "LOKY_MAX_CPU_COUNT")


class StudyError(UserError):
    pass


@dataclass
class Task:
    id: str
    kind: str
    argv: list[str]  # after "python -m i2p"
    deps: list[str] = field(default_factory=list)
    done: Callable[[], bool] = lambda: False
    guard: Callable[[], None] | None = None  # raises StudyError when outputs clash
    order: tuple = ()

    @property
    def command(self) -> str:
        return "i2p " + " ".join(shlex.quote(a) for a in self.argv)


# ---------------------------------------------------------------- layout
class Layout:
    def __init__(self, out: str | Path):
        self.root = Path(os.path.abspath(out))

    def run(self, variant: str, seed: int) -> Path:
        return self.root / "runs" / variant / f"seed{seed}"

    def pretrain(self, variant: str, seed: int) -> Path:
        return self.run(variant, seed) / "pretrain"

    def init_ckpt(self, variant: str, seed: int) -> Path:
        return self.run(variant, seed) / "init.ckpt"

    def ckpt(self, variant: Variant, seed: int) -> Path:
        return (self.pretrain(variant.name, seed) / "last.ckpt") if variant.pretrain \
            else self.init_ckpt(variant.name, seed)

    def result(self, protocol: str, variant: str, seed: int) -> Path:
        return self.run(variant, seed) / protocol / "result.json"

    def eval_data(self, seed: int) -> Path:
        return self.root / "eval-data" / f"seed{seed}.npz"

    @property
    def masking(self) -> Path:
        return self.root / "masking.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state(self) -> Path:
        return self.root / STATE


# ---------------------------------------------------------------- small utilities
def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def ckpt_step(path: Path) -> int | None:
    if not path.is_file():
        return None
    try:
        from i2p.common.checkpoint import load_checkpoint

        return int(load_checkpoint(path).get("step", -1))
    except Exception:  # noqa: BLE001 - unreadable = not done
        return None


def _sha256(path: Path) -> str | None:
    from i2p.common.checkpoint import file_sha256

    return file_sha256(path) if path.is_file() else None


def planned_steps(study: StudyConfig, variant: Variant, seed: int) -> int:
    """Steps ``i2p pretrain`` will run for this variant: epochs x (valid samples // batch),
    capped by ``pretrain.max_steps``."""
    from i2p.cache.reader import CacheDataset
    from i2p.stage2_pretrain.sampler import EpochBatchSampler

    cfg = resolve_pretrain(study, variant, seed)
    n = sum(len(CacheDataset(c, with_targets=False)) for c in study.pretrain.caches)
    total = EpochBatchSampler.steps_per_epoch(n, cfg.optim.batch_size) * cfg.optim.epochs
    return total if study.pretrain.max_steps is None else min(total, study.pretrain.max_steps)


def eval_spec(study: StudyConfig, layout: Layout, seed: int) -> str:
    return f"npz:{layout.eval_data(seed)}" if study.eval.materialize else study.eval.data


def pretrain_overrides(study: StudyConfig, variant: Variant) -> list[str]:
    sets = study.pretrain_overrides(variant)
    if not any(s.split("=", 1)[0].strip() == "log.progress" for s in sets):
        sets = sets + ["log.progress=false"]  # the log goes to a file: no progress bar
    return sets


# ---------------------------------------------------------------- the job graph
def plan(study: StudyConfig, layout: Layout, state: dict) -> list[Task]:
    """Every job of the study, with its done-check and its dependencies."""
    recorded = {k: v.get("argv") for k, v in state.get("tasks", {}).items()}  # before this invocation
    tasks: list[Task] = []
    ev = study.eval
    # absolute but NOT symlink-resolved: the command should name the paths the config names
    caches = [c if "://" in c else os.path.abspath(c) for c in study.pretrain.caches]

    def same_argv(tid: str, argv: list[str]) -> bool:
        # the live record: a job launched by this invocation is recorded at launch
        return (state.get("tasks", {}).get(tid) or {}).get("argv") == argv

    if ev.materialize:
        for s in study.seeds:
            tid = f"data/seed{s}"
            argv = ["study", "materialize", "--data", ev.data, "--points", str(ev.points or 1024),
                    "--seed", str(s), "--out", str(layout.eval_data(s))]
            tasks.append(Task(tid, "data", argv, done=(lambda p=layout.eval_data(s), t=tid, a=argv:
                                                        p.is_file() and same_argv(t, a)), order=(s,)))
    m = study.masking
    argv = ["study", "masking", "--config", os.path.abspath(study.source) if study.source else "",
            "--out", str(layout.masking)]
    mfp = study.fingerprint()

    def masking_done(a=argv):
        data = read_json(layout.masking)
        return bool(data) and data.get("study_fingerprint") == mfp and same_argv("masking", a)

    if study.source and m.samples > 0:
        tasks.append(Task("masking", "masking", argv, done=masking_done, order=(0,)))

    for s in study.seeds:
        for vi, v in enumerate(study.variants):
            order = (s, vi)
            ckpt = layout.ckpt(v, s)
            sets = pretrain_overrides(study, v)
            data_dep = [f"data/seed{s}"] if ev.materialize else []
            if v.pretrain:
                tid = f"pretrain/{v.name}/seed{s}"
                argv = ["pretrain", *sum((["--cache", c] for c in caches), []),
                        "--out", str(layout.pretrain(v.name, s)), "--config", study.pretrain.preset,
                        *sum((["--set", x] for x in sets), []), "--seed", str(s)]
                if study.pretrain.max_steps is not None:
                    argv += ["--max-steps", str(study.pretrain.max_steps)]
                want = planned_steps(study, v, s)

                def pt_done(c=ckpt, w=want, t=tid, a=argv):
                    step = ckpt_step(c)
                    return step is not None and step >= w and same_argv(t, a)

                def pt_guard(c=ckpt, t=tid, a=argv, d=layout.pretrain(v.name, s)):
                    if c.exists() and recorded.get(t) not in (None, a):
                        raise StudyError(f"{d} was made by another command than this study now runs "
                                         f"(settings changed?): use a fresh --out or remove that directory")

                tasks.append(Task(tid, "pretrain", argv, done=pt_done, guard=pt_guard, order=order))
                ck_dep = [tid]
            else:
                tid = f"init/{v.name}/seed{s}"
                argv = ["study", "init-encoder", *sum((["--cache", c] for c in caches), []),
                        "--preset", study.pretrain.preset, *sum((["--set", x] for x in sets), []),
                        "--seed", str(s), "--calib-data", eval_spec(study, layout, s),
                        "--points", str(ev.points or 0), "--batch-size", str(ev.batch_size),
                        "--out", str(ckpt)]
                def init_done(c=ckpt, t=tid, a=argv, d=layout.eval_data(s) if ev.materialize else None):
                    if not c.is_file() or not same_argv(t, a):
                        return False
                    return d is None or (d.is_file() and d.stat().st_mtime <= c.stat().st_mtime)

                tasks.append(Task(tid, "init", argv, deps=data_dep, done=init_done, order=order))
                ck_dep = [tid]
            common = ["--ckpt", str(ckpt), "--data", eval_spec(study, layout, s), "--pool", ev.pool,
                      "--seed", str(s), "--batch-size", str(ev.batch_size), "--no-progress"]
            if ev.points:
                common += ["--points", str(ev.points)]
            svm_argv = ["eval", "svm", *common, "--C", str(ev.svm.C), "--cv-folds", str(ev.svm.cv_folds),
                        "--out", str(layout.result("svm", v.name, s).parent)]
            fs = ev.fewshot
            fs_argv = ["eval", "fewshot", *common, "--way", str(fs.way), "--shot", str(fs.shot),
                       "--query", str(fs.query), "--folds", str(fs.folds), "--C", str(fs.C),
                       "--out", str(layout.result("fewshot", v.name, s).parent)]
            for proto, a in (("svm", svm_argv), ("fewshot", fs_argv)):
                tid = f"{proto}/{v.name}/seed{s}"
                res = layout.result(proto, v.name, s)

                def ev_done(r=res, c=ckpt, t=tid, a=a, d=layout.eval_data(s) if ev.materialize else None):
                    data = read_json(r)
                    if not data or not same_argv(t, a):
                        return False
                    if d is not None and (not d.is_file() or d.stat().st_mtime > r.stat().st_mtime):
                        return False  # the eval clouds were re-made after this result
                    return (data.get("checkpoint") or {}).get("sha256") == _sha256(c)

                tasks.append(Task(tid, proto, a, deps=ck_dep + data_dep, done=ev_done, order=order))
    return tasks


# ---------------------------------------------------------------- execution
def child_env(threads: int = 1) -> dict:
    env = dict(os.environ)
    for k in THREAD_ENV:
        env[k] = str(threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class _Interrupted(Exception):
    pass


def _still_running(pid, argv: list[str]) -> bool:
    """Is ``pid`` alive and running this job (its command line ends with the job's arguments)?
    A study killed with SIGKILL leaves its jobs running on their own."""
    if not isinstance(pid, int) or pid <= 0 or not argv:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return False
    return [a.decode(errors="replace") for a in cmdline[-len(argv):]] == list(argv)


def _log_name(tid: str) -> str:
    return tid.replace("/", "__") + ".log"


def execute(study: StudyConfig, out: str | Path, jobs: int | None = None, threads: int = 1,
            echo: Callable[[str], None] = print, dry_run: bool = False) -> dict:
    """Run (or continue) every job of the study; returns the state dict (also in study.json)."""
    layout = Layout(out)
    layout.root.mkdir(parents=True, exist_ok=True)
    state = read_json(layout.state) or {}
    state.setdefault("tasks", {})
    tasks = plan(study, layout, state)
    by_id = {t.id: t for t in tasks}
    for t in tasks:
        if t.guard:
            t.guard()
        prev = state["tasks"].get(t.id) or {}
        if prev.get("status") == "running" and _still_running(prev.get("pid"), t.argv):
            raise StudyError(f"job {t.id} of an earlier invocation is still running (pid {prev['pid']}): "
                             "wait for it to finish or stop it, then re-run")
    state.update({"name": study.name, "config_file": study.source, "config": study.to_dict(),
                  "config_fingerprint": study.fingerprint(), "out": str(layout.root)})
    jobs = jobs or study.jobs
    if not dry_run:
        from i2p.study.report import machine_info

        state.update({"jobs": jobs, "threads_per_job": threads, "machine": machine_info(),
                      "loadavg_start": [round(x, 2) for x in os.getloadavg()]})
    t_start = time.time()

    status: dict[str, str] = {}
    for t in tasks:
        status[t.id] = "done" if t.done() else "pending"
    todo = [t for t in tasks if status[t.id] == "pending"]
    echo(f"study {study.name}: {len(tasks)} jobs, {len(tasks) - len(todo)} already done, "
         f"{len(todo)} to run, {jobs} at a time")
    for t in tasks:
        entry = state["tasks"].setdefault(t.id, {})
        entry.update({"kind": t.kind, "command": t.command})
        if status[t.id] == "done":
            entry["status"] = "done"
    if dry_run:
        for t in todo:
            echo(f"  would run {t.id}: {t.command}")
        return state
    _write_json(layout.state, state)
    layout.logs.mkdir(parents=True, exist_ok=True)

    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    env = child_env(threads)

    def handler(signum, frame):
        raise _Interrupted(signum)

    old = {}
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (tests calling execute from a thread)
            pass

    def finish(tid: str, rc: int, t0: float) -> None:
        t = by_id[tid]
        wall = time.time() - t0
        ok = rc == 0 and t.done()
        status[tid] = "done" if ok else ("failed" if rc != 0 else "incomplete")
        entry = state["tasks"][tid]
        entry.update({"status": status[tid], "rc": rc, "wall_s": round(wall, 2), "ended": _now()})
        if ok:
            entry.setdefault("wall_s_runs", []).append(round(wall, 2))
        echo(f"[{sum(v == 'done' for v in status.values())}/{len(tasks)}] {tid} {status[tid]} "
             f"in {wall:.0f}s" + ("" if ok else f" (rc {rc}; log {layout.logs / _log_name(tid)})"))
        _write_json(layout.state, state)

    try:
        while True:
            pending = [t for t in tasks if status[t.id] == "pending"]
            # jobs whose dependencies failed this time cannot start
            for t in pending:
                if any(status.get(d) in ("failed", "incomplete", "blocked") for d in t.deps):
                    status[t.id] = "blocked"
                    state["tasks"][t.id]["status"] = "blocked"
            ready = sorted((t for t in tasks if status[t.id] == "pending"
                            and all(status.get(d) == "done" for d in t.deps)),
                           key=lambda t: (PRIORITY[t.kind], t.order))
            while ready and len(running) < jobs:
                t = ready.pop(0)
                status[t.id] = "running"
                logf = open(layout.logs / _log_name(t.id), "a")
                logf.write(f"\n# {_now()} {t.command}\n")
                logf.flush()
                proc = subprocess.Popen([sys.executable, "-m", "i2p", *t.argv], stdout=logf,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True)
                running[t.id] = (proc, time.time(), logf)
                state["tasks"][t.id].update({"status": "running", "argv": t.argv, "started": _now(),
                                             "pid": proc.pid})
                echo(f"start {t.id}")
                _write_json(layout.state, state)
            if not running:
                break
            time.sleep(0.2)
            for tid, (proc, t0, logf) in list(running.items()):
                rc = proc.poll()
                if rc is not None:
                    logf.close()
                    del running[tid]
                    finish(tid, rc, t0)
    except (KeyboardInterrupt, _Interrupted):
        echo(f"interrupted: stopping {len(running)} running job(s) (pretraining checkpoints first)")
        for tid, (proc, _, _) in running.items():
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 120
        for tid, (proc, t0, logf) in running.items():
            try:
                proc.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            logf.close()
            state["tasks"][tid].update({"status": "interrupted", "ended": _now()})
        state["wall_s_total"] = round(float(state.get("wall_s_total", 0.0)) + time.time() - t_start, 1)
        _write_json(layout.state, state)
        raise KeyboardInterrupt from None
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    state["finished"] = _now()
    state["complete"] = all(v == "done" for v in status.values())
    state["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    state["wall_s_total"] = round(float(state.get("wall_s_total", 0.0)) + time.time() - t_start, 1)
    _write_json(layout.state, state)
    return state
