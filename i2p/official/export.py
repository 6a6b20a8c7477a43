"""i2p models in the official checkpoint layout: ``i2p export --format i2p-mae|point-m2ae``.

``OUT/<format>.pth``   ``{'base_model': {official name: tensor}, 'optimizer': None, 'epoch',
                       'metrics': {}, 'best_metrics': {}, 'i2p': {what was written, from what}}``
``OUT/<format>.yaml``  the official ``model:`` section that builds the network these keys fit

What goes in: from a run checkpoint (or a run directory) whose model has the official
architecture (``token_merge: official``), the WHOLE pre-training model when its decoder is the
official one (``decoder_style: official``) and every tensor has an official name and shape
(I2P-MAE: encoder, decoder, ``rec_head_3d``, ``rec_head_2d``); otherwise the encoder, with the
reason in :attr:`OfficialExport.note`. From an export directory (``i2p export`` / ``i2p
convert``): the encoder, the only part it holds. Everything written is checked, key by key and
shape by shape, against :func:`i2p.official.params.official_model_shapes` -- a table written
from the official constructors, equal to the released checkpoints' manifests at the paper
config -- and written in the official state_dict order.

Why no ``module.`` prefix by default: the official fine-tuning models load
``ckpt['base_model']`` with ``strict=False`` and do not strip ``module.`` (I2P_MAE_Finetune.py:140-142,
Point_M2AE_Finetune.py:144-146), so prefixed keys would be silently ignored there;
``builder.load_model`` (tools/builder.py:148-158: SVM, ``--start_ckpts``) strips it, so
unprefixed keys load everywhere -- it is the layout of an official DistributedDataParallel run.
``module_prefix=True`` writes the nn.DataParallel layout of the released files.

What the official code can do with it: the fine-tuning runners (``--ckpts FILE``) load the
encoder; ``builder.load_model`` loads a whole Point-M2AE model strictly, but a whole I2P_MAE
model only with its CLIP teacher's ``clip_model.*`` weights added (it builds CLIP and loads
strictly), which i2p neither trains nor stores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from i2p.common.atomic import atomic_path, write_text
from i2p.common.checkpoint import state_differences
from i2p.common.errors import UserError
from i2p.official import config as oc
from i2p.official import keys as ok
from i2p.official import model_keys as mk
from i2p.official.params import official_encoder_shapes, official_model_shapes

FORMATS = oc.SOURCES
_NAMES = {"i2p-mae": "I2P_MAE", "point-m2ae": "Point_M2AE"}


@dataclass
class OfficialExport:
    checkpoint: Path  # OUT/<format>.pth
    config: Path  # OUT/<format>.yaml
    whole_model: bool  # encoder + decoder + heads (False: the encoder only)
    keys: int
    parameters: int  # floating tensors without BatchNorm running statistics
    note: str = ""  # why only the encoder was written ("" when the whole model was)


def _listing(items: list[str], limit: int = 6) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _compare(have: Mapping[str, torch.Tensor], want: Mapping[str, tuple[int, ...]]) -> list[str]:
    """What keeps ``have`` (official names) from being exactly the state ``want`` describes."""
    missing, extra, mismatched = state_differences(have, want)
    shape = [f"{k} {list(have[k].shape)} vs {list(want[k])}" for k in mismatched]
    parts = []
    if missing:
        parts.append(f"{len(missing)} official tensors it lacks ({_listing(missing)})")
    if extra:
        parts.append(f"{len(extra)} tensors the official model has no place for ({_listing(extra)})")
    if shape:
        parts.append(f"{len(shape)} shapes that differ ({_listing(shape, 3)})")
    return parts


def encoder_entries(enc_state: Mapping[str, torch.Tensor], section: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``h_encoder.*`` entries of an i2p encoder state, in the official order; one line when
    the official ``H_Encoder`` of ``section`` cannot hold it exactly."""
    try:
        enc = ok.i2p_to_official(enc_state)
    except KeyError as exc:
        raise UserError(f"this encoder has no official layout: {exc.args[0]}") from None
    want = {ok.ENCODER_PREFIX + k: v for k, v in official_encoder_shapes(section).items()}
    parts = _compare(enc, want)
    if parts:
        raise UserError("the official H_Encoder cannot express this encoder: " + "; ".join(parts))
    return {k: enc[k] for k in want}


