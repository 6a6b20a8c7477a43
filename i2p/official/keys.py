"""State-dict names: official I2P-MAE / Point-M2AE encoder <-> i2p's ``HierarchicalEncoder``.

The official encoder is ``H_Encoder`` (models/I2P_MAE.py, models/Point_M2AE.py; the two have
the same keys and shapes). Its token embeddings are ``Conv1d(kernel 1)`` layers, stored
``[out, in, 1]``; i2p uses ``Linear`` (``[out, in]``), so those weights lose or gain their
trailing kernel dimension. Everything else maps one to one:

======================================================  =========================================
official (``h_encoder.`` + ...)                         i2p ``HierarchicalEncoder``
======================================================  =========================================
``token_embed.{l}.first_conv.{0,3}.{weight,bias}``      ``embeds.{l}.net.first.{0,3}.*``
``token_embed.{l}.first_conv.1.*`` (BatchNorm1d)        ``embeds.{l}.net.first.1.bn.*``
``token_embed.{l}.second_conv.{0,3}.{weight,bias}``     ``embeds.{l}.net.second.{0,3}.*``
``token_embed.{l}.second_conv.1.*`` (BatchNorm1d)       ``embeds.{l}.net.second.1.bn.*``
``encoder_pos_embeds.{l}.{0,2}.*``                      ``pos_embeds.{l}.{0,2}.*``
``encoder_blocks.{l}.blocks.{j}.norm{1,2}.*``           ``stacks.{l}.blocks.{j}.norm{1,2}.*``
``encoder_blocks.{l}.blocks.{j}.attn.{qkv,proj}.*``     ``stacks.{l}.blocks.{j}.attn.{qkv,proj}.*``
``encoder_blocks.{l}.blocks.{j}.mlp.fc{1,2}.*``         ``stacks.{l}.blocks.{j}.mlp.{0,2}.*``
``encoder_norms.{l}.*``                                 ``norms.{l}.*``
======================================================  =========================================

The fused ``qkv`` rows are ``[q; k; v]``, each ``[head][head_dim]``, in both codes, so it is
copied as is. The pre-training decoder and heads (``mask_token``, ``h_decoder``,
``decoder_pos_embeds``, ``token_prop``, ``decoder_norm``, ``rec_head*``) are known and dropped:
an encoder export does not hold them.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

ENCODER_PREFIX = "h_encoder."
# Top-level official modules that are not the encoder: recognised, then dropped.
DECODER_PREFIXES = ("mask_token", "h_decoder.", "decoder_pos_embeds.", "token_prop.", "decoder_norm.",
                    "rec_head_3d.", "rec_head_2d.", "rec_head.")
CLIP_PREFIX = "clip_model."

_BN_FIELDS = "weight|bias|running_mean|running_var|num_batches_tracked"
_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(rf"^token_embed\.(\d+)\.(first|second)_conv\.1\.({_BN_FIELDS})$"), r"embeds.\1.net.\2.1.bn.\3"),
    (re.compile(r"^token_embed\.(\d+)\.(first|second)_conv\.([03])\.(weight|bias)$"), r"embeds.\1.net.\2.\3.\4"),
    (re.compile(r"^encoder_pos_embeds\.(\d+)\.([02])\.(weight|bias)$"), r"pos_embeds.\1.\2.\3"),
    (re.compile(r"^encoder_blocks\.(\d+)\.blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)$"), r"stacks.\1.blocks.\2.\3.\4"),
    (re.compile(r"^encoder_blocks\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.weight$"), r"stacks.\1.blocks.\2.attn.qkv.weight"),
    (re.compile(r"^encoder_blocks\.(\d+)\.blocks\.(\d+)\.attn\.proj\.(weight|bias)$"), r"stacks.\1.blocks.\2.attn.proj.\3"),
    (re.compile(r"^encoder_blocks\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$"), r"stacks.\1.blocks.\2.mlp.0.\3"),
    (re.compile(r"^encoder_blocks\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$"), r"stacks.\1.blocks.\2.mlp.2.\3"),
    (re.compile(r"^encoder_norms\.(\d+)\.(weight|bias)$"), r"norms.\1.\2"),
]
# The inverse, for writing the official layout back.
_INVERSE: list[tuple[re.Pattern, str]] = [
    (re.compile(rf"^embeds\.(\d+)\.net\.(first|second)\.1\.bn\.({_BN_FIELDS})$"), r"token_embed.\1.\2_conv.1.\3"),
    (re.compile(r"^embeds\.(\d+)\.net\.(first|second)\.([03])\.(weight|bias)$"), r"token_embed.\1.\2_conv.\3.\4"),
    (re.compile(r"^pos_embeds\.(\d+)\.([02])\.(weight|bias)$"), r"encoder_pos_embeds.\1.\2.\3"),
    (re.compile(r"^stacks\.(\d+)\.blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)$"), r"encoder_blocks.\1.blocks.\2.\3.\4"),
    (re.compile(r"^stacks\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.weight$"), r"encoder_blocks.\1.blocks.\2.attn.qkv.weight"),
    (re.compile(r"^stacks\.(\d+)\.blocks\.(\d+)\.attn\.proj\.(weight|bias)$"), r"encoder_blocks.\1.blocks.\2.attn.proj.\3"),
    (re.compile(r"^stacks\.(\d+)\.blocks\.(\d+)\.mlp\.0\.(weight|bias)$"), r"encoder_blocks.\1.blocks.\2.mlp.fc1.\3"),
    (re.compile(r"^stacks\.(\d+)\.blocks\.(\d+)\.mlp\.2\.(weight|bias)$"), r"encoder_blocks.\1.blocks.\2.mlp.fc2.\3"),
    (re.compile(r"^norms\.(\d+)\.(weight|bias)$"), r"encoder_norms.\1.\2"),
]
_CONV = re.compile(r"^token_embed\.\d+\.(first|second)_conv\.[03]\.weight$")
ENCODER_CONV = _CONV  # h_encoder-relative names of Conv1d kernels (official.model_keys uses it)


def _apply(rules, name: str) -> str | None:
    for pat, repl in rules:
        if pat.match(name):
            return pat.sub(repl, name)
    return None


def official_to_i2p_name(name: str) -> str | None:
    """i2p encoder name of an official ``h_encoder``-relative name (None: no rule)."""
    return _apply(_RULES, name)


def i2p_to_official_name(name: str) -> str | None:
    """Official ``h_encoder``-relative name of an i2p encoder name (None: no rule)."""
    return _apply(_INVERSE, name)


def strip_module_prefix(state: Mapping[str, object]) -> dict[str, object]:
    """Remove one leading ``module.`` (nn.DataParallel) from every key that has it, as the
    official loader does (``k.replace("module.", "")`` -- which would also touch inner names;
    no official key has ``module.`` inside, so stripping the prefix is the same)."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def split_official(state: Mapping[str, torch.Tensor]) -> tuple[dict, list[str], list[str], list[str]]:
    """Sort the (prefix-stripped) official keys: ``(encoder {i2p name: tensor}, dropped decoder
    and head keys, dropped clip_model keys, keys that did not map)``. Conv1d kernels are
    squeezed to Linear weights and every floating tensor is cast to float32."""
    enc: dict[str, torch.Tensor] = {}
    decoder, clip, unmapped = [], [], []
    for key, value in state.items():
        if key.startswith(CLIP_PREFIX):
            clip.append(key)
            continue
        if key.startswith(DECODER_PREFIXES):
            decoder.append(key)
            continue
        name = official_to_i2p_name(key[len(ENCODER_PREFIX):]) if key.startswith(ENCODER_PREFIX) else None
        if name is None or not isinstance(value, torch.Tensor):
            unmapped.append(key)
            continue
        rel = key[len(ENCODER_PREFIX):]
        if _CONV.match(rel):
            if value.dim() != 3 or value.shape[-1] != 1:
                unmapped.append(f"{key} (a Conv1d weight [out, in, 1] was expected, got {list(value.shape)})")
                continue
            value = value[..., 0]
        enc[name] = value.detach().to(torch.float32).contiguous() if value.is_floating_point() else value.detach().clone()
    return enc, decoder, clip, unmapped


def i2p_to_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """i2p encoder state -> official ``h_encoder.*`` keys (Linear weights of the token
    embeddings get their Conv1d kernel dimension back). Raises ``KeyError`` on a name with no
    rule (an encoder that is not the official architecture)."""
    out: dict[str, torch.Tensor] = {}
    bad = []
    for key, value in state.items():
        rel = i2p_to_official_name(key)
        if rel is None:
            bad.append(key)
            continue
        if _CONV.match(rel):
            value = value[..., None]
        out[ENCODER_PREFIX + rel] = value.contiguous()
    if bad:
        raise KeyError(f"{len(bad)} encoder keys have no official name: {', '.join(bad[:5])}")
    return out
