"""N-way K-shot few-shot classification on frozen features.

An episode (fold ``f``) uses ``numpy.random.default_rng([seed, f])``, so every fold is
reproducible on its own and independent of how many folds run. It draws ``way`` classes among
those with enough shapes, then per class ``shot`` support and ``query`` query shapes, disjoint.
Two pools: ``episodes_from="split"`` (Point-BERT's protocol: support from the train split, query
from the test split) or ``"all"`` (train and test pooled, support and query drawn disjointly:
for small data sets such as SHREC'16 whose test split is too small for 20 queries per class).
A linear SVM (see :mod:`i2p.stage3_eval.svm`) is fitted on the support features of each
episode and scored on its query; the report gives per-fold accuracy and mean ± POPULATION std
(``ddof=0``, as ``numpy.std`` and the few-shot literature compute it over the 10 folds).

Mean per-class accuracy, which the other protocols report beside overall accuracy, is taken per
episode over the episode's ``way`` classes and then averaged over episodes like accuracy
(``mean_class_accuracy`` ± ``mean_class_accuracy_std``). A sampled episode has exactly
``query`` shapes per class, so the two agree unless shapes were skipped or a fold file is
unbalanced; it is reported anyway so every protocol's result has the same keys. The per-class
accuracies and the confusion matrix pool every episode's queries in the data set's own labels:
a class's accuracy there depends on which classes it happened to face, so read them as where
the errors are, not as a per-class benchmark. Point-BERT's fold files number each fold's classes
0..way-1, so they give no per-class view (only the per-episode mean-class accuracy).

Point-BERT's released ModelNetFewshot folds (``DIR/{way}way_{shot}shot/{fold}.pkl``) can be
evaluated instead of sampled episodes; see :func:`read_fold_file`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from i2p.common.checkpoint import file_sha256
from i2p.common.errors import SampleError, UserError
from i2p.common.geometry import normalize_unit_sphere, resample, stable_seed
from i2p.stage3_eval.metrics import mean_class_accuracy
from i2p.stage3_eval.svm import accuracy, choose_C, fit_predict

MODES = ("linear", "finetune")


def _eligible(labels: np.ndarray, need: int) -> tuple[list[int], int]:
    """Classes with >= need shapes; label -1 marks an unusable shape and never counts."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels[labels >= 0], return_counts=True)
    ok = [int(c) for c, n in zip(classes, counts) if n >= need]
    return ok, int(counts.max()) if len(counts) else 0


def check_feasible(support_labels, way: int, shot: int, query: int, query_labels=None) -> list[int]:
    """Classes usable for episodes; raises a UserError with the numbers when fewer than ``way``."""
    if way < 2 or shot < 1 or query < 1:
        raise UserError(f"few-shot needs way >= 2, shot >= 1, query >= 1 (got {way}/{shot}/{query})")
    head = f"{way}-way {shot}-shot with {query} query"
    if query_labels is None:
        need = shot + query
        ok, mx = _eligible(support_labels, need)
        if len(ok) < way:
            raise UserError(f"{head} needs {need} shapes in {way} classes; only {len(ok)} classes "
                            f"have >= {need} (max {mx})")
        return ok
    ok_s, mx_s = _eligible(support_labels, shot)
    ok_q, mx_q = _eligible(query_labels, query)
    ok = sorted(set(ok_s) & set(ok_q))
    if len(ok) < way:
        raise UserError(f"{head} needs {shot} train and {query} test shapes in {way} classes; only "
                        f"{len(ok)} classes have both (max {mx_s} train, {mx_q} test per class; "
                        f"try --episodes-from all or a smaller --query)")
    return ok


