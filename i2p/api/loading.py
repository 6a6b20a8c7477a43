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

from i2p.api.architecture import (  # noqa: F401  (re-exported: the loader's public helpers)
    ENCODER_FIELDS, LATER_FIELDS, build_network, config_from_architecture, config_from_export, encoder_architecture,
    _model, model_config_from_dict)
from i2p.api.encoder import DEFAULT_POOL, Encoder
from i2p.common.checkpoint import CheckpointError, file_sha256, load_checkpoint, load_model_state, trained_weights
from i2p.common.errors import UserError

RANDOM = "random"
PRESETS = ("tiny", "paper")
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
    cfg = model_config_from_dict(model_cfg, f"checkpoint {path}")
    network = build_network(cfg, f"checkpoint {path}")
    weights = trained_weights(state)
    enc_state = {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}
    if not enc_state:
        raise CheckpointError(f"checkpoint {path} holds no encoder weights ('encoder.*')")
    load_model_state(network, enc_state, what=f"checkpoint {path}")
    cache, conf = state.get("cache") or {}, state.get("config") or {}
    info = {"checkpoint": str(path), "sha256": file_sha256(path), "preset": None,
            "epoch": state.get("epoch"), "step": state.get("step"), "seed": conf.get("seed"),
            "cache_teacher": cache.get("teacher"), "teacher_weights_sha256": cache.get("teacher_weights_sha256"),
            "data_fingerprints": cache.get("data_fingerprints"), "trained_with": state.get("i2p_version"),
            # which weights these are: the run's weight average (optim.ema_decay) or its last ones
            "weights": "last" if weights is state["model"] else "ema"}
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

    ``device="auto"`` picks CUDA when torch sees one, else the CPU. ``pool`` (``levels`` |
    ``max`` | ``meanmax`` | ``mean_plus_max`` | ``mean``) and ``normalize`` default to the
    export's recorded settings, else ``levels`` (``DEFAULT_POOL``) and True (a converted
    official model records its official pooling and ``normalize: false``). The encoder is in eval mode; see :class:`~i2p.api.encoder.Encoder` for its use.
    """
    config: dict = {}
    if str(source) == RANDOM:
        network, cfg, info = _random(preset, seed)
    elif str(source).startswith("teacher:"):  # stage 3's TeacherEncoder (the ceiling), not an encoder
        raise UserError(f"{source} is a 2D teacher, not a 3D encoder: only `i2p eval svm|fewshot|knn` take it")
    else:
        kind, path = resolve_source(source)
        if kind == "export":
            network, cfg, info, config = _from_export(path)
        else:
            network, cfg, info = _from_checkpoint(path)
    info["model_config"] = cfg.to_dict()
    norm = config.get("normalization", {}).get("enabled", True) if normalize is None else normalize
    return Encoder(network, cfg, pool=pool or config.get("pooling", DEFAULT_POOL), normalize=norm,
                   batch_size=batch_size, device=device, info=info)
