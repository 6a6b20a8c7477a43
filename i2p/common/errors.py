"""Error types that the CLI turns into one clear line and exit code 2 (no traceback)."""


class UserError(Exception):
    """Bad input from the user (spec, path, option): printed as one line, exit code 2."""


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
