"""Atomic file writes: readers see the old file or the new one, never a half-written one.

The bytes go to a temporary file in the target's directory (same file system, so the final
``os.replace`` is an atomic rename), optionally fsync'ed, then renamed over the target. A
failure or a kill before the rename leaves the previous file intact and the temporary file is
removed (a SIGKILL can leave a ``.NAME.*.tmp`` file behind, never a broken target). Temporary
files are created with the usual ``0o666 & ~umask`` permissions, so a report or a result is as
readable as a file written in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import IO, Any, Iterator


def _temp_beside(path: Path, suffix: str) -> Path:
    """A new, empty file next to ``path`` (exclusive create: parallel writers never share one)."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp", fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that wants a file name (``np.savez``,
    ``savefig``); on a normal exit it replaces ``path``, on an exception it is removed.
    ``suffix`` keeps an extension a writer insists on (``np.savez`` appends ``.npz`` otherwise)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path, suffix)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", fsync: bool = False, **kwargs) -> Iterator[IO]:
    """``open(path, mode)`` that becomes visible at ``path`` only when the block ends normally."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    with atomic_open(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any, **dumps: Any) -> Path:
    """``data`` as indented JSON plus a final newline (``dumps`` go to :func:`json.dumps`)."""
    dumps.setdefault("indent", 2)
    return write_text(path, json.dumps(data, **dumps) + "\n")


def read_json(path: str | os.PathLike) -> Any | None:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
