"""The encoder export directory: ``model.safetensors`` + ``config.json`` + ``README.md``.

``config.json``::

    {"format": "i2p.encoder/1",
     "model": <ModelConfig.to_dict()>,       # rebuilds the HierarchicalEncoder exactly
     "pooling": "max",                       # how embed() pools the coarsest tokens
     "normalize": false,                     # embed()'s default L2 normalisation
     "provenance": {...}}                    # where the weights came from

``model.safetensors`` holds the encoder state dict in i2p's names (``HierarchicalEncoder``).
:func:`write_export_dir` is the one place that writes it (the ``i2p.api`` writer takes the same
arguments and may replace it); :func:`read_export_dir` loads it back.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from i2p.common.errors import UserError

FORMAT = "i2p.encoder/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
POOLINGS = ("max", "meanmax", "mean_plus_max")


def _readme(model_cfg: dict, pooling: str, provenance: Mapping[str, Any]) -> str:
    lines = [
        "# i2p encoder export",
        "",
        f"Format `{FORMAT}`: `{WEIGHTS}` (the encoder's state dict, i2p names) and `{CONFIG}`",
        "(the i2p model config, pooling, provenance).",
        "",
        "```python",
        "import i2p",
        "enc = i2p.load_encoder('.')          # this directory",
        "feats = enc.embed(points)            # points: [B, N, 3] float32, unit sphere",
        "```",
        "",
        "or `--ckpt <this directory>` with any `i2p eval` command.",
        "",
        f"- levels: {model_cfg.get('num_groups')} tokens x {model_cfg.get('group_sizes')} neighbours, "
        f"dims {model_cfg.get('enc_dims')}, depths {model_cfg.get('enc_depths')}, {model_cfg.get('num_heads')} heads",
        f"- encoder computation: `{model_cfg.get('eval_mode', 'i2p')}`, token merging: "
        f"`{model_cfg.get('token_merge', 'i2p')}`; pooling: `{pooling}`",
    ]
    if provenance:
        lines += ["", "## Provenance", ""]
        lines += [f"- {k}: `{v}`" for k, v in provenance.items() if not isinstance(v, (dict, list))]
    return "\n".join(lines) + "\n"


def write_export_dir(state: Mapping[str, torch.Tensor], model_cfg, out_dir: str | os.PathLike,
                     provenance: Mapping[str, Any] | None = None, pooling: str = "max",
                     normalize: bool = False) -> Path:
    """Write an encoder export. ``state``: HierarchicalEncoder state dict (i2p names);
    ``model_cfg``: a ``ModelConfig`` (or its dict). Files are written next to each other via
    temporary names and renamed, the config last, so a directory with a ``config.json`` is
    complete."""
    from safetensors.torch import save_file

    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
    cfg = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    config = {"format": FORMAT, "model": cfg, "pooling": pooling, "normalize": bool(normalize),
              "provenance": dict(provenance or {})}

    def _atomic(name: str, write) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, out / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    _atomic(WEIGHTS, lambda p: save_file(tensors, p, metadata={"format": FORMAT}))
    _atomic("README.md", lambda p: Path(p).write_text(_readme(cfg, pooling, config["provenance"])))
    _atomic(CONFIG, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))
    return out


def is_export_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG).is_file() and (p / WEIGHTS).is_file()


def read_export_dir(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """``(HierarchicalEncoder in eval mode, ModelConfig, config dict)`` of an export directory.
    Loading is strict: a missing, unexpected or mis-shaped tensor is one ``UserError``."""
    from safetensors.torch import load_file

    from i2p.common.checkpoint import load_model_state
    from i2p.stage2_pretrain.model import HierarchicalEncoder, ModelConfig

    p = Path(path)
    if not is_export_dir(p):
        raise UserError(f"{p} is not an encoder export directory (needs {CONFIG} and {WEIGHTS})")
    try:
        config = json.loads((p / CONFIG).read_text())
    except ValueError as exc:
        raise UserError(f"{p / CONFIG} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or not isinstance(config.get("model"), dict):
        raise UserError(f"{p / CONFIG} is not an '{FORMAT}' config")
    try:
        cfg = ModelConfig.from_dict(dict(config["model"]))
    except (TypeError, ValueError) as exc:
        raise UserError(f"{p / CONFIG}: model config this version cannot build ({exc})") from None
    encoder = HierarchicalEncoder(cfg)
    try:
        state = load_file(str(p / WEIGHTS), device="cpu")
    except Exception as exc:  # noqa: BLE001 - corrupt or truncated file
        raise UserError(f"{p / WEIGHTS} cannot be read ({type(exc).__name__}: {exc})") from None
    load_model_state(encoder, state, what=f"export {p}")
    return encoder.to(device).eval(), cfg, config


def load_export_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """An ``I2PMAE`` around the exported encoder (decoder and heads freshly initialised; they
    never touch features), for code that expects the whole network (``model.encode``)."""
    from i2p.stage2_pretrain.model import I2PMAE

    encoder, cfg, config = read_export_dir(path)
    model = I2PMAE(cfg if not cfg.use_2d or cfg.teacher_channels else _three_d(cfg))
    model.encoder.load_state_dict(encoder.state_dict(), strict=True)
    return model.to(device).eval(), cfg, config


def _three_d(cfg):
    import dataclasses

    return dataclasses.replace(cfg, targets="3d")