def whole_model_entries(model_state: Mapping[str, torch.Tensor], cfg, section: dict[str, Any],
                        fmt: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """``(official entries of the whole pre-training model, "")``, or ``(None, why not)``.
    ``section`` gains the decoder fields that the written keys depend on."""
    if cfg.decoder_style != "official":
        return None, (f"decoder_style is {cfg.decoder_style!r}, so the decoder has no official layout "
                      "(train with --set model.decoder_style=official, as --config paper does)")
    section["decoder_up_blocks"] = [int(cfg.dec_up_blocks)] * len(cfg.dec_dims)
    if fmt == "i2p-mae" and cfg.use_2d:
        section["clip_config"] = {**(section.get("clip_config") or {}), "feat_dim": int(cfg.teacher_channels)}
    mapped, bad = mk.model_to_official(model_state)
    if bad:
        return None, f"{len(bad)} tensors of this model have no official name ({_listing(bad)})"
    parts = _compare(mapped, official_model_shapes(section, fmt))
    if parts:
        return None, f"its pre-training model is not the official {_NAMES[fmt]}: " + "; ".join(parts)
    return {k: mapped[k] for k in official_model_shapes(section, fmt)}, ""


def _load(source: str | os.PathLike):
    """``(whole model state or None, encoder state, ModelConfig, provenance)`` of a run
    checkpoint, a run directory or an export directory."""
    from i2p.api.loading import load_encoder, model_config_from_dict, resolve_source
    from i2p.common.checkpoint import CheckpointError, file_sha256, load_checkpoint, trained_weights

    kind, path = ("export", None) if str(source) == "random" else resolve_source(source)
    if kind == "checkpoint":
        ckpt = load_checkpoint(path)
        model_cfg = (ckpt.get("config") or {}).get("model")
        if not isinstance(model_cfg, dict):
            raise CheckpointError(f"checkpoint {path} holds no model config (config['model'])")
        cfg = model_config_from_dict(model_cfg, f"checkpoint {path}")
        weights = trained_weights(ckpt)
        enc = {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}
        prov = {"source": "i2p pretrain checkpoint", "checkpoint": str(path), "checkpoint_sha256": file_sha256(path),
                "epoch": ckpt.get("epoch"), "step": ckpt.get("step")}
        return weights, enc, cfg, prov
    enc = load_encoder(source, "cpu")
    prov = {"source": "i2p export directory" if enc.info.get("export") else str(source), "checkpoint": str(source),
            "checkpoint_sha256": enc.info.get("sha256"), "epoch": enc.info.get("epoch"), "step": enc.info.get("step")}
    return None, enc.state_dict(), enc.config, prov


def write_official(entries: Mapping[str, torch.Tensor], section: Mapping[str, Any], out_dir: str | os.PathLike,
                   fmt: str, meta: Mapping[str, Any], module_prefix: bool = False) -> tuple[Path, Path]:
    """Write ``OUT/<fmt>.pth`` and ``OUT/<fmt>.yaml`` atomically (the YAML last)."""
    import yaml

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    ckpt, cfg_file = out / f"{fmt}.pth", out / f"{fmt}.yaml"
    prefix = "module." if module_prefix else ""
    epoch = meta.get("epoch")
    payload = {"base_model": {prefix + k: v.detach().cpu().contiguous().clone() for k, v in entries.items()},
               "optimizer": None, "epoch": epoch if isinstance(epoch, int) else -1, "metrics": {},
               "best_metrics": {}, "i2p": dict(meta)}
    out.mkdir(parents=True, exist_ok=True)
    cfg_file.unlink(missing_ok=True)  # a half-rewritten pair must not look complete
    with atomic_path(ckpt) as tmp:
        torch.save(payload, tmp)
    header = (f"# The official {_NAMES[fmt]} model section for {ckpt.name} (written by i2p export --format {fmt}).\n"
              f"# Paste it as the 'model:' entry of an official config, e.g. cfgs/pre-training/{fmt}.yaml.\n")
    write_text(cfg_file, header + yaml.safe_dump({"model": dict(section)}, sort_keys=False, default_flow_style=None))
    return ckpt, cfg_file


def export_official(source: str | os.PathLike, out_dir: str | os.PathLike, fmt: str = "i2p-mae",
                    module_prefix: bool = False) -> OfficialExport:
    """``i2p export --format FMT``: ``source`` (run checkpoint, run directory or export
    directory) in the official layout under ``out_dir`` (see the module docstring)."""
    from i2p import __version__

    if fmt not in FORMATS:
        raise UserError(f"--format must be i2p or one of {', '.join(FORMATS)} (got {fmt!r})")
    model_state, enc_state, cfg, prov = _load(source)
    section = oc.to_official_section(cfg, fmt)  # refuses an architecture the official code cannot build
    enc = encoder_entries(enc_state, section)
    whole, note = (None, "the source is an export directory, which holds no decoder") if model_state is None \
        else whole_model_entries(model_state, cfg, section, fmt)
    entries = whole if whole is not None else enc
    params = sum(v.numel() for k, v in entries.items() if v.is_floating_point()
                 and not k.endswith(("running_mean", "running_var")))
    meta = {**prov, "format": fmt, "official_repo": "@".join(oc.OFFICIAL_REPOS[fmt]), "whole_model": whole is not None,
            "encoder_only_because": note or None, "i2p_version": __version__}
    ckpt, cfg_file = write_official(entries, section, out_dir, fmt, meta, module_prefix)
    return OfficialExport(ckpt, cfg_file, whole is not None, len(entries), params, note)

