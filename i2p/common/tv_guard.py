"""Make ``import torchvision`` (and so ``import timm`` / ``import open_clip``) work when
torchvision's compiled extension cannot be loaded.

Why: the torchvision 0.28 wheel here is built against a different torch build than the CPU
torch wheel, so ``torchvision/_C.so`` fails to dlopen. torchvision's python side then still
runs ``torch.library.register_fake("torchvision::nms")`` (and ``qnms``) unconditionally at
import, which raises "operator torchvision::nms does not exist" -- and timm and open_clip
import torchvision, so the teachers could not even be imported. All other meta/autograd
registrations in torchvision are gated on ``extension._has_ops()`` and are skipped.

The fix: when (and only when) the extension cannot be loaded, define the two op *schemas*
(no kernels) in a ``torch.library`` fragment, so the fake registrations have something to
attach to. torchvision keeps reporting ``_has_ops() == False``, so its detection ops
(``torchvision.ops.nms`` etc.) still fail loudly with torchvision's own message; nothing in i2p
uses them. When the extension loads fine, nothing is registered.

Every module that imports timm / open_clip / torchvision imports this module first.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os

import torch

# Schemas that torchvision/_meta_registrations.py registers fakes for without checking
# whether the C extension loaded (found by reading torchvision 0.28's import path).
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

_LIB: torch.library.Library | None = None  # kept alive: dropping it would unregister the ops
_STATE: str | None = None  # "native" | "shimmed" | "absent", once decided


def _op_exists(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def _extension_path() -> str | None:
    """Path of torchvision's ``_C`` library, found the way torchvision finds it, without
    importing the torchvision package (whose ``__init__`` is what fails)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib_dir = list(spec.submodule_search_locations)[0]
    finder = importlib.machinery.FileFinder(
        lib_dir, (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES)
    )
    ext = finder.find_spec("_C")
    return ext.origin if ext is not None and ext.origin and os.path.exists(ext.origin) else None


def _extension_loads(path: str | None) -> bool:
    if path is None:
        return False
    try:
        torch.ops.load_library(path)  # what torchvision.extension does; dlopen is idempotent
    except (OSError, ImportError, RuntimeError):
        return False
    return _op_exists("nms")


def ensure_torchvision() -> str:
    """Idempotently make torchvision importable; returns how:

    - ``"native"``: the ops already exist or the C extension loads -- nothing registered;
    - ``"shimmed"``: the extension is broken, so the op schemas were defined here;
    - ``"absent"``: torchvision is not installed -- nothing to do.
    """
    global _LIB, _STATE
    if _STATE is not None:
        return _STATE
    if _op_exists("nms"):
        _STATE = "native"
    elif importlib.util.find_spec("torchvision") is None:
        _STATE = "absent"
    elif _extension_loads(_extension_path()):
        _STATE = "native"
    else:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for name, schema in _SCHEMAS.items():
            if not _op_exists(name):
                lib.define(schema)
        _LIB = lib
        _STATE = "shimmed"
    return _STATE


def guard_state() -> str | None:
    """The decision taken by :func:`ensure_torchvision` (None before it ran)."""
    return _STATE


ensure_torchvision()
