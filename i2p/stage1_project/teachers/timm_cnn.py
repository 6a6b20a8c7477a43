"""timm CNN teachers (``timm:NAME``; ``effnet-lite2`` builds on it).

Features: the output of one or more named stages (forward hooks, so any timm CNN works without
``features_only`` rebuilding the model and losing its classifier). With several stages, the
coarser maps are bilinearly upsampled to the finest one and concatenated on channels.
Saliency: class-activation map (CAM) of the top predicted class -- sum_c w[top,c] * F_c over the
pre-pool map of ``forward_features`` -- ReLU, upsampled bilinearly to the feature grid, divided
by its max (so it lies in [0,1] with max 1). Models without a linear classifier behind a global
average pool get the channel-mean activation instead (same ReLU + max normalisation).
"""

from __future__ import annotations

import contextlib
import os

import i2p.common.tv_guard  # noqa: F401  (must precede timm: see tv_guard)

import torch
import torch.nn.functional as F
from torch import nn

from .base import (Teacher, hub_access, load_state_file, load_strict, sha256_file,
                   sha256_state, short, teacher_error)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_timm(name: str, arch: str, pretrained: bool = False) -> nn.Module:
    import timm

    try:
        with hub_access() if pretrained else contextlib.nullcontext():
            return timm.create_model(arch, pretrained=pretrained)
    except Exception as e:  # noqa: BLE001 - unknown model, offline hub, ...
        if pretrained and timm.is_model(arch):
            why = f"no weights reachable for timm model {arch!r} (hub offline? {type(e).__name__})"
        else:
            why = f"cannot build timm model {arch!r} ({short(e)})"
        raise teacher_error(name, why) from None


def _to_nchw(t: torch.Tensor, chans: int) -> torch.Tensor:
    if t.ndim == 4 and t.shape[1] != chans and t.shape[-1] == chans:
        return t.permute(0, 3, 1, 2)  # NHWC stages (e.g. some hierarchical ViTs)
    if t.ndim != 4:
        raise RuntimeError(f"stage output of shape {tuple(t.shape)} is not a 2D feature map")
    return t


def max_normalise(m: torch.Tensor) -> torch.Tensor:
    """ReLU then divide each map [B,h,w] by its max (all-zero maps stay zero)."""
    m = m.relu()
    return m / m.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)


class TimmTeacher(Teacher):
    """A timm model as a frozen teacher; see the module docstring for what it returns."""

    def __init__(self, name: str, model: nn.Module, feature_modules: list[str] | None,
                 weights_source: str, weights_sha256: str | None):
        cfg = getattr(model, "pretrained_cfg", None) or {}
        super().__init__(name, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD),
                         weights_source, weights_sha256)
        self.model = model
        info = getattr(model, "feature_info", None)
        chans = {i["module"]: i["num_chs"] for i in info} if isinstance(info, list) else {}
        if not feature_modules:
            if not chans:
                raise teacher_error(name, "model has no feature_info to pick a feature map from")
            feature_modules = [info[-1]["module"]]
        mods = dict(model.named_modules())
        missing = [m for m in feature_modules if m not in mods]
        if missing:
            raise teacher_error(name, f"model has no module(s) {missing}")
        self.feature_modules = list(feature_modules)
        self._chans = [chans.get(m, -1) for m in feature_modules]
        self._taps: dict[str, torch.Tensor] = {}
        for m in feature_modules:
            mods[m].register_forward_hook(self._hook(m))
        clf = model.get_classifier() if hasattr(model, "get_classifier") else None
        pool = getattr(getattr(model, "global_pool", None), "pool_type", None)
        self.has_cam = isinstance(clf, nn.Linear) and pool == "avg"

    def _probe_feature_shape(self) -> tuple[int, int, int]:
        try:
            return super()._probe_feature_shape()
        except RuntimeError as e:  # e.g. a timm ViT: token sequences, not 2D maps
            raise teacher_error(self.name, f"unsupported timm model ({short(e)})") from None

    def _hook(self, key: str):
        def fn(_module, _inp, out):
            self._taps[key] = out.clone()  # later in-place ops must not alter the tap
        return fn

    def _extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._taps.clear()
        pre = self.model.forward_features(x)
        maps = [_to_nchw(self._taps[m], c).float() for m, c in zip(self.feature_modules, self._chans)]
        self._taps.clear()
        h = max(m.shape[-2] for m in maps)
        w = max(m.shape[-1] for m in maps)
        maps = [m if m.shape[-2:] == (h, w) else
                F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False) for m in maps]
        feats = torch.cat(maps, dim=1)
        with torch.autocast("cuda", enabled=False):
            clf_in = getattr(self.model.get_classifier(), "in_features", -1) if self.has_cam else -1
            if pre.ndim == 4 and clf_in == pre.shape[1]:
                pre = pre.float()
                clf = self.model.get_classifier()
                logits = clf(pre.mean(dim=(2, 3)))
                top = logits.argmax(dim=1)
                cam = torch.einsum("bc,bchw->bhw", clf.weight.float()[top], pre)
            else:
                cam = feats.mean(dim=1)
            cam = cam.relu()
            if cam.shape[-2:] != (h, w):
                cam = F.interpolate(cam[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
            sal = max_normalise(cam)
        return feats.permute(0, 2, 3, 1), sal


def create_timm_teacher(name: str, arch: str, weights: str | None, device="cpu",
                        layers: list[str] | None = None) -> TimmTeacher:
    """``timm:NAME``: weights from the timm hub (None), a state-dict FILE, or 'random'."""
    if weights is None:
        model = build_timm(name, arch, pretrained=True)
        src, sha = f"hub:timm:{arch}", sha256_state(model.state_dict())
    else:
        model = build_timm(name, arch)
        src, sha = "random", None
        if weights != "random":
            path = os.path.abspath(os.path.expanduser(weights))
            load_strict(name, model, load_state_file(name, path), path)
            src, sha = f"file:{path}", sha256_file(path)
    return TimmTeacher(name, model, layers, src, sha).freeze(device)
