"""open_clip ViT teachers: ``clip-vitb16`` and ``open_clip:ARCH:TAG``.

Features are the patch tokens after the final LayerNorm (``ln_post``) and the projection
(``proj``): the same space as CLIP's image embedding, per patch (14x14x512 for ViT-B/16).
Saliency is the last block's attention of the CLS token to the patches, averaged over heads,
computed here from the block's ``in_proj`` weights (open_clip calls attention with
``need_weights=False`` and has no stable hook for it). We renormalise it over the patches
(dropping the CLS->CLS entry) so each map is a distribution over the h*w patches that sums
to 1, independent of how much attention CLS pays to itself.
"""

from __future__ import annotations

import logging
import os

import i2p.common.tv_guard  # noqa: F401  (must precede open_clip: see tv_guard)

import torch
import torch.nn.functional as F
from torch import nn

from .base import (Teacher, hub_access, load_state_file, load_strict, sha256_file, short,
                   teacher_error)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _build(name: str, arch: str) -> nn.Module:
    import open_clip

    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)  # silence "Model initialized randomly": weights come next
    try:
        return open_clip.create_model(arch, pretrained=None, device="cpu")
    except Exception as e:  # noqa: BLE001 - unknown arch etc.
        raise teacher_error(name, f"cannot build open_clip model {arch!r} ({short(e)})") from None
    finally:
        logging.disable(prev)


def _hub_file(name: str, arch: str, tag: str) -> str:
    """Local path of the hub checkpoint for (arch, tag), downloading it if possible."""
    from open_clip import pretrained as ocp

    cfg = ocp.get_pretrained_cfg(arch, tag)
    if not cfg:
        raise teacher_error(name, f"open_clip has no pretrained tag {tag!r} for {arch!r}")
    try:
        with hub_access():
            path = ocp.download_pretrained(cfg)
        if not path:
            raise FileNotFoundError("download returned nothing")
        return path
    except Exception as e:  # noqa: BLE001 - offline hub raises many kinds of errors
        raise teacher_error(
            name, f"no weights reachable for open_clip {arch}:{tag} (hub offline? {type(e).__name__})"
        ) from None


class OpenClipViTTeacher(Teacher):
    """Visual tower of an open_clip CLIP model with a standard ``VisionTransformer``."""

    def __init__(self, name: str, arch: str, tag: str, weights: str | None):
        if weights is None:
            path = _hub_file(name, arch, tag)
            source = f"hub:{arch}:{tag}"
        elif weights == "random":
            path, source = None, "random"
        else:
            path = os.path.abspath(os.path.expanduser(weights))
            source = f"file:{path}"
        model = _build(name, arch)  # after the hub lookup: an offline failure costs no build
        sha = None
        if path is not None:
            load_strict(name, model, load_state_file(name, path), path)
            sha = sha256_file(path)
        visual = model.visual
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        super().__init__(name, cfg.get("mean", OPENAI_MEAN), cfg.get("std", OPENAI_STD), source, sha)
        tr = getattr(visual, "transformer", None)
        blocks = getattr(tr, "resblocks", None)
        if blocks is None or not isinstance(blocks[-1].attn, nn.MultiheadAttention):
            raise teacher_error(name, f"{arch} is not an open_clip VisionTransformer with standard attention")
        if getattr(visual, "attn_pool", None) is not None:
            raise teacher_error(name, f"{arch} uses attentional pooling; patch features are undefined")
        size = getattr(visual, "image_size", (self.image_size,) * 2)
        if tuple(size) != (self.image_size,) * 2:
            raise teacher_error(name, f"{arch} expects {tuple(size)} images, the renders are {self.image_size}")
        self.visual = visual  # the text tower is dropped with `model`
        self.batch_first = bool(getattr(tr, "batch_first", False))
        grid = visual.grid_size if hasattr(visual, "grid_size") else None
        self.grid = tuple(grid) if grid is not None else (self.image_size // 16,) * 2

    def _probe_feature_shape(self) -> tuple[int, int, int]:
        v = self.visual
        dim = v.proj.shape[1] if v.proj is not None else v.ln_post.normalized_shape[0]
        return (*self.grid, dim)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + CLS + positions + ln_pre (the first half of VisionTransformer.forward)."""
        v = self.visual
        x = v.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.ln_pre(x)

    def _cls_attention(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Head-averaged softmax attention of token 0 (CLS) to all tokens: [B, L] (float32)."""
        attn: nn.MultiheadAttention = blk.attn
        h = blk.ln_1(x).float()
        d = h.shape[-1]
        w = attn.in_proj_weight.float()
        b = attn.in_proj_bias.float() if attn.in_proj_bias is not None else torch.zeros(3 * d, device=h.device)
        q = F.linear(h[:, :1], w[:d], b[:d])  # only the CLS query is needed
        k = F.linear(h, w[d: 2 * d], b[d: 2 * d])
        nh = attn.num_heads
        bsz, L, _ = k.shape
        q = q.reshape(bsz, 1, nh, d // nh).transpose(1, 2)  # [B,nh,1,dh]
        k = k.reshape(bsz, L, nh, d // nh).transpose(1, 2)  # [B,nh,L,dh]
        logits = (q @ k.transpose(-1, -2)) / (d // nh) ** 0.5  # [B,nh,1,L]
        return logits.softmax(dim=-1).mean(dim=1)[:, 0]  # [B,L]

    def _extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.visual
        x = self._embed(x)
        blocks = v.transformer.resblocks
        if not self.batch_first:
            x = x.transpose(0, 1)
        for blk in blocks[:-1]:
            x = blk(x)
        xb = x if self.batch_first else x.transpose(0, 1)
        with torch.autocast("cuda", enabled=False):
            att = self._cls_attention(blocks[-1], xb)
        x = blocks[-1](x)
        if not self.batch_first:
            x = x.transpose(0, 1)
        tokens = v.ln_post(x[:, 1:])
        if v.proj is not None:
            tokens = tokens @ v.proj
        gh, gw = self.grid
        sal = att[:, 1:]
        sal = sal / sal.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return tokens.reshape(x.shape[0], gh, gw, -1), sal.reshape(-1, gh, gw)
