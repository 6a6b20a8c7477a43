"""``load_encoder``: the one loader behind the API, ``i2p export``, ``i2p embed`` and every
``i2p eval`` protocol.

Sources, told apart by what is on disk:

* a checkpoint of ``i2p pretrain`` (``RUN/last.ckpt``, ``RUN/epoch-0003.ckpt``), or a run
  directory, meaning its ``last.ckpt``. Only the encoder's weights are taken (decoder and heads
  are pre-training machinery); the architecture comes from the checkpoint's own config, so
  weights can never be paired with the wrong shapes, and the load is strict.
* an export directory of ``i2p export`` (``config.json`` + ``model.safetensors``): read with
  json and safetensors only, no pickle, so an export from elsewhere cannot run code.
* ``"random"``: the same architecture randomly initialised (``preset``, ``seed``), the floor a
  pretrained encoder must beat in ``i2p eval``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from i2p.api.encoder import Encoder
from i2p.common.checkpoint import CheckpointError, file_sha256, load_checkpoint, load_model_state
from i2p.common.errors import UserError

RANDOM = "random"
PRESETS = ("tiny", "paper")
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
    try:
        cfg = _model().ModelConfig.from_dict(dict(full))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{what}: a model config this version cannot build ({exc})") from None
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


def model_config_for(preset: str) -> Any:
    """A ``ModelConfig`` for a named preset (``tiny`` or ``paper``), for ``random``.

    The preset's default objective has a 2D head whose width comes from a cache; a random
    encoder has no cache, so it is built with the 3D-only objective. Heads and decoder never
    touch the encoder's features, so this changes nothing that is evaluated.
    """
    if preset not in PRESETS:
        raise UserError(f"unknown model preset {preset!r}: choose one of {', '.join(PRESETS)}")
    cfg = getattr(_model().ModelConfig, preset)()
    if cfg.targets != "3d" and not cfg.teacher_channels:
        cfg = dataclasses.replace(cfg, targets="3d")
    return cfg


def _random(preset: str, seed: int):
    """The whole MAE is built under the seed and its encoder kept, so a random encoder has the
    same weights as the encoder of ``i2p pretrain``'s step 0 for the same seed and preset."""
    cfg = model_config_for(preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = _model().build_model(cfg).encoder
    return network, cfg, {"checkpoint": RANDOM, "sha256": None, "preset": preset, "init_seed": seed}


def _from_checkpoint(path: Path):
    state = load_checkpoint(path)
    model_cfg = (state.get("config") or {}).get("model")
    if not isinstance(model_cfg, dict):
        raise CheckpointError(f"checkpoint {path} holds no model config (config['model'])")
    try:
        cfg = _model().ModelConfig.from_dict(dict(model_cfg))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has a model config this version cannot build: {exc}") from None
    network = build_network(cfg, f"checkpoint {path}")
    enc_state = {k[len("encoder."):]: v for k, v in state["model"].items() if k.startswith("encoder.")}
    if not enc_state:
        raise CheckpointError(f"checkpoint {path} holds no encoder weights ('encoder.*')")
    load_model_state(network, enc_state, what=f"checkpoint {path}")
    cache, conf = state.get("cache") or {}, state.get("config") or {}
    info = {"checkpoint": str(path), "sha256": file_sha256(path), "preset": None,
            "epoch": state.get("epoch"), "step": state.get("step"), "seed": conf.get("seed"),
            "cache_teacher": cache.get("teacher"), "teacher_weights_sha256": cache.get("teacher_weights_sha256"),
            "data_fingerprints": cache.get("data_fingerprints"), "trained_with": state.get("i2p_version")}
    if state.get("random_init"):
        info["random_init"] = state["random_init"]
    return network, cfg, info


def _from_export(path: Path):
    from i2p.api.export import read_export

    state, config = read_export(path)
    cfg = config_from_export(config, f"export {path}")
    network = build_network(cfg, f"export {path}")
    load_model_state(network, state, what=f"export {path}")
    prov = config.get("provenance") or {}
    info = {"checkpoint": str(path), "export": str(path), "sha256": config["weights"]["sha256"], "preset": None,
            "epoch": prov.get("epoch"), "step": prov.get("step"), "seed": prov.get("seed"),
            "provenance": prov}
    return network, cfg, info, config


def resolve_source(source: str | Path) -> tuple[str, Path]:
    """``("checkpoint" | "export", path)`` for a path a user gave; one-line error otherwise."""
    path = Path(source)
    hint = "expected a .ckpt file, a run directory holding last.ckpt, or an `i2p export` directory"
    if path.is_dir():
        if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            return "export", path
        if (path / "last.ckpt").is_file():
            return "checkpoint", path / "last.ckpt"
        raise UserError(f"{path} is neither a run directory (no last.ckpt) nor an export directory "
                        f"(no config.json + model.safetensors)")
    if path.is_file():
        if path.name in ("model.safetensors", "config.json"):
            return "export", path.parent
        return "checkpoint", path
    raise UserError(f"{path} does not exist ({hint})")


def export_pooling(source: str | Path) -> str | None:
    """The pooling an export directory records (what :func:`load_encoder` uses when no ``pool``
    is given), read from its ``config.json`` alone; None for any other source, or when the
    file cannot be read (loading then says why)."""
    import json

    from i2p.api.export import CONFIG, FORMAT

    if str(source) == RANDOM:
        return None
    try:
        kind, path = resolve_source(source)
        config = json.loads((path / CONFIG).read_text(encoding="utf-8")) if kind == "export" else None
    except (UserError, OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("format") != FORMAT or not config.get("pooling"):
        return None
    return str(config["pooling"])


def load_encoder(source: str | Path, device: str | torch.device = "auto", *, pool: str | None = None,
                 normalize: bool | None = None, batch_size: int = 32, preset: str = "tiny",
                 seed: int = 0) -> Encoder:
    """Load a pretrained encoder from a checkpoint, a run directory or an export directory
    (or ``"random"``: ``preset`` randomly initialised with ``seed``).

    ``device="auto"`` picks CUDA when torch sees one, else the CPU. ``pool`` (``max`` |
    ``meanmax`` | ``mean_plus_max``) and ``normalize`` default to the export's recorded
    settings, else ``max`` and True (a converted official model records its official pooling
    and ``normalize: false``). The encoder is in eval mode; see :class:`~i2p.api.encoder.Encoder` for its use.
    """
    from i2p.stage3_eval.teacher_encoder import is_teacher_ckpt

    config: dict = {}
    if str(source) == RANDOM:
        network, cfg, info = _random(preset, seed)
    elif is_teacher_ckpt(str(source)):
        raise UserError(f"{source} is a 2D teacher, not a 3D encoder: only `i2p eval svm|fewshot|knn` take it")
    else:
        kind, path = resolve_source(source)
        if kind == "export":
            network, cfg, info, config = _from_export(path)
        else:
            network, cfg, info = _from_checkpoint(path)
    info["model_config"] = cfg.to_dict()
    norm = config.get("normalization", {}).get("enabled", True) if normalize is None else normalize
    return Encoder(network, cfg, pool=pool or config.get("pooling", "max"), normalize=norm,
                   batch_size=batch_size, device=device, info=info)
