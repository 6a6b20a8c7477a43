"""Part-segmentation scores, the standard ShapeNetPart protocol (PointNet++ / Point-M2AE).

* A prediction is made among the parts of the shape's own category only
  (:func:`predict_in_category`): the category is given, as in the benchmark.
* A shape's IoU is the mean over ITS CATEGORY's parts of |pred ∩ true| / |pred ∪ true|; a part
  absent from both prediction and truth counts as IoU 1 (nothing to find, nothing wrongly found).
* Instance mIoU: the mean over all test shapes. Class mIoU: the mean over categories of the
  mean shape IoU within the category (categories with no test shape are left out).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def predict_in_category(logits: np.ndarray, label: int, class_parts: Sequence[Sequence[int]]) -> np.ndarray:
    """[N, num_parts] logits of one shape -> [N] global part ids, argmax over its category's parts."""
    allowed = np.asarray(class_parts[label], dtype=np.int64)
    return allowed[np.asarray(logits)[:, allowed].argmax(axis=1)]


def shape_iou(pred: np.ndarray, true: np.ndarray, parts: Sequence[int]) -> float:
    """Mean IoU over ``parts`` of one shape; absent from both = 1."""
    pred, true = np.asarray(pred), np.asarray(true)
    ious = []
    for p in parts:
        inter = np.sum((pred == p) & (true == p))
        union = np.sum((pred == p) | (true == p))
        ious.append(1.0 if union == 0 else inter / union)
    return float(np.mean(ious))


def partseg_metrics(preds: Sequence[np.ndarray], trues: Sequence[np.ndarray], labels: Sequence[int],
                    class_parts: Sequence[Sequence[int]], classes: Sequence[str]) -> dict:
    """``instance_miou``, ``class_miou``, ``per_category_iou`` {name: IoU or None},
    ``per_category_shapes``, ``point_accuracy`` and ``shape_ious`` (one per shape, in order)."""
    if not len(preds):
        raise ValueError("no shapes to score")
    ious = [shape_iou(p, t, class_parts[int(c)]) for p, t, c in zip(preds, trues, labels)]
    labels = np.asarray(labels, dtype=np.int64)
    per_cat: dict[str, float | None] = {}
    support: dict[str, int] = {}
    for k, name in enumerate(classes):
        sel = [iou for iou, c in zip(ious, labels) if c == k]
        per_cat[name] = float(np.mean(sel)) if sel else None
        support[name] = len(sel)
    scored = [v for v in per_cat.values() if v is not None]
    correct = sum(int(np.sum(np.asarray(p) == np.asarray(t))) for p, t in zip(preds, trues))
    total = sum(len(t) for t in trues)
    return {"instance_miou": float(np.mean(ious)), "class_miou": float(np.mean(scored)),
            "per_category_iou": per_cat, "per_category_shapes": support,
            "point_accuracy": correct / max(1, total), "shape_ious": ious}
