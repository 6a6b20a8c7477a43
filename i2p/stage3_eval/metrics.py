"""Classification metrics every protocol reports, the way ModelNet40 papers do.

Overall accuracy weights every test shape equally, so on an unbalanced test set (ModelNet40's
classes hold 20 to 100 test shapes) it is dominated by the large classes; mean per-class
accuracy weights every class equally. Papers print both ("OA" and "mAcc"), so every result does.

Conventions, fixed here so a program reading ``result.json`` can rely on them:

- the confusion matrix counts shapes, rows = true class, columns = predicted class, in the
  order of ``classes`` (the data set's class list, extended by ``"<index>"`` for any label
  beyond it);
- a class with no test shape has no accuracy: it is left out of ``per_class_accuracy`` and of
  the mean (it still has its all-zero row in the matrix), and ``per_class_support`` says how
  many test shapes each reported class had.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def class_names(classes: Sequence[str] | None, n: int) -> list[str]:
    """``classes`` padded to ``n`` names with the label index as text."""
    names = [str(c) for c in (classes or [])]
    return names + [str(i) for i in range(len(names), n)]


def confusion_matrix(y_true, y_pred, n_classes: int | None = None) -> np.ndarray:
    """Integer counts [n, n]: ``cm[t, p]`` shapes of true class t predicted as p. ``n`` covers
    every label seen (and at least ``n_classes``); negative labels are an error."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"{len(t)} true labels but {len(p)} predictions")
    if (t < 0).any() or (p < 0).any():
        raise ValueError("labels must be >= 0")
    n = int(max(n_classes or 0, t.max(initial=-1) + 1, p.max(initial=-1) + 1, 1))
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall of each class (diagonal / row sum); NaN for a class with no test shape."""
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def mean_class_accuracy(y_true, y_pred) -> float:
    """Mean over the classes present in ``y_true`` of their accuracy; NaN when empty."""
    if len(np.asarray(y_true)) == 0:
        return float("nan")
    acc = per_class_accuracy(confusion_matrix(y_true, y_pred))
    return float(np.nanmean(acc))


def classification_metrics(y_true, y_pred, classes: Sequence[str] | None = None) -> dict:
    """``accuracy``, ``mean_class_accuracy``, ``per_class_accuracy`` (name -> acc),
    ``per_class_support`` (name -> test shapes), ``confusion_matrix`` (list of lists) and the
    class order ``classes`` it is written in."""
    cm = confusion_matrix(y_true, y_pred, len(classes or []))
    names = class_names(classes, len(cm))
    acc = per_class_accuracy(cm)
    support = cm.sum(axis=1)
    total = int(support.sum())
    present = support > 0
    return {
        "accuracy": float(np.trace(cm) / total) if total else float("nan"),
        "mean_class_accuracy": float(acc[present].mean()) if present.any() else float("nan"),
        "per_class_accuracy": {names[i]: float(acc[i]) for i in np.flatnonzero(present)},
        "per_class_support": {names[i]: int(support[i]) for i in np.flatnonzero(present)},
        "confusion_matrix": cm.tolist(),
        "classes": names,
    }
