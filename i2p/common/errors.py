"""Error types that the CLI turns into one clear line and exit code 2 (no traceback)."""

import re


class UserError(Exception):
    """Bad input from the user (spec, path, option): printed as one line, exit code 2.

    Raised inside a DataLoader worker (a damaged cache sample), it reaches the main process as
    ``type(err)("Caught CacheError in DataLoader worker process 0.\nOriginal Traceback ...")``:
    torch re-creates it from a message wrapping the worker's traceback, whose first line would be
    all the user sees. The constructor recognises that message and keeps the original one, so the
    line is the same as when the main process reads the sample itself."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (_unwrap_worker_message(args[0], type(self).__name__),)
        super().__init__(*args)


def _unwrap_worker_message(msg: str, name: str) -> str:
    """The original message inside torch's worker wrapper (``torch._utils.ExceptionWrapper``:
    "Caught NAME in WHERE.\nOriginal Traceback ...\nmodule.NAME: message"); others unchanged."""
    if not msg.startswith(f"Caught {name} ") or "\nOriginal Traceback" not in msg:
        return msg
    found = list(re.finditer(rf"(?m)^(?:[\w.]+\.)?{re.escape(name)}: ", msg))
    return msg[found[-1].end():].strip() if found else msg


class DataSpecError(UserError):
    """A malformed ``--data`` spec, an unknown reader, or a missing directory/file."""


class SampleError(Exception):
    """One sample cannot be used (corrupt file, NaN/Inf, empty mesh, < 3 distinct points).

    Readers raise it from ``__getitem__``; ``cache build`` records the sample in the skip
    list with ``str(err)`` as the reason and goes on.
    """


class TeacherError(UserError):
    """Unknown teacher name or unreachable/mismatching weights."""


class CacheError(UserError):
    """A cache that is missing, incomplete, or built with other settings."""
