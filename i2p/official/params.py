"""Parameter counts: i2p's encoder and the official ``H_Encoder``, from the architecture.

At the paper sizes (dims 96/192/384, depths 5/5/5, 6 heads, groups 512/256/64 x 16/8/8):

===============================================  ==========
encoder                                          parameters
===============================================  ==========
official ``H_Encoder`` (``token_merge='official'``)  12,654,976
i2p (``token_merge='i2p'``, member xyz merged)      12,668,968  (+13,992, +0.11%)
===============================================  ==========

The i2p merge feeds each member's xyz relative to the centre (3 more channels) into the level
2 and 3 token embeddings, whose MLPs are also a little wider (``2*(C+3)`` instead of ``C_l``
in the second MLP). The whole official I2P-MAE pre-training model has 17,622,808 parameters
without CLIP (Point-M2AE 15,255,856); i2p's with the official encoder and decoder
(``token_merge='official'``, ``decoder_style='official'``) has the same, key by key.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

PAPER_ENCODER_PARAMETERS = {"official": 12_654_976, "i2p": 12_668_968}
# The whole pre-training model without CLIP at the paper sizes (2D head for CLIP's 512 channels): official I2P_MAE = i2p I2PMAE with token_merge='official', decoder_style='official'
# and teacher_channels=512 (tests/test_official_decoder.py checks it key by key).
PAPER_MODEL_PARAMETERS = 17_622_808


def count_parameters(module: torch.nn.Module) -> int:
    """Trainable parameters (not buffers) of ``module``."""
    return sum(p.numel() for p in module.parameters())


def official_encoder_shapes(section: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official ``H_Encoder`` state dict (``h_encoder.``-relative, official
    names, in state_dict order) for an official ``model:`` section. Written from the official
    architecture (models/modules.py Token_Embed, Encoder_Block; models/I2P_MAE.py H_Encoder),
    independently of i2p's modules, so it can check them."""
    dims = [int(d) for d in section["encoder_dims"]]
    depths = [int(d) for d in section["encoder_depths"]]
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for f in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{f}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    def conv(prefix: str, c_out: int, c_in: int) -> None:
        shapes[f"{prefix}.weight"] = (c_out, c_in, 1)
        shapes[f"{prefix}.bias"] = (c_out,)

    for lvl, d in enumerate(dims):
        p = f"token_embed.{lvl}"
        if lvl == 0:
            conv(f"{p}.first_conv.0", 128, 3); bn(f"{p}.first_conv.1", 128); conv(f"{p}.first_conv.3", 256, 128)  # noqa: E702
            conv(f"{p}.second_conv.0", 512, 512); bn(f"{p}.second_conv.1", 512); conv(f"{p}.second_conv.3", d, 512)  # noqa: E702
        else:
            c = dims[lvl - 1]
            conv(f"{p}.first_conv.0", c, c); bn(f"{p}.first_conv.1", c); conv(f"{p}.first_conv.3", c, c)  # noqa: E702
            conv(f"{p}.second_conv.0", d, 2 * c); bn(f"{p}.second_conv.1", d); conv(f"{p}.second_conv.3", d, d)  # noqa: E702
    for lvl, d in enumerate(dims):
        shapes[f"encoder_pos_embeds.{lvl}.0.weight"] = (d, 3)
        shapes[f"encoder_pos_embeds.{lvl}.0.bias"] = (d,)
        shapes[f"encoder_pos_embeds.{lvl}.2.weight"] = (d, d)
        shapes[f"encoder_pos_embeds.{lvl}.2.bias"] = (d,)
    for lvl, (d, n) in enumerate(zip(dims, depths)):
        for j in range(n):
            p = f"encoder_blocks.{lvl}.blocks.{j}"
            shapes[f"{p}.norm1.weight"] = shapes[f"{p}.norm1.bias"] = (d,)
            shapes[f"{p}.norm2.weight"] = shapes[f"{p}.norm2.bias"] = (d,)
            shapes[f"{p}.mlp.fc1.weight"] = (4 * d, d)
            shapes[f"{p}.mlp.fc1.bias"] = (4 * d,)
            shapes[f"{p}.mlp.fc2.weight"] = (d, 4 * d)
            shapes[f"{p}.mlp.fc2.bias"] = (d,)
            shapes[f"{p}.attn.qkv.weight"] = (3 * d, d)
            shapes[f"{p}.attn.proj.weight"] = (d, d)
            shapes[f"{p}.attn.proj.bias"] = (d,)
    for lvl, d in enumerate(dims):
        shapes[f"encoder_norms.{lvl}.weight"] = shapes[f"encoder_norms.{lvl}.bias"] = (d,)
    return shapes


