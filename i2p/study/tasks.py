"""The two study-specific jobs that are neither ``i2p pretrain`` nor ``i2p eval``.

* :func:`materialize` samples an evaluation data set ONCE per seed into an ``npz:`` file with
  the reader's own seeded sampling (``create_dataset(spec, split, points, seed).load(i)``), so
  the 2 x (variants x seeds) evaluations do not each re-read and re-sample every mesh (about
  45 ms per SHREC'16 mesh on this CPU). Reading the npz back at the same point count returns the
  same clouds (``resample`` of P points to P is the identity; re-normalising a unit-sphere
  cloud changes it only by float rounding).
* :func:`init_encoder` writes the random-init baseline as an ordinary checkpoint: the network
  a pretraining run of the same variant and seed starts from (``torch.manual_seed(seed)`` then
  ``build_model``, exactly as ``i2p pretrain`` does, so the encoder weights are bit-identical to
  that run's step 0 whatever the objective), with BatchNorm statistics re-estimated on the
  evaluation's training shapes as ``i2p eval --ckpt random`` does (see
  ``stage3_eval.features.calibrate_batchnorm``). Unlike ``--ckpt random --preset tiny`` it
  follows any architecture override of the study.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from i2p.common.errors import UserError


def _atomic_savez(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def materialize(spec: str, points: int, seed: int, out: str | Path) -> dict:
    """Sample every usable train/test shape of ``spec`` into ``out`` (npz, train_/test_ layout).
    Unusable shapes are left out (the evaluation would skip them too) and counted."""
    from i2p.common.datasets import create_dataset
    from i2p.common.errors import SampleError

    arrays: dict[str, np.ndarray] = {}
    info = {"spec": spec, "points": points, "seed": seed, "skipped": {}}
    classes = None
    for split in ("train", "test"):
        ds = create_dataset(spec, split, num_points=points, seed=seed)
        if classes is None:
            classes = list(ds.classes)
        elif list(ds.classes) != classes:
            raise UserError(f"data {spec}: train and test splits list different classes")
        pts, labels, ids, skipped = [], [], [], 0
        for i in range(len(ds)):
            try:
                s = ds.load(i)
            except SampleError:
                skipped += 1
                continue
            pts.append(np.asarray(s.points, dtype=np.float32))
            labels.append(int(s.label))
            ids.append(str(s.id))
        if not pts:
            raise UserError(f"data {spec}: no usable {split} shapes")
        arrays[f"{split}_points"] = np.stack(pts)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
        arrays[f"{split}_ids"] = np.asarray(ids, dtype=np.str_)
        info["skipped"][split] = skipped
        info[f"n_{split}"] = len(pts)
    arrays["classes"] = np.asarray(classes, dtype=np.str_)
    _atomic_savez(Path(out), **arrays)
    return info


def init_encoder(caches: list[str], preset: str, overrides: list[str], seed: int, calib_data: str,
                 points: int | None, batch_size: int, out: str | Path, device: str = "cpu") -> dict:
    """Write the random-init checkpoint (see module docstring); returns what it recorded."""
    import torch

    from i2p import __version__
    from i2p.cache.reader import open_many_for_training
    from i2p.common.checkpoint import save_checkpoint
    from i2p.stage2_pretrain import config as pcfg
    from i2p.stage2_pretrain.model import build_model
    from i2p.common.device import resolve_device
    from i2p.stage3_eval.features import calibrate_batchnorm, dataset_clouds
    from i2p.stage3_eval.runner import default_points, open_splits

    cfg = pcfg.resolve(preset, overrides, seed=seed)
    attrs = open_many_for_training(list(caches), cfg.data.points)
    s = attrs[0]["settings"]
    cfg = pcfg.replace_model(cfg, num_points=s["num_points"], views=s["views"],
                             teacher_channels=s["feature_shape"][-1], image_size=s["image_size"])
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # what i2p pretrain does right before build_model
        model = build_model(cfg.model)
    model.to(dev)
    points = points or default_points(calib_data)
    splits = open_splits(calib_data, points, seed, need_test=False)
    used = calibrate_batchnorm(model, dataset_clouds(splits["train"]), batch_size, dev)
    model.cpu()
    record = {"init_seed": cfg.seed, "bn_calibration_shapes": used, "bn_calibration_data": calib_data,
              "bn_calibration_points": points}
    state = {"model": model.state_dict(), "step": 0, "epoch": 0, "config": pcfg.to_dict(cfg),
             "random_init": record, "i2p_version": __version__}
    save_checkpoint(state, out)
    return record