def sample_episode(support_labels, way: int, shot: int, query: int, seed: int, fold: int,
                   query_labels=None) -> dict:
    """Indices of one episode. With ``query_labels`` None both sets index ``support_labels``
    (one pool, disjoint draws); otherwise ``query`` indexes ``query_labels``.
    Returns ``{"classes", "support", "query", "support_y", "query_y"}`` with episode labels
    0..way-1 in the order the classes were drawn."""
    s_lab = np.asarray(support_labels)
    q_lab = s_lab if query_labels is None else np.asarray(query_labels)
    ok = check_feasible(s_lab, way, shot, query, query_labels)
    rng = np.random.default_rng([int(seed), int(fold)])
    classes = [int(c) for c in rng.choice(np.asarray(ok), size=way, replace=False)]
    sup, qry, sup_y, qry_y = [], [], [], []
    for new, c in enumerate(classes):
        if query_labels is None:
            idx = rng.permutation(np.flatnonzero(s_lab == c))
            s_idx, q_idx = idx[:shot], idx[shot:shot + query]
        else:
            s_idx = rng.permutation(np.flatnonzero(s_lab == c))[:shot]
            q_idx = rng.permutation(np.flatnonzero(q_lab == c))[:query]
        sup.extend(int(i) for i in s_idx)
        qry.extend(int(i) for i in q_idx)
        sup_y += [new] * len(s_idx)
        qry_y += [new] * len(q_idx)
    return {"classes": classes, "support": np.asarray(sup), "query": np.asarray(qry),
            "support_y": np.asarray(sup_y), "query_y": np.asarray(qry_y)}


def _fit_episode(Xs, ys, Xq, yq, C, seed) -> tuple[float, float, np.ndarray]:
    """(accuracy, C used, query predictions) of one episode's linear SVM."""
    if C == "auto":
        sel = choose_C(Xs, ys, folds=5, seed=seed)  # support only; k shrinks to the smallest class
        C = sel["C"] if sel["C"] is not None else 0.0093
    pred = np.asarray(fit_predict(Xs, ys, Xq, float(C), seed=seed))
    return accuracy(yq, pred), float(C), pred


def summarize(accs: list[float], class_accs: list[float] | None = None) -> dict:
    """Mean ± population std over folds of accuracy and, when given, of mean-class accuracy.
    ``accuracy`` repeats ``accuracy_mean`` so every protocol's result has the same key."""
    a = np.asarray(accs, dtype=np.float64)
    out = {"accuracy_mean": float(a.mean()), "accuracy_std": float(a.std(ddof=0)),
           "std_kind": "population (ddof=0)", "fold_accuracy": [float(x) for x in a]}
    if class_accs is not None:
        m = np.asarray(class_accs, dtype=np.float64)
        out.update({"accuracy": out["accuracy_mean"], "mean_class_accuracy": float(m.mean()),
                    "mean_class_accuracy_std": float(m.std(ddof=0)),
                    "fold_mean_class_accuracy": [float(x) for x in m]})
    return out


class _Pooled:
    """Every episode's query labels and predictions in the data set's labels, for the per-class
    accuracies and the confusion matrix (see the module docstring)."""

    def __init__(self):
        self.y_true: list[int] = []
        self.y_pred: list[int] = []

    def add(self, y_true, y_pred, label_of=None) -> float:
        """Add one episode; return its mean-class accuracy. ``label_of`` maps episode labels
        (0..way-1) back to the data set's."""
        t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
        if label_of is not None:
            t, p = np.asarray(label_of)[t], np.asarray(label_of)[p]
        self.y_true += t.tolist()
        self.y_pred += p.tolist()
        return mean_class_accuracy(t, p)

    def predictions(self) -> dict:
        return {"y_true": self.y_true, "y_pred": self.y_pred}


def run_fewshot(X_support, y_support, way: int = 5, shot: int = 10, query: int = 20, folds: int = 10,
                seed: int = 0, C: float | str = 0.0093, X_query=None, y_query=None,
                mode: str = "linear") -> dict:
    """Sampled episodes on precomputed features. Pass ``X_query/y_query`` for the split pools
    (support from the first, query from the second); omit them to pool everything in the first."""
    if mode != "linear":
        raise UserError("few-shot --mode finetune is not implemented yet; use --mode linear")
    if folds < 1:
        raise UserError(f"--folds must be >= 1 (got {folds})")
    Xs_all = np.asarray(X_support)
    Xq_all = Xs_all if X_query is None else np.asarray(X_query)
    accs, class_accs, episodes, pooled = [], [], [], _Pooled()
    for f in range(folds):
        ep = sample_episode(y_support, way, shot, query, seed, f, y_query)
        acc, c_used, pred = _fit_episode(Xs_all[ep["support"]], ep["support_y"], Xq_all[ep["query"]],
                                         ep["query_y"], C, seed)
        accs.append(acc)
        class_accs.append(pooled.add(ep["query_y"], pred, ep["classes"]))
        episodes.append({"fold": f, "classes": ep["classes"], "accuracy": acc,
                         "mean_class_accuracy": class_accs[-1], "C": c_used,
                         "n_support": int(len(ep["support"])), "n_query": int(len(ep["query"]))})
    return {**summarize(accs, class_accs), "episodes": episodes, "predictions": pooled.predictions()}


