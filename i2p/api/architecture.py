"""The encoder's architecture as plain JSON values, and the ``ModelConfig`` / network built
back from it: shared by the loader (checkpoints, exports) and the export writer, so both agree
on which fields make an encoder."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from i2p.common.checkpoint import CheckpointError
from i2p.common.errors import UserError

# The ModelConfig fields that shape the encoder or its computation; everything else is the
# pre-training objective and the decoder. ``token_merge``, ``eval_mode`` and
# ``official_local_radius`` select the official I2P-MAE / Point-M2AE encoder (``i2p convert``).
ENCODER_FIELDS = ("num_points", "group_sizes", "num_groups", "enc_dims", "enc_depths", "num_heads",
                  "mlp_ratio", "drop_path", "embed_hidden", "embed_norm", "fps_random_start",
                  "token_merge", "eval_mode", "official_local_radius")
# Encoder fields that came after the first exports and checkpoints: absent means the
# ModelConfig default (i2p's own encoder), which is what those files were written with.
LATER_FIELDS = ("token_merge", "eval_mode", "official_local_radius")


def _model():
    from i2p.stage2_pretrain import model

    return model


def _later_defaults() -> dict:
    fields = {f.name: f for f in dataclasses.fields(_model().ModelConfig)}
    out = {}
    for name in LATER_FIELDS:
        f = fields[name]
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out[name] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def _json_value(v: Any) -> Any:
    return [_json_value(x) for x in v] if isinstance(v, (list, tuple)) else v


def encoder_architecture(model_config: Any) -> dict:
    """The encoder's part of a ``ModelConfig`` (or of its dict) as plain JSON values; fields
    newer than the dict (:data:`LATER_FIELDS`) take their defaults."""
    d = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    d = {**_later_defaults(), **d}
    missing = [k for k in ENCODER_FIELDS if k not in d]
    if missing:
        raise UserError(f"model config lacks encoder fields: {', '.join(missing)}")
    return {k: _json_value(d[k]) for k in ENCODER_FIELDS}


def config_from_architecture(arch: dict) -> Any:
    """A ``ModelConfig`` that builds exactly the encoder described by ``arch`` (decoder and
    objective set to harmless 3D-only values: they are never built for an encoder). Fields of
    :data:`LATER_FIELDS` that ``arch`` lacks take their defaults."""
    unknown = sorted(set(arch) - set(ENCODER_FIELDS))
    missing = [k for k in ENCODER_FIELDS if k not in arch and k not in LATER_FIELDS]
    if unknown or missing:
        raise CheckpointError(f"encoder architecture has unknown fields {unknown} / lacks {missing}")
    try:
        return _model().ModelConfig(**arch, dec_dims=(arch["enc_dims"][-1],), dec_depths=(1,), targets="3d")
    except (TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(f"encoder architecture cannot be built: {exc}") from None


def model_config_from_dict(d: dict, what: str) -> Any:
    """The ``ModelConfig`` a checkpoint or an export stores; a config this version cannot build
    is one :class:`CheckpointError` line naming ``what``."""
    try:
        return _model().ModelConfig.from_dict(dict(d))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{what}: a model config this version cannot build ({exc})") from None


def config_from_export(config: dict, what: str) -> Any:
    """The ``ModelConfig`` of an export's ``config.json``: its whole ``model_config`` when
    present (exports since ``i2p convert`` joined: decoder sizes and ``extra`` included, so an
    official layout can be written back), checked against its ``architecture``; otherwise one
    built from the ``architecture`` alone."""
    arch = config.get("architecture")
    if not isinstance(arch, dict):
        raise CheckpointError(f"{what}: config.json has no 'architecture'")
    full = config.get("model_config")
    if full is None:
        return config_from_architecture(arch)
    if not isinstance(full, dict):
        raise CheckpointError(f"{what}: config.json 'model_config' is not a mapping")
    cfg = model_config_from_dict(full, what)
    if encoder_architecture(cfg) != encoder_architecture(arch):
        raise CheckpointError(f"{what}: config.json 'model_config' and 'architecture' describe different encoders")
    return cfg


def build_network(cfg: Any, what: str) -> torch.nn.Module:
    """An encoder to load weights into. Its throw-away random init runs on a forked RNG, so
    loading an encoder never moves the caller's random stream (fine-tuning seeds its head
    right before loading: checkpoint and export then give the same run)."""
    try:
        with torch.random.fork_rng(devices=[]):
            return _model().HierarchicalEncoder(cfg)
    except Exception as exc:  # noqa: BLE001 - inconsistent sizes in a stored config
        raise CheckpointError(f"{what}: cannot build its encoder ({type(exc).__name__}: {exc})") from None
