"""State-dict names of the whole pre-training model: official ``I2P_MAE`` <-> i2p ``I2PMAE``
with ``decoder_style='official'`` (and ``token_merge='official'`` for the encoder part).

An encoder export never holds the decoder (``official.keys`` drops it); this mapping exists so
that the official-style decoder can be checked against the official checkpoint layout key by
key and shape by shape (``tests/test_official_decoder.py``), and official decoder weights loaded into
it. Kernel-1 ``Conv1d`` weights ``[out, in, 1]`` are i2p ``Linear`` weights ``[out, in]``; the
official mask token is ``[1, D]``, i2p's ``[1, 1, D]``.

============================================================  ==========================================================
official                                                      i2p ``I2PMAE``
============================================================  ==========================================================
``h_encoder.*``                                               ``encoder.*`` (``official.keys``)
``mask_token``                                                ``decoder.mask_token``
``h_decoder.{i}.blocks.{j}.{norm1,norm2,attn.*}``             ``decoder.stacks.{i}.blocks.{j}.*``
``h_decoder.{i}.blocks.{j}.mlp.fc{1,2}.*``                    ``decoder.stacks.{i}.blocks.{j}.mlp.{0,2}.*``
``decoder_pos_embeds.{i}.{0,2}.*``                            ``decoder.pos_embeds.{i}.{0,2}.*``
``token_prop.{i}.fuse.net.{0,1}.*`` (conv, BN)                ``decoder.fuse.{i}.fuse.{linear,bn}.*``
``token_prop.{i}.extraction.operation.{b}.net{1,2}.{0,1}.*``  ``decoder.fuse.{i}.extraction.{b}.net{1,2}.{linear,bn}.*``
``decoder_norm.*``                                            ``decoder.norm.*``
``rec_head_3d.*``, ``rec_head_2d.*`` (conv)                   ``head_3d.*``, ``head_2d.*``
============================================================  ==========================================================
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from i2p.official.keys import ENCODER_CONV, ENCODER_PREFIX, i2p_to_official_name, official_to_i2p_name

_BN = "weight|bias|running_mean|running_var|num_batches_tracked"
_PAIRS: list[tuple[str, str]] = [  # (official regex, i2p replacement)
    (r"mask_token", r"decoder.mask_token"),
    (r"h_decoder\.(\d+)\.blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)", r"decoder.stacks.\1.blocks.\2.\3.\4"),
    (r"h_decoder\.(\d+)\.blocks\.(\d+)\.attn\.(qkv\.weight|proj\.weight|proj\.bias)",
     r"decoder.stacks.\1.blocks.\2.attn.\3"),
    (r"h_decoder\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"decoder.stacks.\1.blocks.\2.mlp.0.\3"),
    (r"h_decoder\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"decoder.stacks.\1.blocks.\2.mlp.2.\3"),
    (r"decoder_pos_embeds\.(\d+)\.([02])\.(weight|bias)", r"decoder.pos_embeds.\1.\2.\3"),
    (r"token_prop\.(\d+)\.fuse\.net\.0\.(weight|bias)", r"decoder.fuse.\1.fuse.linear.\2"),
    (rf"token_prop\.(\d+)\.fuse\.net\.1\.({_BN})", r"decoder.fuse.\1.fuse.bn.\2"),
    (r"token_prop\.(\d+)\.extraction\.operation\.(\d+)\.(net[12])\.0\.(weight|bias)",
     r"decoder.fuse.\1.extraction.\2.\3.linear.\4"),
    (rf"token_prop\.(\d+)\.extraction\.operation\.(\d+)\.(net[12])\.1\.({_BN})",
     r"decoder.fuse.\1.extraction.\2.\3.bn.\4"),
    (r"decoder_norm\.(weight|bias)", r"decoder.norm.\1"),
    (r"rec_head_3d\.(weight|bias)", r"head_3d.\1"),
    (r"rec_head_2d\.(weight|bias)", r"head_2d.\1"),
]
_FORWARD = [(re.compile(f"^{o}$"), i) for o, i in _PAIRS]
_BACKWARD_PAIRS: list[tuple[str, str]] = [  # (i2p regex, official replacement)
    (r"decoder\.mask_token", r"mask_token"),
    (r"decoder\.stacks\.(\d+)\.blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)", r"h_decoder.\1.blocks.\2.\3.\4"),
    (r"decoder\.stacks\.(\d+)\.blocks\.(\d+)\.attn\.(qkv\.weight|proj\.weight|proj\.bias)",
     r"h_decoder.\1.blocks.\2.attn.\3"),
    (r"decoder\.stacks\.(\d+)\.blocks\.(\d+)\.mlp\.0\.(weight|bias)", r"h_decoder.\1.blocks.\2.mlp.fc1.\3"),
    (r"decoder\.stacks\.(\d+)\.blocks\.(\d+)\.mlp\.2\.(weight|bias)", r"h_decoder.\1.blocks.\2.mlp.fc2.\3"),
    (r"decoder\.pos_embeds\.(\d+)\.([02])\.(weight|bias)", r"decoder_pos_embeds.\1.\2.\3"),
    (r"decoder\.fuse\.(\d+)\.fuse\.linear\.(weight|bias)", r"token_prop.\1.fuse.net.0.\2"),
    (rf"decoder\.fuse\.(\d+)\.fuse\.bn\.({_BN})", r"token_prop.\1.fuse.net.1.\2"),
    (r"decoder\.fuse\.(\d+)\.extraction\.(\d+)\.(net[12])\.linear\.(weight|bias)",
     r"token_prop.\1.extraction.operation.\2.\3.0.\4"),
    (rf"decoder\.fuse\.(\d+)\.extraction\.(\d+)\.(net[12])\.bn\.({_BN})",
     r"token_prop.\1.extraction.operation.\2.\3.1.\4"),
    (r"decoder\.norm\.(weight|bias)", r"decoder_norm.\1"),
    (r"head_3d\.(weight|bias)", r"rec_head_3d.\1"),
    (r"head_2d\.(weight|bias)", r"rec_head_2d.\1"),
]
_BACKWARD = [(re.compile(f"^{i}$"), o) for i, o in _BACKWARD_PAIRS]
# official names whose tensors are Conv1d kernels [out, in, 1] (i2p Linear [out, in])
_CONV = re.compile(r"^(token_prop\..*\.(net\.0|net[12]\.0)\.weight|rec_head_(3d|2d)\.weight)$")


def official_to_model_name(name: str) -> str | None:
    """i2p ``I2PMAE`` name of an official ``I2P_MAE`` name (``module.`` stripped); None: no rule."""
    if name.startswith(ENCODER_PREFIX):
        rel = official_to_i2p_name(name[len(ENCODER_PREFIX):])
        return None if rel is None else "encoder." + rel
    for pat, repl in _FORWARD:
        if pat.match(name):
            return pat.sub(repl, name)
    return None


def model_to_official_name(name: str) -> str | None:
    """Official ``I2P_MAE`` name of an i2p ``I2PMAE`` name; None: no rule (an i2p-only part)."""
    if name.startswith("encoder."):
        rel = i2p_to_official_name(name[len("encoder."):])
        return None if rel is None else ENCODER_PREFIX + rel
    for pat, repl in _BACKWARD:
        if pat.match(name):
            return pat.sub(repl, name)
    return None


def _is_conv(official_name: str) -> bool:
    if official_name.startswith(ENCODER_PREFIX):
        return bool(ENCODER_CONV.match(official_name[len(ENCODER_PREFIX):]))
    return bool(_CONV.match(official_name))


def official_shape(official_name: str, i2p_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The official shape of a tensor that has ``i2p_shape`` in i2p."""
    if _is_conv(official_name):
        return (*i2p_shape, 1)
    if official_name == "mask_token":
        return tuple(i2p_shape[1:])
    return tuple(i2p_shape)


def official_to_model(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official ``I2P_MAE`` state (``module.`` stripped, no ``clip_model.*``) -> ``(i2p I2PMAE
    state, official keys with no rule)``: conv kernels squeezed, the mask token reshaped."""
    out, bad = {}, []
    for key, value in state.items():
        name = official_to_model_name(key)
        if name is None:
            bad.append(key)
            continue
        if _is_conv(key):
            value = value[..., 0]
        elif key == "mask_token":
            value = value[None]
        out[name] = value
    return out, bad


def model_to_official(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """i2p ``I2PMAE`` state -> ``(official I2P_MAE state, i2p keys with no official name)``:
    Linear weights of the conv layers get their kernel dimension back, the mask token loses
    its batch dimension. The inverse of :func:`official_to_model`."""
    out, bad = {}, []
    for key, value in state.items():
        name = model_to_official_name(key)
        if name is None:
            bad.append(key)
            continue
        if _is_conv(name):
            value = value[..., None]
        elif name == "mask_token":
            value = value.reshape(value.shape[1:])
        out[name] = value.contiguous()
    return out, bad
