"""Linear-SVM probe on frozen features (the paper's headline transfer number).

Classifier: ``sklearn.svm.SVC(kernel="linear")`` (libsvm), not ``LinearSVC`` (liblinear).
Why: the paper's fixed C values (0.0093 ModelNet40, 0.018 ScanObjectNN OBJ-BG) belong to a
specific objective. libsvm's linear SVC minimises the plain hinge loss with an unpenalised
bias, one-vs-one; liblinear minimises the squared hinge with a penalised bias, one-vs-rest. The
same number C means a different amount of regularisation in the two, so reporting "accuracy at
the paper's C" is only meaningful with the hinge/libsvm formulation used in the
Point-BERT/Point-M2AE evaluation lineage. ``solver="liblinear"`` is available for very large
feature sets where libsvm is too slow (it is then said in the result).

Feature standardisation: none. The encoder's tokens are LayerNorm'd, so the dimensions are
already on one scale, and the paper's C was tuned on the raw pooled features: standardising
would silently change what the fixed C means. The same raw features are used for the
cross-validated C, so the two numbers are directly comparable.

``C="auto"`` picks C from a log grid by stratified k-fold cross-validation on the TRAIN split
only: :func:`choose_C` never receives test data, so test labels cannot influence the choice.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import SVC, LinearSVC

from i2p.common.errors import UserError

PAPER_C = {"modelnet40": 0.0093, "modelnet40-h5": 0.0093, "scanobjectnn": 0.018}
DEFAULT_PAPER_C = 0.0093
# 1e-4 .. 1e1 in half decades: brackets both paper values with room on either side.
DEFAULT_GRID = tuple(float(f"{10 ** e:.3g}") for e in np.arange(-4.0, 1.01, 0.5))
SOLVERS = ("svc", "liblinear")


def paper_C_for(spec: str) -> float:
    """The paper's fixed C for the data kind of ``spec`` (0.0093 unless ScanObjectNN)."""
    kind = spec.split(":", 1)[0] if isinstance(spec, str) else ""
    return PAPER_C.get(kind, DEFAULT_PAPER_C)


def make_classifier(C: float, solver: str = "svc", seed: int = 0):
    if not (isinstance(C, (int, float)) and math.isfinite(C) and C > 0):
        raise UserError(f"SVM C must be a positive number (got {C!r})")
    if solver == "svc":
        # A bigger kernel cache than sklearn's 200 MB: ModelNet40's 9843 shapes need ~0.8 GB.
        return SVC(C=float(C), kernel="linear", cache_size=1024)
    if solver == "liblinear":
        return LinearSVC(C=float(C), dual="auto", max_iter=20000, random_state=seed)
    raise UserError(f"unknown SVM solver {solver!r}: choose one of {', '.join(SOLVERS)}")


def fit_predict(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, C: float,
                solver: str = "svc", seed: int = 0) -> np.ndarray:
    """Train on (X_train, y_train), return predictions for X_test."""
    y_train = np.asarray(y_train)
    if len(np.unique(y_train)) < 2:
        # sklearn refuses one-class problems; the only sensible prediction is that class.
        return np.full(len(X_test), y_train[0] if len(y_train) else -1)
    clf = make_classifier(C, solver, seed)
    clf.fit(np.asarray(X_train, dtype=np.float64), y_train)
    return clf.predict(np.asarray(X_test, dtype=np.float64))


def _fold_score(X, y, train_idx, val_idx, C, solver, seed):
    pred = fit_predict(X[train_idx], y[train_idx], X[val_idx], C, solver, seed)
    return float(np.mean(pred == y[val_idx]))


def choose_C(X_train: np.ndarray, y_train: np.ndarray, grid: Sequence[float] = DEFAULT_GRID,
             folds: int = 5, seed: int = 0, solver: str = "svc", n_jobs: int | None = None) -> dict:
    """Cross-validate C on the training features only.

    Returns ``{"C": best, "folds": k, "grid": [{"C", "cv_mean", "cv_std"}...], "method"}``.
    The (C, fold) fits run in parallel with joblib (``n_jobs``; libsvm itself is
    single-threaded, ~20 s per ModelNet40-sized fit). The best C has the highest mean fold accuracy; ties go to the SMALLER C (stronger
    regularisation generalises at least as well when the folds cannot tell them apart).
    When some class has < 2 training shapes, k-fold is impossible: ``method="fallback"`` and
    ``C=None`` tell the caller to use its fixed C.
    """
    from joblib import Parallel, delayed

    X = np.asarray(X_train, dtype=np.float64)
    y = np.asarray(y_train)
    _, counts = np.unique(y, return_counts=True)
    k = int(min(folds, counts.min())) if len(counts) else 0
    if k < 2 or len(counts) < 2:
        return {"C": None, "folds": k, "grid": [], "method": "fallback",
                "reason": "fewer than 2 training shapes in some class: cannot cross-validate"}
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    splits = list(splitter.split(X, y))
    jobs = [(c, tr, va) for c in grid for tr, va in splits]
    scores = Parallel(n_jobs=n_jobs)(delayed(_fold_score)(X, y, tr, va, c, solver, seed) for c, tr, va in jobs)
    table = []
    for i, c in enumerate(grid):
        s = np.asarray(scores[i * k:(i + 1) * k])
        table.append({"C": float(c), "cv_mean": float(s.mean()), "cv_std": float(s.std())})
    best = max(table, key=lambda r: (round(r["cv_mean"], 12), -r["C"]))
    return {"C": best["C"], "folds": k, "grid": table, "method": "stratified-kfold", "seed": seed}


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true = np.asarray(y_true)
    return float(np.mean(np.asarray(y_pred) == y_true)) if len(y_true) else float("nan")


def run_svm(X_train, y_train, X_test, y_test, C: str | float = "auto", paper_C: float = DEFAULT_PAPER_C,
            folds: int = 5, seed: int = 0, solver: str = "svc", grid: Sequence[float] = DEFAULT_GRID,
            n_jobs: int | None = -1) -> dict:
    """The SVM protocol on precomputed features.

    Headline ``accuracy`` is at the chosen C (cross-validated when ``C="auto"``, else the given
    value); ``accuracy_paper_C`` is always reported beside it at the paper's fixed C.
    ``predictions`` (headline model) is returned for the confusion matrix.
    """
    selection = None
    if isinstance(C, str):
        if C != "auto":
            try:
                C = float(C)
            except ValueError:
                raise UserError(f"--C must be 'auto' or a positive number (got {C!r})") from None
    if C == "auto":
        selection = choose_C(X_train, y_train, grid=grid, folds=folds, seed=seed, solver=solver, n_jobs=n_jobs)
        chosen = selection["C"] if selection["C"] is not None else paper_C
    else:
        chosen = float(C)
    pred = fit_predict(X_train, y_train, X_test, chosen, solver, seed)
    out = {
        "accuracy": accuracy(y_test, pred),
        "C": chosen,
        "C_mode": "auto" if selection is not None else "fixed",
        "C_selection": selection,
        "paper_C": paper_C,
        "solver": solver,
        "standardize": False,
        "predictions": pred,
    }
    if math.isclose(chosen, paper_C):
        out["accuracy_paper_C"] = out["accuracy"]
    else:
        out["accuracy_paper_C"] = accuracy(y_test, fit_predict(X_train, y_train, X_test, paper_C, solver, seed))
    return out
