"""Runs the ablation study's job graph (:mod:`i2p.study.plan`) N jobs at a time in subprocesses.

Every job is ``python -m i2p ...``, a command a person could type, single-threaded
(``OMP_NUM_THREADS=1`` etc.). A job is skipped when its plan says it is done; the state of every
job (command, pid, status, wall time) is kept in ``DIR/study.json``. Interrupting the study
(Ctrl-C, SIGTERM) sends SIGTERM to the running jobs (pretraining checkpoints and exits cleanly)
and saves the state; re-running the same command continues.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from i2p.common.atomic import read_json, write_json
from i2p.study.config import StudyConfig
from i2p.study.plan import STATE, Layout, StudyError, Task, plan

__all__ = ["STATE", "Layout", "StudyError", "execute", "read_json"]

PRIORITY = {"cache": 0, "data": 0, "masking": 1, "init": 2, "svm": 3, "fewshot": 3, "pretrain": 4}
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "LOKY_MAX_CPU_COUNT")


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _save(path: Path, state: dict) -> None:
    write_json(path, state, sort_keys=False, default=str)


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


@contextlib.contextmanager
def _interruptible():
    """SIGTERM/SIGUSR1 raise :class:`_Interrupted` in the main thread while the block runs."""
    def handler(signum, frame):
        raise _Interrupted(signum)

    old = {}
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (tests calling execute from a thread)
            pass
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _refuse_clashes(tasks: list[Task], state: dict) -> None:
    """Outputs made by another command, or a job of an earlier invocation still running."""
    for t in tasks:
        if t.guard:
            t.guard()
        prev = state["tasks"].get(t.id) or {}
        if prev.get("status") == "running" and _still_running(prev.get("pid"), t.argv):
            raise StudyError(f"job {t.id} of an earlier invocation is still running (pid {prev['pid']}): "
                             "wait for it to finish or stop it, then re-run")


class _Executor:
    """The job pool: launches ready jobs up to ``jobs`` at a time, records every change."""

    def __init__(self, layout: Layout, state: dict, tasks: list[Task], jobs: int, threads: int,
                 echo: Callable[[str], None]):
        self.layout, self.state, self.tasks, self.jobs, self.echo = layout, state, tasks, jobs, echo
        self.by_id = {t.id: t for t in tasks}
        self.env = child_env(threads)
        self.status: dict[str, str] = {}
        self.running: dict[str, tuple[subprocess.Popen, float, object]] = {}

    def survey(self) -> list[Task]:
        """Which jobs are done already; returns those still to run."""
        for t in self.tasks:
            self.status[t.id] = "done" if t.done() else "pending"
        todo = [t for t in self.tasks if self.status[t.id] == "pending"]
        self.echo(f"study {self.state['name']}: {len(self.tasks)} jobs, {len(self.tasks) - len(todo)} already "
                  f"done, {len(todo)} to run, {self.jobs} at a time")
        for t in self.tasks:
            entry = self.state["tasks"].setdefault(t.id, {})
            entry.update({"kind": t.kind, "command": t.command})
            if self.status[t.id] == "done":
                entry["status"] = "done"
        return todo

    def _ready(self) -> list[Task]:
        """Pending jobs whose dependencies are done (those whose dependencies failed are blocked)."""
        for t in self.tasks:
            if self.status[t.id] == "pending" and \
                    any(self.status.get(d) in ("failed", "incomplete", "blocked") for d in t.deps):
                self.status[t.id] = "blocked"
                self.state["tasks"][t.id]["status"] = "blocked"
        return sorted((t for t in self.tasks if self.status[t.id] == "pending"
                       and all(self.status.get(d) == "done" for d in t.deps)),
                      key=lambda t: (PRIORITY[t.kind], t.order))

    def _launch(self, t: Task) -> None:
        self.status[t.id] = "running"
        logf = open(self.layout.logs / _log_name(t.id), "a")
        logf.write(f"\n# {_now()} {t.command}\n")
        logf.flush()
        proc = subprocess.Popen([sys.executable, "-m", "i2p", *t.argv], stdout=logf,
                                stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.running[t.id] = (proc, time.time(), logf)
        self.state["tasks"][t.id].update({"status": "running", "argv": t.argv, "started": _now(), "pid": proc.pid})
        self.echo(f"start {t.id}")
        _save(self.layout.state, self.state)

    def _finish(self, tid: str, rc: int, t0: float) -> None:
        wall = time.time() - t0
        ok = rc == 0 and self.by_id[tid].done()
        self.status[tid] = "done" if ok else ("failed" if rc != 0 else "incomplete")
        entry = self.state["tasks"][tid]
        entry.update({"status": self.status[tid], "rc": rc, "wall_s": round(wall, 2), "ended": _now()})
        if ok:
            entry.setdefault("wall_s_runs", []).append(round(wall, 2))
        self.echo(f"[{sum(v == 'done' for v in self.status.values())}/{len(self.tasks)}] {tid} {self.status[tid]} "
                  f"in {wall:.0f}s" + ("" if ok else f" (rc {rc}; log {self.layout.logs / _log_name(tid)})"))
        _save(self.layout.state, self.state)

    def run(self) -> None:
        """Until no job is running and none can start."""
        while True:
            ready = self._ready()
            while ready and len(self.running) < self.jobs:
                self._launch(ready.pop(0))
            if not self.running:
                return
            time.sleep(0.2)
            for tid, (proc, t0, logf) in list(self.running.items()):
                rc = proc.poll()
                if rc is not None:
                    logf.close()
                    del self.running[tid]
                    self._finish(tid, rc, t0)

    def stop(self) -> None:
        """SIGTERM to every running job; wait up to 2 minutes (pretraining checkpoints), then kill."""
        self.echo(f"interrupted: stopping {len(self.running)} running job(s) (pretraining checkpoints first)")
        for proc, _, _ in self.running.values():
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 120
        for tid, (proc, t0, logf) in self.running.items():
            try:
                proc.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            logf.close()
            self.state["tasks"][tid].update({"status": "interrupted", "ended": _now()})

    @property
    def complete(self) -> bool:
        return all(v == "done" for v in self.status.values())


def _add_wall(state: dict, t_start: float) -> None:
    state["wall_s_total"] = round(float(state.get("wall_s_total", 0.0)) + time.time() - t_start, 1)


def execute(study: StudyConfig, out: str | Path, jobs: int | None = None, threads: int = 1,
            echo: Callable[[str], None] = print, dry_run: bool = False) -> dict:
    """Run (or continue) every job of the study; returns the state dict (also in study.json)."""
    layout = Layout(out)
    layout.root.mkdir(parents=True, exist_ok=True)
    state = read_json(layout.state) or {}
    state.setdefault("tasks", {})
    tasks = plan(study, layout, state)
    _refuse_clashes(tasks, state)
    state.update({"name": study.name, "config_file": study.source, "config": study.to_dict(),
                  "config_fingerprint": study.fingerprint(), "out": str(layout.root)})
    jobs = jobs or study.jobs
    if not dry_run:
        from i2p.study.report import machine_info

        state.update({"jobs": jobs, "threads_per_job": threads, "machine": machine_info(),
                      "loadavg_start": [round(x, 2) for x in os.getloadavg()]})
    t_start = time.time()
    pool = _Executor(layout, state, tasks, jobs, threads, echo)
    todo = pool.survey()
    if dry_run:
        for t in todo:
            echo(f"  would run {t.id}: {t.command}")
        return state
    _save(layout.state, state)
    layout.logs.mkdir(parents=True, exist_ok=True)
    with _interruptible():
        try:
            pool.run()
        except (KeyboardInterrupt, _Interrupted):
            pool.stop()
            _add_wall(state, t_start)
            _save(layout.state, state)
            raise KeyboardInterrupt from None
    state["finished"] = _now()
    state["complete"] = pool.complete
    state["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    _add_wall(state, t_start)
    _save(layout.state, state)
    return state
