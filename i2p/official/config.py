"""Official ``model:`` config sections <-> i2p ``ModelConfig``.

The official codes (I2P-MAE @ 7d4e519, Point-M2AE @ 1bdbe05) describe a network by the
``model:`` section of a YAML file (cfgs/pre-training/i2p-mae.yaml, point-m2ae.yaml). A
converted model gets an i2p :class:`ModelConfig` with the same sizes, the official token
merging (``token_merge='official'``) and the official encoder computation
(``eval_mode='official'``); fields that i2p has no use for in an encoder (``local_radius``,
``decoder_up_blocks``, ``clip_config``) are kept under ``extra['official']``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping

from i2p.common.errors import UserError
from i2p.stage2_pretrain.model.config import ModelConfig

SOURCES = ("i2p-mae", "point-m2ae")
OFFICIAL_REPOS = {
    "i2p-mae": ("https://github.com/ZrrSkywalker/I2P-MAE", "7d4e519d34d9a84efdaf3420c3797ecb4e9f1d7f"),
    "point-m2ae": ("https://github.com/ZrrSkywalker/Point-M2AE", "1bdbe05bc13e83dc476660887258abf1e457fed0"),
}

# The published pre-training configs: the model sections of cfgs/pre-training/i2p-mae.yaml
# (I2P-MAE @ 7d4e519) and cfgs/pre-training/point-m2ae.yaml (Point-M2AE @ 1bdbe05).
PAPER_CONFIGS: dict[str, dict[str, Any]] = {
    "i2p-mae": {
        "NAME": "I2P_MAE", "mask_ratio": 0.8,
        "group_sizes": [16, 8, 8], "num_groups": [512, 256, 64],
        "encoder_depths": [5, 5, 5], "encoder_dims": [96, 192, 384], "local_radius": [0, 0, 0],
        "decoder_depths": [1, 1], "decoder_dims": [384, 192], "decoder_up_blocks": [1, 1],
        "drop_path_rate": 0.1, "num_heads": 6,
        "clip_config": {"visual_encoder": "ViT-B/16", "feat_dim": 512},
    },
    "point-m2ae": {
        "NAME": "Point_M2AE", "mask_ratio": 0.8,
        "group_sizes": [16, 8, 8], "num_groups": [512, 256, 64],
        "encoder_depths": [5, 5, 5], "encoder_dims": [96, 192, 384], "local_radius": [0.32, 0.64, 1.28],
        "decoder_depths": [1, 1], "decoder_dims": [384, 192], "decoder_up_blocks": [1, 1],
        "drop_path_rate": 0.1, "num_heads": 6,
    },
}
# The official SVM feature (forward(pts, eval=True)) of each model: I2P-MAE max-pools the
# coarsest LayerNorm'd tokens (models/I2P_MAE.py:383), Point-M2AE adds their mean to the max
# (models/Point_M2AE.py:258).
OFFICIAL_POOLING = {"i2p-mae": "max", "point-m2ae": "mean_plus_max"}
NAMES = {"I2P_MAE": "i2p-mae", "Point_M2AE": "point-m2ae"}
# The official pre-training clouds have 2048 points (``npoints`` in both YAML files).
OFFICIAL_NUM_POINTS = 2048

_REQUIRED = ("group_sizes", "num_groups", "encoder_dims", "encoder_depths", "num_heads")


def paper_config(source: str) -> dict[str, Any]:
    if source not in SOURCES:
        raise UserError(f"unknown source format {source!r}: choose one of {', '.join(SOURCES)}")
    return copy.deepcopy(PAPER_CONFIGS[source])


def read_model_section(path: str | Path) -> dict[str, Any]:
    """The official ``model:`` section from a YAML or JSON file: a whole official config (its
    ``model`` entry is taken), the section itself with or without a ``model:`` key, or a
    fixture ``config.json`` (its ``model_config`` entry)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"model config {path} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"model config {path} cannot be parsed ({first[:200]})") from None
    if isinstance(data, dict):
        for key in ("model", "model_config"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(k in data for k in _REQUIRED):
        missing = [k for k in _REQUIRED if not isinstance(data, dict) or k not in data]
        raise UserError(f"model config {path} is not an official model section (missing {', '.join(missing)})")
    return data


def _ints(section: Mapping[str, Any], key: str) -> tuple[int, ...]:
    value = section[key]
    if not isinstance(value, (list, tuple)) or not value:
        raise UserError(f"official model config: {key} must be a non-empty list, got {value!r}")
    return tuple(int(v) for v in value)


def to_model_config(section: Mapping[str, Any], source: str) -> ModelConfig:
    """An i2p ``ModelConfig`` for the official encoder described by ``section``."""
    try:
        dims = _ints(section, "encoder_dims")
        dec_dims = _ints(section, "decoder_dims") if "decoder_dims" in section else (dims[-1], dims[-2])
        dec_depths = _ints(section, "decoder_depths") if "decoder_depths" in section else (1,) * len(dec_dims)
        num_groups = _ints(section, "num_groups")
        cfg = ModelConfig(
            num_points=max(OFFICIAL_NUM_POINTS, num_groups[0]),
            group_sizes=_ints(section, "group_sizes"), num_groups=num_groups,
            enc_dims=dims, enc_depths=_ints(section, "encoder_depths"),
            num_heads=int(section["num_heads"]), mlp_ratio=4.0,
            drop_path=float(section.get("drop_path_rate", 0.1)),
            embed_hidden=(128, 256), embed_norm="batch",
            dec_dims=dec_dims, dec_depths=dec_depths,
            mask_ratio=float(section.get("mask_ratio", 0.8)),
            mask_mode="saliency" if source == "i2p-mae" else "random",
            targets="3d", lambda_2d=1.0,
            token_merge="official", eval_mode="official",
            official_local_radius=tuple(float(r) for r in section.get("local_radius") or ()),
            extra={"official": {"source": source, **json.loads(json.dumps(dict(section)))}},
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"official model config cannot be translated: {exc}") from None
    return cfg


def to_official_section(cfg: ModelConfig, source: str = "i2p-mae") -> dict[str, Any]:
    """The official ``model:`` section of an i2p config with the official token merging (the
    stored ``extra['official']`` entries that i2p does not model are kept)."""
    need = (("token_merge", cfg.token_merge, "official"), ("embed_hidden", list(cfg.embed_hidden), [128, 256]),
            ("embed_norm", cfg.embed_norm, "batch"), ("mlp_ratio", float(cfg.mlp_ratio), 4.0))
    bad = [f"model.{name}={have!r} (official: {want!r})" for name, have, want in need if have != want]
    if bad:
        raise UserError("this encoder does not have the official architecture, so it has no official layout: "
                        + ", ".join(bad))
    base = paper_config(source)
    base.update({k: v for k, v in (cfg.extra or {}).get("official", {}).items() if k != "source"})
    base.update({
        "NAME": "I2P_MAE" if source == "i2p-mae" else "Point_M2AE",
        "mask_ratio": cfg.mask_ratio, "group_sizes": list(cfg.group_sizes), "num_groups": list(cfg.num_groups),
        "encoder_depths": list(cfg.enc_depths), "encoder_dims": list(cfg.enc_dims),
        "decoder_depths": list(cfg.dec_depths), "decoder_dims": list(cfg.dec_dims),
        "drop_path_rate": cfg.drop_path, "num_heads": cfg.num_heads,
    })
    if any(cfg.official_local_radius):
        base["local_radius"] = list(cfg.official_local_radius)
    if source != "i2p-mae":
        base.pop("clip_config", None)
    return base
