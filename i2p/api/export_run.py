"""``i2p export`` as a function: load a source (checkpoint, run or export directory), optionally
re-estimate its BatchNorm statistics on a data set, and write the export with its provenance."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from i2p.api.calibration import dataset_clouds
from i2p.api.export import write_export
from i2p.api.loading import load_encoder


def provenance_of(info: Mapping[str, Any]) -> dict:
    """Provenance for an export from an encoder's ``info`` (see ``load_encoder``)."""
    if info.get("export"):
        return dict(info.get("provenance") or {})
    if info.get("checkpoint") == "random":
        return {"source": "random init", "preset": info.get("preset"), "seed": info.get("init_seed")}
    keys = ("epoch", "step", "seed", "cache_teacher", "teacher_weights_sha256", "data_fingerprints", "trained_with")
    prov = {"source": "i2p pretrain checkpoint", "checkpoint": info.get("checkpoint"),
            "checkpoint_sha256": info.get("sha256"), **{k: info.get(k) for k in keys}}
    if info.get("random_init"):
        prov["random_init"] = info["random_init"]
    return prov


def export_encoder(source: str, out_dir: str | os.PathLike, *, pool: str | None = None,
                   calibrate: str | None = None, points: int | None = None, seed: int = 0,
                   batch_size: int = 32, device: str = "auto") -> Path:
    """``i2p export``: load ``source`` (checkpoint, run or export directory) and write an
    export. ``calibrate=SPEC`` first re-estimates BatchNorm statistics on up to 512 shapes of
    SPEC's train split (labels unused), as ``i2p eval`` does, and records it."""
    enc = load_encoder(source, device, pool=pool, batch_size=batch_size, seed=seed)
    prov = provenance_of(enc.info)
    if calibrate:
        from i2p.common.datasets import create_dataset

        n = int(points or enc.config.num_points)
        used = enc.calibrate(dataset_clouds(create_dataset(calibrate, "train", num_points=n, seed=seed)))
        prov["bn_calibration"] = {"data": calibrate, "split": "train", "points": n, "shapes": used, "seed": seed}
    return write_export(enc.state_dict(), enc.config, out_dir, prov, pooling=enc.pool, normalize=enc.normalize)
