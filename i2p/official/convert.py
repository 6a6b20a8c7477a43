"""Official I2P-MAE / Point-M2AE checkpoints -> i2p encoder exports, and back.

:func:`convert_checkpoint` reads an official checkpoint (``torch.load(weights_only=True)``),
takes ``base_model``, strips a ``module.`` prefix (nn.DataParallel), drops ``clip_model.*``
(the CLIP teacher that I2P-MAE checkpoints carry) and the pre-training decoder and heads, maps
the encoder names (:mod:`i2p.official.keys`) and checks them against the i2p encoder built
from the model config: any key that does not map, is missing or has another shape stops the
conversion with the list. :func:`convert_to_dir` writes the result as an encoder export with
the one export writer, :func:`i2p.api.export.write_export` (the official pooling,
``normalize=False``; the whole ``ModelConfig``), so ``i2p.load_encoder(DIR)``, ``i2p embed`` and
every ``i2p eval`` protocol load it like any export. :func:`write_official_checkpoint` writes
an encoder with the official architecture back in the official layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from i2p.common.checkpoint import state_differences
from i2p.common.errors import UserError
from i2p.official import config as oc
from i2p.official import keys as ok

OFFICIAL_REPOS = oc.OFFICIAL_REPOS  # (repository, commit) of each official code


class ConversionError(UserError):
    """A checkpoint that cannot be converted (unreadable, keys that do not map, wrong shapes)."""


@dataclass
class Converted:
    state: dict[str, torch.Tensor]  # HierarchicalEncoder state dict (i2p names)
    model_config: Any  # i2p ModelConfig
    pooling: str  # the official SVM feature of this model (an i2p.api.encoder.POOLS entry)
    provenance: dict[str, Any] = field(default_factory=dict)


def _listing(keys: list[str], limit: int = 40) -> str:
    """One line (the CLI prints a UserError's first line): ``: a, b, c ... and N more``."""
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ": " + ", ".join(keys[:limit]) + more


def _official(name: str) -> str:
    """An i2p encoder name as the official key (what the user's checkpoint calls it)."""
    rel = ok.i2p_to_official_name(name)
    return ok.ENCODER_PREFIX + rel if rel else name


def load_official_state(src: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(base_model state dict, other top-level entries)`` of an official checkpoint file."""
    path = Path(src)
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickled objects, corrupt files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"checkpoint {path} cannot be read with weights_only=True ({first[:200]})") from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("base_model"), Mapping):
        state = dict(ckpt["base_model"])
        rest = {k: v for k, v in ckpt.items() if k != "base_model"}
    elif isinstance(ckpt, Mapping) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state, rest = dict(ckpt), {}  # a bare model.state_dict()
    else:
        top = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ConversionError(f"checkpoint {path} has no 'base_model' state dict (top level: {top})")
    return state, rest


def convert_state(state: Mapping[str, torch.Tensor], source: str,
                  section: Mapping[str, Any] | None = None) -> Converted:
    """Convert an official ``base_model`` state dict (prefixed or not). ``section``: the
    official ``model:`` config (None: the paper config of ``source``)."""
    from i2p.stage2_pretrain.model import HierarchicalEncoder

    if source not in oc.SOURCES:
        raise ConversionError(f"unknown source format {source!r}: choose one of {', '.join(oc.SOURCES)}")
    given = section is not None
    section = dict(section) if given else oc.paper_config(source)
    name = section.get("NAME")
    if name in oc.NAMES and oc.NAMES[name] != source:
        raise ConversionError(f"the model config describes {name} but --from is {source}")
    cfg = oc.to_model_config(section, source)
    enc_state, decoder, clip, unmapped = ok.split_official(ok.strip_module_prefix(state))
    if unmapped:
        raise ConversionError(f"{len(unmapped)} checkpoint keys did not map to the i2p encoder{_listing(unmapped)}")
    own = HierarchicalEncoder(cfg).state_dict()
    missing, extra, mismatched = state_differences(enc_state, own)
    shape = [f"{_official(k)}: checkpoint {list(enc_state[k].shape)} vs config {list(own[k].shape)}"
             for k in mismatched]
    if missing or extra or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} encoder tensors missing from the checkpoint{_listing([_official(k) for k in missing])}")
        if extra:
            parts.append(f"{len(extra)} checkpoint tensors the config has no place for{_listing([_official(k) for k in extra])}")
        if shape:
            parts.append(f"{len(shape)} shape mismatches{_listing(shape)}")
        hint = "" if given else " (the paper config was assumed: pass the run's --model-config)"
        raise ConversionError("checkpoint does not fit the model config" + hint + ": " + "; ".join(parts))
    state_out = {k: enc_state[k].to(own[k].dtype) for k in own}  # i2p's order and dtypes
    repo, commit = OFFICIAL_REPOS[source]
    prov = {
        "source": f"official {source} checkpoint", "converted_from": source, "official_repo": repo, "official_commit": commit,
        "official_model_config": section, "model_config_given": given,
        "dropped_keys": {"decoder_and_heads": len(decoder), "clip_model": len(clip)},
        "encoder_parameters": sum(v.numel() for k, v in state_out.items() if v.is_floating_point()
                                  and not k.endswith(("running_mean", "running_var"))),
    }
    return Converted(state_out, cfg, oc.OFFICIAL_POOLING[source], prov)


def convert_checkpoint(src: str | os.PathLike, source: str,
                       model_config: str | os.PathLike | Mapping[str, Any] | None = None) -> Converted:
    """Convert the official checkpoint file ``src``; ``model_config`` is a YAML/JSON file
    with the official ``model:`` section, the section itself, or None (the paper config)."""
    from i2p.common.checkpoint import file_sha256

    section = None
    if model_config is not None:
        section = dict(model_config) if isinstance(model_config, Mapping) else oc.read_model_section(model_config)
    state, rest = load_official_state(src)
    conv = convert_state(state, source, section)
    conv.provenance.update({"source_file": Path(src).name, "source_sha256": file_sha256(src)})
    for key in ("epoch", "metrics", "best_metrics"):
        value = rest.get(key)
        if isinstance(value, (int, float, str)) or (isinstance(value, dict) and all(
                isinstance(v, (int, float, str)) for v in value.values())):
            conv.provenance[f"source_{key}"] = value
    return conv


def convert_to_dir(src: str | os.PathLike, source: str, out_dir: str | os.PathLike,
                   model_config: str | os.PathLike | Mapping[str, Any] | None = None) -> Path:
    """Convert ``src`` and write the encoder export directory ``out_dir``
    (:func:`i2p.api.export.write_export`). The export records the official pooling of
    ``source`` and ``normalize=False``: the official code feeds its clouds to the encoder as
    they are, and i2p's own centring would move the FPS starting point away from the official
    one (a point near the origin is skipped by the official kernel)."""
    from i2p.api.export import write_export

    conv = convert_checkpoint(src, source, model_config)
    return write_export(conv.state, conv.model_config, out_dir, conv.provenance, pooling=conv.pooling,
                        normalize=False)


def official_state_dict(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """The official ``base_model`` entries (``module.h_encoder.*``) of an i2p encoder state
    with the official architecture (``token_merge='official'``)."""
    try:
        enc = ok.i2p_to_official(state)
    except KeyError as exc:
        raise ConversionError(f"this encoder has no official layout: {exc.args[0]}") from None
    return {prefix + k: v for k, v in enc.items()}


def write_official_checkpoint(state: Mapping[str, torch.Tensor], model_cfg, out_file: str | os.PathLike,
                              source: str = "i2p-mae", module_prefix: bool = True) -> Path:
    """Write an encoder in the official checkpoint layout, atomically: ``{'base_model':
    {'module.h_encoder....': tensor}, 'optimizer': None, 'epoch': 0, 'metrics': {'acc': 0.0},
    'best_metrics': {'acc': 0.0}}`` in the official order (``i2p convert --from i2p --to
    FMT``). ``module_prefix`` (default: the nn.DataParallel layout of the released files, so a
    converted file goes back bit for bit): the official fine-tuning loaders do NOT strip
    ``module.`` (I2P_MAE_Finetune.py:140-142), so for them pass False -- or use ``i2p export
    --format FMT`` (:mod:`i2p.official.export`), which writes unprefixed keys and the YAML."""
    from i2p.common.atomic import atomic_path
    from i2p.official.export import encoder_entries

    section = oc.to_official_section(model_cfg, source)  # refuses a non-official architecture
    prefix = "module." if module_prefix else ""
    base = {prefix + k: v.detach().cpu().contiguous().clone() for k, v in encoder_entries(state, section).items()}
    payload = {"base_model": base, "optimizer": None, "epoch": 0,
               "metrics": {"acc": 0.0}, "best_metrics": {"acc": 0.0}}
    out = Path(out_file)
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)
    return out
