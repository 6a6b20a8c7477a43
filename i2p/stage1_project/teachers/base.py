"""The frozen 2D teacher contract shared by every teacher, and weight-file helpers.

Why one base class: stage 1 (cache build) and the ``--online-teacher`` baseline of stage 2
must see exactly the same thing from any teacher -- normalised [B,3,224,224] in,
``(features [B,h,w,C] f32, saliency [B,h,w] f32)`` out -- and the cache records the teacher's
identity (name + weights sha256) so that a cache built with other weights is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from typing import Mapping
from urllib.parse import urlparse

import torch
from torch import nn

from i2p.common.errors import TeacherError

WEIGHTS_HINT = "pass --teacher-weights FILE or --teacher-weights random"


def teacher_error(name: str, what: str) -> TeacherError:
    """A one-line TeacherError that always tells the user about ``--teacher-weights``."""
    what = " ".join(str(what).split())  # collapse newlines from library messages
    return TeacherError(f"teacher {name}: {what}; {WEIGHTS_HINT}")


def short(e: BaseException, limit: int = 160) -> str:
    """``Type: message`` of a library exception, one line and bounded (some list hundreds of names)."""
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:limit]}{'...' if len(msg) > limit else ''}"


def _hub_unreachable(timeout: float = 3.0) -> bool:
    """True when the HF hub host cannot be connected to directly (and no proxy is set)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False  # cannot judge through a proxy: let the hub client try
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return False
    except OSError:
        return True


@contextlib.contextmanager
def hub_access():
    """Fail fast offline: if the hub host is unreachable, look only in the local HF cache.

    Why: huggingface_hub retries every candidate file 5 times with backoff (~65 s for the CLIP
    checkpoint) before giving up -- a minute lost per build on an offline compute node. Cached
    weights still load; anything else fails at once and becomes a TeacherError upstream.
    """
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    if getattr(constants, "HF_HUB_OFFLINE", True) or not _hub_unreachable():
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_state(state: Mapping[str, torch.Tensor]) -> str:
    """Digest of a state dict's names, shapes and bytes -- used only when weights came from a
    hub whose file path is not exposed (timm), so the cache still records an identity."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().to("cpu").contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_state_file(name: str, path: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely (``weights_only=True`` / safetensors), unwrap the usual
    ``{'state_dict': ...}`` / ``{'model': ...}`` containers and strip ``module.`` prefixes
    left by DataParallel/DDP. Any failure becomes a one-line TeacherError."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise teacher_error(name, f"weights file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        else:
            try:  # mmap: a 600 MB CLIP checkpoint is not read twice into memory
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) format cannot be mmap'd
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error
        raise teacher_error(name, f"cannot read weights file {path} ({short(e)})")
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise teacher_error(name, f"{path} is not a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def load_strict(name: str, module: nn.Module, state: Mapping[str, torch.Tensor], src: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line summary of what did not match."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    bad = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or bad:
        def head(keys):
            return ",".join(keys[:3]) + (",..." if len(keys) > 3 else "")

        raise teacher_error(
            name,
            f"weights {src} do not fit the model: {len(missing)} missing [{head(missing)}], "
            f"{len(extra)} unexpected [{head(extra)}], {len(bad)} shape mismatches [{head(bad)}]",
        )
    module.load_state_dict(state, strict=True)


class Teacher(nn.Module):
    """A frozen 2D model: normalised images -> (features [B,h,w,C], saliency [B,h,w]).

    Subclasses set the identity attributes and implement ``_extract`` (called under no_grad,
    and under bf16 autocast on CUDA). ``no_grad`` rather than ``inference_mode``: the outputs
    of the online-teacher baseline may meet autograd graphs, which inference tensors refuse.
    """

    image_size: int = 224

    def __init__(self, name: str, mean, std, weights_source: str, weights_sha256: str | None):
        super().__init__()
        self.name = name
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.weights_source = weights_source
        self.weights_sha256 = weights_sha256
        self.is_random = weights_source == "random"
        self.feature_shape: tuple[int, int, int] = (0, 0, 0)

    def freeze(self, device) -> "Teacher":
        """Move to ``device``, eval mode, no parameter requires grad; probe ``feature_shape``."""
        self.to(device)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)
        self.feature_shape = tuple(int(d) for d in self._probe_feature_shape())
        return self

    def _probe_feature_shape(self) -> tuple[int, int, int]:
        """(h, w, C) of the features; by default from one dummy forward (subclasses that know
        it from their config override this to save a forward at build time)."""
        f, _ = self(torch.zeros(1, 3, self.image_size, self.image_size))
        return tuple(f.shape[1:])

    def train(self, mode: bool = True) -> "Teacher":  # a teacher never leaves eval mode
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"teacher {self.name} expects [B,3,{s},{s}], got {tuple(images.shape)}")
        dev = self.device
        x = images.to(dev, torch.float32)
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=dev.type == "cuda"):
            feats, sal = self._extract(x)
        return feats.float().contiguous(), sal.float().contiguous()