def official_model_shapes(section: Mapping[str, Any], source: str = "i2p-mae") -> dict[str, tuple[int, ...]]:
    """Key -> shape of the whole official pre-training ``state_dict`` (``I2P_MAE`` or
    ``Point_M2AE``; no ``clip_model.*``, no ``module.``), in state_dict order, for an official
    ``model:`` section. Written from the official constructors (I2P_MAE.py:216-261,
    modules.py:68-169; Point_M2AE.py:237 for ``rec_head``), independently of i2p's modules:
    ``i2p export --format`` checks what it writes against it."""
    shapes = {"h_encoder." + k: v for k, v in official_encoder_shapes(section).items()}
    dims = [int(d) for d in section["decoder_dims"]]
    depths = [int(d) for d in section["decoder_depths"]]
    ups = [int(b) for b in section.get("decoder_up_blocks") or [1] * (len(dims) - 1)]
    sizes = [int(k) for k in section["group_sizes"]]
    out = {"mask_token": (1, dims[0]), **shapes}  # a module's own parameters come before its children's
    for i, (d, n) in enumerate(zip(dims, depths)):
        for j in range(n):
            p = f"h_decoder.{i}.blocks.{j}"
            out[f"{p}.norm1.weight"] = out[f"{p}.norm1.bias"] = (d,)
            out[f"{p}.norm2.weight"] = out[f"{p}.norm2.bias"] = (d,)
            out[f"{p}.mlp.fc1.weight"], out[f"{p}.mlp.fc1.bias"] = (4 * d, d), (4 * d,)
            out[f"{p}.mlp.fc2.weight"], out[f"{p}.mlp.fc2.bias"] = (d, 4 * d), (d,)
            out[f"{p}.attn.qkv.weight"], out[f"{p}.attn.proj.weight"] = (3 * d, d), (d, d)
            out[f"{p}.attn.proj.bias"] = (d,)
    for i, d in enumerate(dims):
        out[f"decoder_pos_embeds.{i}.0.weight"], out[f"decoder_pos_embeds.{i}.0.bias"] = (d, 3), (d,)
        out[f"decoder_pos_embeds.{i}.2.weight"], out[f"decoder_pos_embeds.{i}.2.bias"] = (d, d), (d,)

    def conv_bn(prefix: str, c_out: int, c_in: int) -> None:
        out[f"{prefix}.0.weight"], out[f"{prefix}.0.bias"] = (c_out, c_in, 1), (c_out,)
        for f in ("weight", "bias", "running_mean", "running_var"):
            out[f"{prefix}.1.{f}"] = (c_out,)
        out[f"{prefix}.1.num_batches_tracked"] = ()

    for i in range(1, len(dims)):
        conv_bn(f"token_prop.{i - 1}.fuse.net", dims[i], dims[i] + dims[i - 1])
        for b in range(ups[i - 1]):
            conv_bn(f"token_prop.{i - 1}.extraction.operation.{b}.net1", dims[i], dims[i])
            conv_bn(f"token_prop.{i - 1}.extraction.operation.{b}.net2", dims[i], dims[i])
    out["decoder_norm.weight"] = out["decoder_norm.bias"] = (dims[-1],)
    if source == "point-m2ae":
        out["rec_head.weight"], out["rec_head.bias"] = (3 * sizes[0], dims[-1], 1), (3 * sizes[0],)
    else:
        c2d = int(section["clip_config"]["feat_dim"]) * sizes[1] * 3
        out["rec_head_3d.weight"], out["rec_head_3d.bias"] = (3 * sizes[1], dims[-1], 1), (3 * sizes[1],)
        out["rec_head_2d.weight"], out["rec_head_2d.bias"] = (c2d, dims[-1], 1), (c2d,)
    return out


def official_encoder_parameters(section: Mapping[str, Any]) -> int:
    """Parameters of the official ``H_Encoder`` (BatchNorm running statistics excluded)."""
    total = 0
    for key, shape in official_encoder_shapes(section).items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        n = 1
        for s in shape:
            n *= s
        total += n
    return total
