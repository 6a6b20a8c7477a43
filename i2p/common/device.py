"""Device selection: one place decides, nothing hard-codes CUDA."""

from __future__ import annotations

import torch

from i2p.common.errors import UserError


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
