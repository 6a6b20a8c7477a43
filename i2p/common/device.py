"""Device selection: one place decides, nothing hard-codes CUDA.

Pre-training on the CPU runs inside :func:`deterministic_cpu` (torch's deterministic kernels).
Why: the backward of advanced indexing with repeated indices (``x[rows, idx]``, how a level's
tokens gather their members) is ``index_put_(accumulate=True)``, which on a multi-threaded CPU
adds with atomic float additions in whatever order the threads reach them. On a busy machine
(data-loader workers competing with the main process) two identical runs then differed in the
last bit from a few steps on, and a resumed run drifted from the uninterrupted one. The
deterministic kernel accumulates serially; the promise "bit-identical on CPU" rests on it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from i2p.common.errors import UserError


@contextlib.contextmanager
def deterministic_cpu(device: torch.device) -> Iterator[None]:
    """While the block runs, on the CPU: torch's deterministic algorithms (warn-only: an op
    without one still runs), without filling fresh tensors with NaN (nothing reads uninitialised
    memory; it costs time). The previous settings come back afterwards: the mode changes some
    kernels' summation order (stage 1's depth maps among them), so it is scoped to the runs that
    promise bit-identical resumes rather than switched on for the whole process."""
    if device.type != "cpu" or torch.are_deterministic_algorithms_enabled():
        yield
        return
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) -> cuda when torch sees one, else cpu; asking for cuda without one,
    or for an unknown device, is a one-line UserError."""
    if isinstance(name, torch.device):
        return name
    name = "auto" if name is None else str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None
