"""Graceful stop on SIGTERM/SIGUSR1: what Slurm sends before a time limit (``--signal``), on
pre-emption and on ``scancel``. The handler only records the signal; the work loop checks
:attr:`StopOnSignal.signal` at a safe point (after a shard, after a step), saves and returns."""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_REQUEUE = 75  # EX_TEMPFAIL: stopped early by a signal, progress saved; re-run (requeue) to resume


class StopOnSignal:
    """Context manager; outside the main thread (a dask worker) it installs nothing."""

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = signals
        self.signal: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signal is None:
            self.signal = signum

    def __enter__(self) -> "StopOnSignal":
        for sig in self.signals:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signal).name if self.signal is not None else None


class StoppedBySignal(Exception):
    """A run stopped at a safe point by :class:`StopOnSignal` after saving its progress. Not a
    :class:`~i2p.common.errors.UserError`: nothing is wrong, and the command line turns it into
    exit :data:`EXIT_REQUEUE` (re-run the same command to resume)."""
