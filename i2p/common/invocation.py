"""The command line that produced an output, for the files that record it.

A result that names its own command can be re-run and read by a program without guessing.
:func:`i2p.cli.main` records the argv it parses (which differs from ``sys.argv`` when a test or
a script calls ``main([...])``); code called from Python falls back to ``sys.argv``.
"""

from __future__ import annotations

import shlex
import sys
from contextlib import contextmanager
from typing import Iterator, Sequence

_current: list[str] | None = None


@contextmanager
def recording(argv: Sequence[str]) -> Iterator[None]:
    """Within the block, :func:`command_line` is ``i2p ARGV...``; restored afterwards so nested
    or repeated ``main`` calls (tests, the demo) never see a stale command."""
    global _current
    previous, _current = _current, ["i2p", *map(str, argv)]
    try:
        yield
    finally:
        _current = previous


def command_line() -> str:
    """Shell-quoted command line of this run: the recorded ``i2p ...`` argv, else ``sys.argv``."""
    argv = _current if _current is not None else list(sys.argv)
    return shlex.join(argv)
