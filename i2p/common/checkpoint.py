"""Checkpoints that never silently fail to load.

* Saved atomically (:mod:`i2p.common.atomic`: temp file in the same directory, fsync, rename),
  so a kill mid-save leaves the previous checkpoint intact.
* Hold only plain tensors/containers: they load with ``torch.load(weights_only=True)``.
* Hold no teacher weights: only the 3D network, optimiser/scheduler/scaler state, RNG state,
  step counters and the resolved config.
* The loader strips ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes, and model
  loading is strict, so a checkpoint of another architecture fails with one clear line.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from i2p.common.atomic import atomic_path
from i2p.common.errors import UserError

FORMAT = "i2p-ckpt-1"
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(UserError):
    """Unreadable, corrupt or mismatching checkpoint."""


def previous_path(path: str | os.PathLike) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint it replaced (``last.ckpt.prev``)."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike, keep_previous: bool = False) -> Path:
    """Write ``state`` atomically. ``keep_previous``: the file it replaces becomes
    :func:`previous_path` once the new one is complete on disk, so a checkpoint that later turns
    out unreadable (a disk fault, a copy cut short) still has an intact predecessor."""
    path = Path(path)
    with atomic_path(path, fsync=True) as tmp:
        with open(tmp, "wb") as fh:
            torch.save({"format": FORMAT, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
    return path


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if key.startswith(p):
                    key = key[len(p):]
                    changed = True
        out[key] = value
    return out


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt, truncated, pickled objects
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not an i2p checkpoint (no '{FORMAT}' format tag)")
    ckpt["model"] = strip_prefixes(ckpt["model"])
    return ckpt


def trained_weights(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The weights a pre-training checkpoint offers for use: the run's weight average when it
    kept one (``optim.ema_decay``; saved as ``model_ema``), else the last weights (``model``).
    Resuming reads ``model``, the weights the optimiser trains."""
    ema = ckpt.get("model_ema")
    if isinstance(ema, Mapping) and isinstance(ema.get("weights"), Mapping):
        return strip_prefixes(ema["weights"])
    return ckpt["model"]


def state_differences(have: Mapping[str, Any], want: Mapping[str, Any]) -> tuple[list, list, list]:
    """``(missing, unexpected, shape)`` keys between a state ``have`` and the state ``want``
    describes; values are tensors or shapes. What every strict loader and exporter reports."""
    def dims(v):
        return tuple(v.shape) if hasattr(v, "shape") else tuple(v)

    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    shape = [k for k in want if k in have and dims(have[k]) != dims(want[k])]
    return missing, unexpected, shape


def load_model_state(module: torch.nn.Module, state_dict: Mapping[str, Any], what: str = "checkpoint") -> None:
    """Strict load with a one-line summary of what does not match."""
    state_dict = strip_prefixes(state_dict)
    own = module.state_dict()
    missing, unexpected, shape = state_differences(state_dict, own)
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} shape mismatches (e.g. {k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)})")
        raise CheckpointError(f"{what} does not fit this architecture: " + "; ".join(parts))
    module.load_state_dict(state_dict, strict=True)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
