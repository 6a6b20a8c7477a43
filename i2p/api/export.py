"""The export directory: an encoder anyone can load without i2p's training code or pickle.

``DIR/model.safetensors``  the encoder's weights only (no decoder, heads or teacher), keys as
                           in ``HierarchicalEncoder.state_dict()``
``DIR/config.json``        format tag, architecture (the encoder's fields), the whole model
                           config, pooling, normalisation, widths, the weights' sha256 and the
                           provenance (the run, or the converted official checkpoint)
``DIR/README.md``          a generated model card

Why safetensors + json: a ``.ckpt`` is a pickle (``torch.load``), which can run code when
opened; an export is meant to be passed around, so loading it parses json and raw tensors
only. config.json is written last and records the weights' sha256, so a half-copied or
mismatched directory is refused with one line instead of loading wrong weights.

:func:`write_export` is the one writer and :func:`read_export` the one reader: ``i2p export``
writes i2p checkpoints with it, ``i2p convert`` (:mod:`i2p.official.convert`) writes converted
official I2P-MAE / Point-M2AE checkpoints with it (their official pooling, ``normalize=False``)
and reads exports back with it for ``--to i2p-mae|point-m2ae``; :func:`i2p.load_encoder` and
every ``i2p eval`` protocol load through it. Exports carry no timestamp, so exporting the same
checkpoint twice gives byte-identical files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from i2p import __version__
from i2p.common.atomic import atomic_path, write_text
from i2p.common.checkpoint import CheckpointError, file_sha256, strip_prefixes
from i2p.common.errors import UserError

FORMAT = "i2p-encoder-1"
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
NORMALIZATION = {"center": "centroid", "scale": "farthest point on the unit sphere"}


def write_export(encoder_state: Mapping[str, Any], model_config: Any, out_dir: str | os.PathLike,
                 provenance: Mapping[str, Any], *, pooling: str = "max", normalize: bool = True) -> Path:
    """Write an export directory from an encoder's ``state_dict`` and its ``ModelConfig`` (or
    the config's dict); ``provenance`` is stored as given (JSON values). ``pooling`` (``max`` |
    ``meanmax`` | ``mean_plus_max``) and ``normalize`` become the loaded encoder's defaults.
    config.json carries the whole model config (``model_config``: the official switches
    ``token_merge``, ``eval_mode``, ``official_local_radius``, decoder sizes, ``extra``) besides
    the encoder's ``architecture``, so the encoder rebuilds exactly and a converted one can be
    written back in the official layout. The state must fit the architecture exactly (checked
    before anything is written). Returns ``out_dir``."""
    from safetensors.torch import save_file

    from i2p.api.encoder import check_pool, pooled_dim
    from i2p.api.architecture import build_network, config_from_export, encoder_architecture
    from i2p.common.checkpoint import load_model_state

    check_pool(pooling)
    if not hasattr(model_config, "to_dict"):
        model_config = _model_config(model_config)
    arch = encoder_architecture(model_config)
    full = json.loads(json.dumps(model_config.to_dict()))
    cfg = config_from_export({"architecture": arch, "model_config": full}, "export")
    state = {k: v.detach().cpu().contiguous().clone() for k, v in strip_prefixes(encoder_state).items()}
    load_model_state(build_network(cfg, "export"), state, what="encoder state for the export")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).unlink(missing_ok=True)  # an interrupted rewrite must not look complete
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    config = {
        "format": FORMAT, "i2p_version": __version__, "architecture": arch, "model_config": full,
        "pooling": pooling, "normalization": {"enabled": bool(normalize), **NORMALIZATION},
        "embedding_dim": pooled_dim(arch["enc_dims"], pooling),
        "point_feature_dim": int(sum(arch["enc_dims"])), "min_points": int(arch["num_groups"][0]),
        "weights": {"file": WEIGHTS, "sha256": file_sha256(out / WEIGHTS),
                    "parameters": int(sum(v.numel() for v in state.values() if v.is_floating_point()))},
        "provenance": json.loads(json.dumps(dict(provenance), default=str)),
    }
    write_text(out / CARD, model_card(config))
    write_text(out / CONFIG, json.dumps(config, indent=2) + "\n")
    return out


def _model_config(d: Mapping[str, Any]) -> Any:
    from i2p.stage2_pretrain.model import ModelConfig

    try:
        return ModelConfig.from_dict(dict(d))
    except (TypeError, ValueError) as exc:
        raise UserError(f"model config for the export cannot be built: {exc}") from None


def read_export(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(state_dict, config)`` of an export directory; json and safetensors only."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(path)
    try:
        config = json.loads((root / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"export {root}: cannot read {CONFIG} ({exc})") from None
    if isinstance(config, dict) and config.get("format") == "i2p.encoder/1":  # development builds' `i2p convert`
        raise CheckpointError(f"export {root} was written by an earlier `i2p convert` (format 'i2p.encoder/1'): "
                              f"convert the official checkpoint again")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"export {root}: {CONFIG} is not an i2p encoder export (format {FORMAT!r} expected)")
    weights = root / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"export {root}: {WEIGHTS} is missing")
    if file_sha256(weights) != (config.get("weights") or {}).get("sha256"):
        raise CheckpointError(f"export {root}: {WEIGHTS} does not match the sha256 in {CONFIG} (partial copy?)")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"export {root}: {WEIGHTS} cannot be read ({exc})") from None
    return state, config


def _fmt(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return " / ".join(map(str, v))
    return "-" if v is None else str(v)


def model_card(config: Mapping[str, Any]) -> str:
    """The export's README.md: what it is, how to use it, where it came from."""
    a, p, w = config["architecture"], config["provenance"], config["weights"]
    rows = [("levels", len(a["enc_dims"])), ("token centres per level", a["num_groups"]),
            ("points per group", a["group_sizes"]), ("token widths", a["enc_dims"]),
            ("transformer depths", a["enc_depths"]), ("heads", a["num_heads"]),
            ("parameters", f"{w['parameters']:,}"), ("trained on clouds of", f"{a['num_points']} points"),
            ("minimum points per cloud", config["min_points"]),
            ("embedding", f"{config['embedding_dim']} ({config['pooling']}-pooled coarsest tokens)"),
            ("point features", f"{config['point_feature_dim']} (3-NN interpolation, levels concatenated)"),
            ("normalisation inside", "centroid + unit sphere" if config["normalization"]["enabled"] else "off"),
            ("token merging / encoder computation", f"{a.get('token_merge', 'i2p')} / {a.get('eval_mode', 'i2p')}")]
    official = a.get("eval_mode") == "official"
    writer = (f"converted by `i2p convert` from {p['converted_from']}" if p.get("converted_from")
              else "exported by `i2p export`")
    lines = [f"# i2p encoder ({p.get('source', 'unknown source')})", "",
             "A hierarchical I2P-MAE point-cloud encoder (3D masked autoencoder distilled from a frozen 2D",
             f"model), {writer} (i2p {config['i2p_version']}). Encoder weights only: no",
             "decoder, no reconstruction heads, no 2D teacher. Loading reads json and safetensors only.", "",
             "## Use", "", "```python", "import i2p", "enc = i2p.load_encoder(\"THIS_DIRECTORY\")",
             "z = enc.embed(points)            # [B, N, 3] -> [B, D]  (numpy or torch, same kind out)",
             "f = enc.point_features(points)   # [B, N, 3] -> [B, N, D']", "```", "",
             "Command line: `i2p embed --ckpt THIS_DIRECTORY --data SPEC --split test --out emb.npz`.", "",
             "## Model", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows]
    lines += ["", "## Provenance", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in p.items() if not isinstance(v, dict)]
    lines += [f"| {k} | {_fmt(json.dumps(v, sort_keys=True))} |" for k, v in p.items() if isinstance(v, dict)]
    lines += ["", "## Files", "", f"- `{w['file']}` sha256 `{w['sha256']}`", f"- `{CONFIG}`: everything above, machine-readable",
              "", "## Limitations", ""]
    if official:
        lines += ["- The encoder computes what the official code's `forward(points, eval=True)` computes",
                  "  (`eval_mode: official`, see docs/FIDELITY.md); `i2p eval` keeps its stored BatchNorm",
                  "  statistics, as the official evaluation does. Normalisation inside is off: give it",
                  "  centred unit-sphere clouds, as the official data loaders do."]
    else:
        lines += ["- The BatchNorm statistics of the token embeddings (with `embed_norm: batch`) are those of",
                  "  pre-training, on masked, scale-augmented clouds, unless `bn_calibration` appears above.",
                  "  `i2p eval` re-estimates them on each protocol's training shapes; `enc.calibrate(clouds)`",
                  "  does the same for your data (`i2p export --calibrate SPEC` stores calibrated statistics)."]
    lines += ["- Evaluate before relying on it: `i2p eval svm --ckpt THIS_DIRECTORY --data SPEC`."]
    return "\n".join(lines) + "\n"
