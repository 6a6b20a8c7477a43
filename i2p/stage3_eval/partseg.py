"""``i2p eval partseg``: part segmentation, the third downstream task (ShapeNetPart protocol).

Data: any reader with part labels (``shapenetpart:DIR``, ``builtin:primitives``). Train on the
train split; select the epoch on ``val`` — the data's own val split when it has one
(ShapeNetPart), else a seeded, stratified slice of train (``val_frac``) — and score the test
split once with the selected weights. The encoder comes from the same loader as every other
protocol (:func:`runner.encoder_for`: run checkpoint, run or export directory, converted
official export, ``random``), BatchNorm statistics re-estimated on the training shapes; the
head is :class:`~i2p.stage3_eval.partseg_model.PartSegmenter`. Scores follow
:mod:`~i2p.stage3_eval.partseg_metrics` (class and instance mIoU, per-category IoU).

Beside ``result.json`` the run writes ``partseg_samples.npz``: a few test shapes per category
with their points, true and predicted parts, for ``i2p viz partseg`` and the HTML report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from i2p.common.atomic import atomic_path
from i2p.common.errors import UserError
from i2p.stage3_eval.partseg_train import PartsegRecipe

SAMPLES_NPZ = "partseg_samples.npz"
SAMPLES_PER_CATEGORY = 3
METRICS = ("instance_miou", "class_miou", "point_accuracy")


def load_part_clouds(ds, indices=None, progress: bool = True):
    """``(points [n,P,3] f32, parts [n,P] i16, labels [n] i64, ids, skipped)`` of ``ds`` (int16
    parts: ShapeNetPart's train split is 14k x 2048 labels)."""
    from i2p.stage3_eval.finetune import usable_samples

    samples, skipped = usable_samples(ds, indices, progress)
    return (np.stack([s.points for s in samples]).astype(np.float32),
            np.stack([s.parts for s in samples]).astype(np.int16),
            np.asarray([s.label for s in samples], np.int64), [s.id for s in samples], skipped)


def open_part_data(spec: str, points: int, seed: int, val_frac: float, progress: bool):
    """(datasets by split, arrays by split {train, val, test}, skipped by split, val source)."""
    from i2p.common.datasets import create_dataset
    from i2p.stage3_eval.finetune import carve_validation

    train = create_dataset(spec, "train", num_points=points, seed=seed)
    if not train.has_parts:
        raise UserError(f"data {spec} has no part labels: part segmentation needs shapenetpart:DIR or "
                        "builtin:primitives")
    if not train.has_split("test"):
        raise UserError(f"data {spec} has no test split")
    splits = {"train": train, "test": create_dataset(spec, "test", num_points=points, seed=seed)}
    own_val = train.has_split("val")
    if own_val:
        splits["val"] = create_dataset(spec, "val", num_points=points, seed=seed)
    arrays, skipped = {}, {}
    for name, ds in splits.items():
        *arr, _ids, sk = load_part_clouds(ds, progress=progress)
        arrays[name], skipped[name] = tuple(arr), len(sk)
        if name == "test":
            arrays["test_ids"] = _ids
    if not own_val:
        tr, va = carve_validation(arrays["train"][2], val_frac, seed)
        arrays["val"] = tuple(a[va] for a in arrays["train"])
        arrays["train"] = tuple(a[tr] for a in arrays["train"])
    return splits, arrays, skipped, ("val split" if own_val else f"{val_frac:g} of train (seeded)")


def write_samples(out: Path, test: tuple, ids, preds, classes, part_names, per_category: int) -> Path:
    """A few test shapes per category with true and predicted parts (for the viz)."""
    pts, parts, labels = test
    pick = [i for c in range(len(classes)) for i in np.flatnonzero(labels == c)[:per_category]]
    path = out / SAMPLES_NPZ
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, points=pts[pick], true=parts[pick], pred=np.stack([preds[i] for i in pick]),
                 labels=labels[pick], ids=np.asarray([ids[i] for i in pick], dtype=str),
                 classes=np.asarray(classes, dtype=str), part_names=np.asarray(part_names, dtype=str))
    return path


def run(ckpt: str, data: str, out: str, recipe: PartsegRecipe, *, seed: int = 0, device: str = "auto",
        resume: bool = True, progress: bool = True, val_frac: float = 0.1) -> dict:
    """Train and score; writes ``result.json`` (and ``result.md``) into ``out``."""
    import torch

    from i2p.common.device import resolve_device
    from i2p.common.geometry import stable_seed
    from i2p.stage3_eval import partseg_train as pt
    from i2p.stage3_eval.features import dataset_clouds
    from i2p.stage3_eval.partseg_model import PartSegmenter
    from i2p.stage3_eval.report import write_result
    from i2p.stage3_eval.runner import _base, encoder_for
    from i2p.stage3_eval.teacher_encoder import is_teacher_ckpt

    if is_teacher_ckpt(ckpt):
        raise UserError("part segmentation needs a 3D network: --ckpt teacher:NAME works with svm, fewshot and knn")
    if recipe.epochs < 1 or recipe.batch_size < 2:
        raise UserError(f"--epochs must be >= 1 and --batch-size >= 2 (got {recipe.epochs}, {recipe.batch_size})")
    splits, arrays, skipped, val_source = open_part_data(data, recipe.points, seed, val_frac, progress)
    ds = splits["train"]
    dev = resolve_device(device)
    torch.manual_seed(stable_seed(seed, "head"))
    enc, info = encoder_for(ckpt, dev, recipe.arch, seed, lambda: dataset_clouds(ds), recipe.batch_size)
    enc.to("cpu")
    enc_dims = tuple(info["model_config"]["enc_dims"])
    if recipe.local_radii and len(recipe.local_radii) != len(enc_dims):
        raise UserError(f"local radii need {len(enc_dims)} values (one per level), got {len(recipe.local_radii)}")
    model = PartSegmenter(enc.network, enc_dims, len(ds.classes), len(ds.part_names), recipe.head, recipe.local_radii)
    settings = {**recipe.settings(), "checkpoint": ckpt, "data": data, "seed": seed, "val": val_source}
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    state = pt.train(model, arrays, outp, recipe, ds.class_parts, ds.classes, seed=seed, device=dev,
                     settings=settings, resume=resume, progress=progress)
    preds = pt.predict(model, arrays["test"][0], arrays["test"][2], ds.class_parts, recipe.batch_size, dev)
    m = pt.partseg_metrics(preds, list(arrays["test"][1]), arrays["test"][2], ds.class_parts, ds.classes)
    samples = write_samples(outp, arrays["test"], arrays["test_ids"], preds, ds.classes, ds.part_names,
                            SAMPLES_PER_CATEGORY)
    result = {**_base("partseg", data, info, seed, {**settings, "device": str(dev)}, splits),
              **{k: m[k] for k in METRICS}, "per_category_iou": m["per_category_iou"],
              "per_category_shapes": m["per_category_shapes"], "metrics": list(METRICS),
              "selected_epoch": state["best_epoch"], "selection_score": state["best"],
              "selection_metric": "val instance_miou", "history": state["history"],
              "n_train": int(len(arrays["train"][2])), "n_val": int(len(arrays["val"][2])),
              "n_test": int(len(arrays["test"][2])), "skipped": skipped,
              "finetuned_checkpoint": str(outp / "best.ckpt"), "samples": str(samples)}
    return write_result(out, result)