# ---------------------------------------------------------------- Point-BERT fold files
FOLD_FILE_NOTE = ("no per-class accuracy or confusion matrix: fold files label each fold's classes 0..way-1, "
                  "so a label names a different class in every fold")

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"), ("builtins", "slice"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Trust assumption: Point-BERT ships its folds as pickles, and unpickling can run arbitrary
    code. We cannot avoid pickle for that format, so we narrow it: only the numpy array/scalar
    reconstructors (plus plain containers, which need no globals) may be loaded; anything else
    is refused. Still, only read fold files from a source you trust."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise UserError(f"fold file refers to {module}.{name}: only numpy arrays are allowed")
        if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def fold_path(fold_dir: str | Path, way: int, shot: int, fold: int) -> Path:
    return Path(fold_dir) / f"{way}way_{shot}shot" / f"{fold}.pkl"


def read_fold_file(path: str | Path) -> dict:
    """``{"train": [(points [N,3|6], label, ...)...], "test": [...]}`` -> dict of lists of
    ``(points float32 [N,3], label int)``. Malformed files are a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"few-shot fold file {path} does not exist")
    try:
        with open(path, "rb") as fh:
            data = _NumpyOnlyUnpickler(fh).load()
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt pickle
        raise UserError(f"few-shot fold file {path} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or not {"train", "test"} <= set(data):
        raise UserError(f"few-shot fold file {path} is not a dict with 'train' and 'test' lists")
    out = {}
    for part in ("train", "test"):
        items = []
        for j, item in enumerate(data[part]):
            try:
                pts, label = np.asarray(item[0], dtype=np.float32), int(item[1])
            except (TypeError, ValueError, IndexError):
                raise UserError(f"few-shot fold file {path}: {part}[{j}] is not (points, label, ...)") from None
            if pts.ndim != 2 or pts.shape[1] < 3:
                raise UserError(f"few-shot fold file {path}: {part}[{j}] points have shape {pts.shape}")
            items.append((pts[:, :3], label))
        out[part] = items
    return out


def fold_samples(items, num_points: int, seed: int, tag: str):
    """Yield reader-style samples (unit sphere, exactly ``num_points``) from fold-file items,
    or ``(id, SampleError)`` for an unusable cloud, for :func:`features.encode_samples`."""
    from i2p.common.datasets import Sample

    for j, (pts, label) in enumerate(items):
        sid = f"{tag}/{j}"
        try:
            cloud = resample(normalize_unit_sphere(pts), num_points, stable_seed(seed, sid))
        except SampleError as err:
            yield (sid, err)
            continue
        yield Sample(points=cloud, label=label, id=sid)


def run_fold_files(model, fold_dir, way, shot, folds, num_points=1024, seed=0, C=0.0093,
                   batch_size=32, device="cpu", pool="max", progress=True) -> dict:
    """Evaluate Point-BERT's fixed folds: per fold, features of its train/test clouds, a linear
    SVM on train, accuracy on test."""
    from i2p.stage3_eval.features import encode_samples

    paths = [fold_path(fold_dir, way, shot, f) for f in range(folds)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"few-shot fold file {missing[0]} does not exist ({len(missing)} of {folds} missing)")
    accs, class_accs, episodes, skipped = [], [], [], 0
    for f, p in enumerate(paths):
        data = read_fold_file(p)
        parts = {}
        for part in ("train", "test"):
            tag = f"{way}way_{shot}shot/{f}/{part}"
            feats = encode_samples(model, fold_samples(data[part], num_points, seed, tag), len(data[part]),
                                   batch_size, device, pool, progress, desc=f"fold {f} {part}")
            parts[part] = feats
            skipped += len(feats.skipped)
        acc, c_used, pred = _fit_episode(parts["train"].X, parts["train"].y, parts["test"].X, parts["test"].y,
                                         C, seed)
        accs.append(acc)
        class_accs.append(mean_class_accuracy(parts["test"].y, pred))
        episodes.append({"fold": f, "file": str(p), "sha256": file_sha256(p), "accuracy": acc,
                         "mean_class_accuracy": class_accs[-1], "C": c_used,
                         "n_support": len(parts["train"].y), "n_query": len(parts["test"].y)})
    return {**summarize(accs, class_accs), "episodes": episodes, "skipped": skipped,
            "per_class_note": FOLD_FILE_NOTE}
