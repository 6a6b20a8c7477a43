"""What keeps a run directory consistent: one writer at a time (:class:`RunDirLock`) and, on
resume, the newest checkpoint that still reads (:func:`newest_intact_checkpoint`).

* The lock is ``OUT/.lock``, held with ``flock`` for the run's lifetime and holding who took it
  (pid, host, start time). The kernel drops an ``flock`` when its process dies, so the lock of a
  killed run (SIGKILL, node reboot) is stale by construction and the next run takes it over; a
  live holder makes a second ``i2p pretrain`` stop at once with one line naming it.
* ``last.ckpt`` is written atomically and the one it replaces is kept as ``last.ckpt.prev``
  (:func:`i2p.common.checkpoint.save_checkpoint`); if ``last.ckpt`` is missing or unreadable
  (truncated by a disk fault or a copy cut short), resume takes the newest intact checkpoint
  among it, ``last.ckpt.prev`` and ``epoch-*.ckpt``, with a warning.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket
import warnings
from pathlib import Path

from i2p.common.checkpoint import CheckpointError, load_checkpoint, previous_path
from i2p.common.errors import UserError


class RunDirBusy(UserError):
    pass


class RunDirLock:
    def __init__(self, run_dir: str | os.PathLike, command: str = "i2p pretrain"):
        self.path = Path(run_dir) / ".lock"
        self.command = command  # who the refusal names as the other user of the directory
        self._fd: int | None = None

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunDirLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            h = self.holder()
            raise RunDirBusy(f"{self.path.parent} is in use by another {self.command} (pid {h.get('pid', '?')} on "
                             f"host {h.get('host', '?')}, started {h.get('started', '?')}); wait for it or "
                             "use another --out") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass


def _candidates(run_dir: Path) -> list[Path]:
    last = run_dir / "last.ckpt"
    epochs = sorted(run_dir.glob("epoch-*.ckpt"), reverse=True)
    return [p for p in (last, previous_path(last), *epochs) if p.exists()]


def newest_intact_checkpoint(run_dir: str | os.PathLike) -> tuple[Path, dict] | None:
    """(path, checkpoint) of the readable checkpoint with the highest step in ``run_dir``, or
    None when there is none at all. Warns when ``last.ckpt`` is not that one; raises when
    checkpoints exist but none reads."""
    run_dir = Path(run_dir)
    best, bad = None, []
    for path in _candidates(run_dir):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as exc:
            bad.append(str(exc))
            continue
        if best is None or int(ckpt.get("step", 0)) > int(best[1].get("step", 0)):
            best = (path, ckpt)
        if path.name == "last.ckpt":
            break  # the newest by construction
    if best is None:
        if bad:
            raise CheckpointError(f"no intact checkpoint in {run_dir}: {bad[0]}; use --no-resume or another --out")
        return None
    if best[0].name != "last.ckpt":
        why = bad[0] if bad else f"{run_dir / 'last.ckpt'} is missing"
        warnings.warn(f"{why}; resuming from {best[0].name} (step {int(best[1].get('step', 0))})")
    return best
