"""Registry of frozen 2D teachers (timm-style): ``create_teacher(name, weights, device)``.

Names: ``clip-vitb16``, ``effnet-lite2``, ``timm:NAME``, ``open_clip:ARCH:TAG``. ``weights`` is
what ``--teacher-weights`` passes: None (the teacher's default source: hub or shipped package),
``'random'`` (random init, for tests and ablations), or a FILE path. Every failure to find or
fit weights is a one-line :class:`~i2p.common.errors.TeacherError` naming ``--teacher-weights``.

A name containing ``:`` registers a family: its prefix (before the first ``:``) is matched and
the factory receives the rest of the name as ``spec``.

Layer choice: ``NAME@MOD[,MOD...]`` (e.g. ``effnet-lite2@blocks.6``, ``timm:resnet50@layer3``)
takes the feature map(s) of those named modules instead of the teacher's default, for the
teachers whose factory accepts ``layers`` (the timm CNNs). The full name, ``@`` part included,
is the teacher's identity in the cache.
"""

from __future__ import annotations

from typing import Callable

from i2p.common.errors import TeacherError

from .base import Teacher, teacher_error

Factory = Callable[..., Teacher]
_REGISTRY: dict[str, Factory] = {}
_FAMILIES: dict[str, tuple[str, Factory]] = {}


def register_teacher(name: str) -> Callable[[Factory], Factory]:
    """Decorator: ``factory(weights, device)`` or, for ``'prefix:...'`` families,
    ``factory(spec, weights, device)``."""

    def deco(fn: Factory) -> Factory:
        if ":" in name:
            _FAMILIES[name.split(":", 1)[0]] = (name, fn)
        else:
            _REGISTRY[name] = fn
        return fn

    return deco


def list_teachers() -> list[str]:
    return sorted(_REGISTRY) + sorted(display for display, _ in _FAMILIES.values())


def create_teacher(name: str, weights: str | None = None, device="cpu") -> Teacher:
    """Build a frozen teacher (eval, no grad) on ``device``."""
    base, at, layer_text = name.partition("@")
    kw = {}
    if at:
        layers = [m.strip() for m in layer_text.split(",") if m.strip()]
        if not layers:
            raise TeacherError(f"teacher {name!r}: name the feature module(s) after '@'")
        kw["layers"] = layers
    try:
        if base in _REGISTRY:
            teacher = _REGISTRY[base](weights=weights, device=device, **kw)
        else:
            prefix, sep, spec = base.partition(":")
            if not (sep and prefix in _FAMILIES and spec):
                raise TeacherError(f"unknown teacher {base!r}; valid: {', '.join(list_teachers())}")
            teacher = _FAMILIES[prefix][1](spec, weights=weights, device=device, **kw)
    except TypeError as e:
        if "layers" in str(e):
            raise TeacherError(f"teacher {base!r} has no layer choice ('@...'); the timm CNN teachers have") from None
        raise
    if at:
        teacher.name = name
    return teacher


def teacher_fingerprint(teacher: Teacher) -> dict:
    """What identifies a teacher's outputs; stored in the cache attributes and compared."""
    return {
        "name": teacher.name,
        "weights_source": teacher.weights_source,
        "weights_sha256": teacher.weights_sha256,
        "is_random": bool(teacher.is_random),
        "feature_shape": list(teacher.feature_shape),
        "mean": list(teacher.mean),
        "std": list(teacher.std),
    }


@register_teacher("clip-vitb16")
def _clip_vitb16(weights=None, device="cpu"):
    from .clip_vit import OpenClipViTTeacher

    return OpenClipViTTeacher("clip-vitb16", "ViT-B-16-quickgelu", "openai", weights).freeze(device)


@register_teacher("open_clip:ARCH:TAG")
def _open_clip(spec: str, weights=None, device="cpu"):
    from .clip_vit import OpenClipViTTeacher

    arch, _, tag = spec.partition(":")
    name = f"open_clip:{spec}"
    if not arch or (weights is None and not tag):
        raise teacher_error(name, "expected open_clip:ARCH:TAG (TAG is the hub pretrained tag)")
    return OpenClipViTTeacher(name, arch, tag, weights).freeze(device)


@register_teacher("effnet-lite2")
def _effnet_lite2(weights=None, device="cpu", layers=None):
    from .effnet_lite2 import create_effnet_lite2

    return create_effnet_lite2(weights, device, layers)


@register_teacher("timm:NAME")
def _timm(spec: str, weights=None, device="cpu", layers=None):
    from .timm_cnn import create_timm_teacher

    return create_timm_teacher(f"timm:{spec}", spec, weights, device, layers)


__all__ = ["Teacher", "register_teacher", "create_teacher", "list_teachers", "teacher_fingerprint"]
