"""End-to-end protocol runs: data + encoder -> features -> protocol -> result files.

Kept apart from the typer layer so that tests and scripts call the same code the CLI does.
One ``seed`` drives everything that is random in a run (point sampling of the readers, the
random-init baseline, the CV folds, few-shot episodes) and is written in the result.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from i2p.common.device import resolve_device
from i2p.common.errors import UserError
from i2p.common.geometry import stable_seed
from i2p.stage3_eval import fewshot as fs
from i2p.stage3_eval.features import dataset_clouds, extract_features
from i2p.stage3_eval.knn import run_knn
from i2p.stage3_eval.report import write_result
from i2p.stage3_eval.svm import run_svm, paper_C_for
from i2p.stage3_eval.teacher_encoder import is_teacher_ckpt

# The paper's point counts: ModelNet40 1024, ScanObjectNN 2048.
_DEFAULT_POINTS = {"scanobjectnn": 2048}
# The frozen-feature protocols (svm, knn, few-shot, ``i2p embed``) read every encoder at this
# many points: the stage-1 density, so a student is probed on the clouds its teacher (the
# ceiling) is probed on. Chosen with ``DEFAULT_POOL`` on validation only (5-fold CV on train
# splits: docs/RESULTS.md, "Generalisation", "The probe protocol").
PROBE_POINTS = 2048


def default_points(spec: str, ckpt: str | None = None) -> int:
    """The paper's point count (fine-tuning; the official SVM with ``--sampling official``); for
    ``teacher:NAME`` the stage-1 count (2048) at least: the depth images are sums over the
    points, and a teacher sees the images it saw in stage 1 (measured on SHREC'16, 5-fold CV on
    train: 2048 points 76.0%, 1024 points 70.4%)."""
    n = _DEFAULT_POINTS.get(spec.split(":", 1)[0], 1024)
    return max(n, 2048) if is_teacher_ckpt(ckpt) else n


def probe_points(spec: str, ckpt: str | None = None, sampling: str = "i2p") -> int:
    """Points per shape of the frozen-feature protocols: ``PROBE_POINTS`` (or more where the
    paper reads more), the paper's count with ``sampling='official'``."""
    if sampling == "official":
        return default_points(spec, ckpt)
    return max(PROBE_POINTS, default_points(spec, ckpt))


def default_pool(ckpt: str, pool: str | None, sampling: str = "i2p") -> str:
    """:data:`~i2p.api.encoder.DEFAULT_POOL` (``levels``) for 3D encoders, as
    ``i2p.load_encoder`` uses it; an export directory's own pooling (a converted Point-M2AE
    records ``mean_plus_max``, its official SVM feature); ``max`` (the official I2P-MAE SVM
    feature) with ``sampling='official'``; ``meanmax`` for a teacher (SHREC'16, 5-fold CV on
    train: meanmax 76.0%, max 73.5%, at 2048 points)."""
    if pool:
        return pool
    if is_teacher_ckpt(ckpt):
        return "meanmax"
    from i2p.api.encoder import DEFAULT_POOL
    from i2p.api.loading import export_pooling

    return export_pooling(ckpt) or ("max" if sampling == "official" else DEFAULT_POOL)


SAMPLINGS = ("i2p", "official")


def open_splits(spec: str, points: int, seed: int, need_test: bool = True, sampling: str = "i2p") -> dict:
    """``{"train": ds, "test": ds}``; a spec without a test split is a one-line UserError.
    ``sampling='official'``: the first ``points`` stored points of each cloud, not re-normalised
    (the official SVM's reading, ``common.datasets.stored``), for readers with a stored order."""
    from i2p.common.datasets import create_dataset
    from i2p.common.datasets.stored import stored_points

    if sampling not in SAMPLINGS:
        raise UserError(f"sampling must be one of {', '.join(SAMPLINGS)} (got {sampling!r})")
    view = stored_points if sampling == "official" else (lambda ds: ds)
    train = view(create_dataset(spec, "train", num_points=points, seed=seed))
    if not train.has_split("test"):
        if need_test:
            raise UserError(f"data {spec} has no test split")
        return {"train": train}
    return {"train": train, "test": view(create_dataset(spec, "test", num_points=points, seed=seed))}


def encoder_for(ckpt: str, device, preset: str, seed: int, calib_clouds, batch_size: int,
                teacher_weights: str | None = None):
    """:func:`i2p.load_encoder` (the public loader: checkpoint, run or export directory,
    ``random``) plus BatchNorm statistics re-estimated on the protocol's own training shapes,
    labels unused (see :func:`features.calibrate_batchnorm`); recorded in ``info``.

    Every encoder gets this, not only ``random``: a random init carries placeholder statistics,
    and a pre-trained one carries statistics of masked, scale-augmented clouds that do not fit
    whole, un-augmented evaluation clouds (measured: features of a short pretrain collapsed to a
    spread of 0.004 in eval mode; re-estimation took its SVM from 54% to 68%). The same
    treatment for both keeps the pretrained-vs-random comparison fair.

    The exception: an encoder with ``eval_mode='official'`` (a converted official checkpoint)
    keeps its stored statistics, as the official evaluation does (``bn_calibration_shapes``
    0), so its features are the official ones."""
    from i2p.api.loading import load_encoder
    from i2p.stage3_eval.teacher_encoder import load_teacher_encoder

    if is_teacher_ckpt(ckpt):  # the 2D ceiling: frozen teacher, nothing to re-estimate
        model, info = load_teacher_encoder(ckpt, resolve_device(device), teacher_weights)
        info["bn_calibration_shapes"] = 0
        return model, info
    enc = load_encoder(ckpt, device, batch_size=batch_size, preset=preset, seed=seed)
    info = enc.info
    if info["model_config"].get("eval_mode") == "official":  # the official computation: stored statistics
        info["bn_calibration_shapes"] = 0
    else:
        info["bn_calibration_shapes"] = enc.calibrate(calib_clouds(), batch_size)
    return enc, info


def _checkpoint_block(info: dict) -> dict:
    return {"path": info["checkpoint"], "sha256": info.get("sha256"), "preset": info.get("preset"),
            "init_seed": info.get("init_seed"), "epoch": info.get("epoch"), "step": info.get("step"),
            "bn_calibration_shapes": info.get("bn_calibration_shapes"),
            "model_config": info.get("model_config"), "teacher": info.get("teacher")}


def _base(protocol: str, spec: str, info: dict, seed: int, settings: dict, splits: dict) -> dict:
    return {"protocol": protocol, "data": spec,
            "fingerprints": {k: ds.fingerprint() for k, ds in splits.items()},
            "checkpoint": _checkpoint_block(info), "seeds": {"seed": seed}, "settings": settings}


def _train_test_features(ckpt, spec, points, pool, seed, device, batch_size, preset, progress, sampling="i2p",
                         teacher_weights=None):
    points = points or probe_points(spec, ckpt, sampling)
    splits = open_splits(spec, points, seed, sampling=sampling)
    dev = resolve_device(device)
    model, info = encoder_for(ckpt, dev, preset, seed, lambda: dataset_clouds(splits["train"]), batch_size,
                              teacher_weights)
    # official: the stored points are encoded as given (a teacher never re-normalises)
    normalize = False if sampling == "official" and not is_teacher_ckpt(ckpt) else None
    feats = {k: extract_features(model, ds, batch_size, dev, pool, progress, normalize=normalize)
             for k, ds in splits.items()}
    for k, f in feats.items():
        if len(f.y) == 0:
            raise UserError(f"data {spec}: no usable {k} shapes")
    return points, splits, dev, info, feats


def _counts(feats: dict) -> dict:
    return {"n_train": int(len(feats["train"].y)), "n_test": int(len(feats["test"].y)),
            "skipped": {k: len(f.skipped) for k, f in feats.items()},
            "skipped_samples": {k: f.skipped[:50] for k, f in feats.items() if f.skipped}}


def svm(ckpt: str, data: str, out: str, points: int | None = None, pool: str | None = None,
        C: str | float = "auto", seed: int = 0, device: str = "auto", batch_size: int = 32,
        folds: int = 5, solver: str = "svc", preset: str = "tiny", progress: bool = True,
        sampling: str = "i2p", teacher_weights: str | None = None) -> dict:
    """``sampling='official'``: each cloud is its first ``points`` stored points, not
    re-normalised, encoded as given (the official SVM input, docs/FIDELITY.md V3)."""
    pool = default_pool(ckpt, pool, sampling)
    points, splits, dev, info, feats = _train_test_features(ckpt, data, points, pool, seed, device,
                                                           batch_size, preset, progress, sampling,
                                                           teacher_weights)
    tr, te = feats["train"], feats["test"]
    paper_C = paper_C_for(data)
    res = run_svm(tr.X, tr.y, te.X, te.y, C=C, paper_C=paper_C, folds=folds, seed=seed, solver=solver)
    pred = res.pop("predictions")
    settings = {"points": points, "sampling": sampling, "pool": pool, "C": C, "cv_folds": folds,
                "solver": solver, "paper_C": paper_C, "standardize": False, "feature_dim": int(tr.X.shape[1]),
                "device": str(dev), "batch_size": batch_size}
    result = {**_base("svm", data, info, seed, settings, splits), **res, **_counts(feats)}
    return write_result(out, result, te.y, pred, splits["train"].classes)


def knn(ckpt: str, data: str, out: str, points: int | None = None, pool: str | None = None, k: int = 20,
        vote: str = "majority", seed: int = 0, device: str = "auto", batch_size: int = 32,
        preset: str = "tiny", progress: bool = True, teacher_weights: str | None = None) -> dict:
    pool = default_pool(ckpt, pool)
    points, splits, dev, info, feats = _train_test_features(ckpt, data, points, pool, seed, device,
                                                           batch_size, preset, progress,
                                                           teacher_weights=teacher_weights)
    tr, te = feats["train"], feats["test"]
    res = run_knn(tr.X, tr.y, te.X, te.y, k=k, vote_mode=vote, device=str(dev))
    pred = res.pop("predictions")
    settings = {"points": points, "pool": pool, "k": k, "vote": vote, "device": str(dev),
                "batch_size": batch_size, "feature_dim": int(tr.X.shape[1])}
    result = {**_base("knn", data, info, seed, settings, splits), **res, **_counts(feats)}
    return write_result(out, result, te.y, pred, splits["train"].classes)


def _fewshot_features(model, pools: dict, labels: dict, way, shot, query, folds, seed, batch_size,
                      dev, pool, progress):
    """Extract features only for shapes some episode uses. A shape that fails to load gets
    label -1 (never drawn again) and the episodes are re-drawn, until every drawn shape loaded."""
    X: dict[str, np.ndarray] = {}
    done: dict[str, set] = {k: set() for k in pools}
    skipped: list = []
    two = "test" in pools
    while True:
        need = {k: set() for k in pools}
        for f in range(folds):
            ep = fs.sample_episode(labels["train"], way, shot, query, seed, f, labels.get("test"))
            need["train"].update(ep["support"].tolist())
            need["test" if two else "train"].update(ep["query"].tolist())
        new_bad = False
        for k, ds in pools.items():
            todo = sorted(need[k] - done[k])
            if not todo:
                continue
            feats = extract_features(model, ds, batch_size, dev, pool, progress, indices=todo)
            pos = {sid: i for i, sid in enumerate(ds.ids)}
            if k not in X:
                X[k] = np.zeros((len(ds), feats.X.shape[1]), dtype=np.float32)
            for sid, row in zip(feats.ids, feats.X):
                X[k][pos[sid]] = row
            for sid, reason in feats.skipped:
                labels[k][pos[sid]] = -1
                skipped.append((k, sid, reason))
                new_bad = True
            done[k].update(todo)
        if not new_bad:
            return X, skipped


def fewshot(ckpt: str, data: str | None, out: str, way: int = 5, shot: int = 10, query: int = 20,
            folds: int = 10, mode: str = "linear", fold_dir: str | None = None, points: int | None = None,
            pool: str | None = None, C: str | float = 0.0093, seed: int = 0, device: str = "auto",
            batch_size: int = 32, episodes_from: str = "split", preset: str = "tiny",
            progress: bool = True, teacher_weights: str | None = None) -> dict:
    pool = default_pool(ckpt, pool)
    if mode not in fs.MODES:
        raise UserError(f"unknown few-shot mode {mode!r}: choose one of {', '.join(fs.MODES)}")
    if mode == "finetune":
        raise UserError("few-shot --mode finetune is not implemented yet; use --mode linear")
    if episodes_from not in ("split", "all"):
        raise UserError(f"--episodes-from must be 'split' or 'all' (got {episodes_from!r})")
    if isinstance(C, str) and C != "auto":
        try:
            C = float(C)
        except ValueError:
            raise UserError(f"--C must be 'auto' or a positive number (got {C!r})") from None
    points = points or (probe_points(data, ckpt) if data else PROBE_POINTS)
    dev = resolve_device(device)
    settings: dict[str, Any] = {"way": way, "shot": shot, "query": query, "folds": folds, "mode": mode,
                                "points": points, "pool": pool, "C": C, "device": str(dev),
                                "batch_size": batch_size}
    if fold_dir:
        def fold0_clouds():
            items = fs.read_fold_file(fs.fold_path(fold_dir, way, shot, 0))["train"]
            return (s.points for s in fs.fold_samples(items, points, seed, "calib") if hasattr(s, "points"))

        model, info = encoder_for(ckpt, dev, preset, seed, fold0_clouds, batch_size, teacher_weights)
        res = fs.run_fold_files(model, fold_dir, way, shot, folds, points, seed, C, batch_size, dev,
                                pool, progress)
        settings["fold_dir"] = str(fold_dir)
        base = _base("fewshot", data or f"modelnet-fewshot:{fold_dir}", info, seed, settings, {})
        base["fingerprints"] = {f"fold {e['fold']}": e["sha256"] for e in res["episodes"]}
        return write_result(out, {**base, **res})
    if not data:
        raise UserError("few-shot needs --data SPEC or --fold-dir DIR")
    if episodes_from == "all":
        from i2p.common.datasets import create_dataset

        pools = {"train": create_dataset(data, "all", num_points=points, seed=seed)}
    else:
        pools = open_splits(data, points, seed, need_test=False)
        if "test" not in pools:
            raise UserError(f"data {data} has no test split (use --episodes-from all to pool every shape)")
    labels = {k: np.asarray(ds.labels, dtype=np.int64).copy() for k, ds in pools.items()}
    fs.sample_episode(labels["train"], way, shot, query, seed, 0, labels.get("test"))  # refuse early
    model, info = encoder_for(ckpt, dev, preset, seed, lambda: dataset_clouds(pools["train"]), batch_size,
                              teacher_weights)
    X, skipped = _fewshot_features(model, pools, labels, way, shot, query, folds, seed, batch_size,
                                   dev, pool, progress)
    res = fs.run_fewshot(X["train"], labels["train"], way, shot, query, folds, seed, C,
                         X.get("test"), labels.get("test"), mode)
    classes = pools["train"].classes
    for ep in res["episodes"]:
        ep["class_names"] = [classes[c] if 0 <= c < len(classes) else str(c) for c in ep["classes"]]
    settings["episodes_from"] = episodes_from
    base = _base("fewshot", data, info, seed, settings, {"all": pools["train"]} if episodes_from == "all" else pools)
    pooled = res.pop("predictions")  # every episode's queries, in the data set's labels
    return write_result(out, {**base, **res, "skipped": len(skipped), "skipped_samples": skipped[:50]},
                        pooled["y_true"], pooled["y_pred"], classes)


def _finetune_parts(splits: dict, select_on: str, val_frac: float, seed: int, recipe, points: int,
                    progress: bool) -> tuple[dict, dict, tuple[list, list]]:
    """``({"train"|"val"|"test": (X, y)}, the official FPS pools, (skipped train, skipped test))``:
    the clouds in memory, the validation split carved from train when selecting on it."""
    from i2p.stage3_eval import finetune as ft, finetune_presets as fp

    Xtr, ytr, sk_tr = ft.load_clouds(splits["train"], progress=progress)
    Xte, yte, sk_te = ft.load_clouds(splits["test"], progress=progress)
    parts = {"test": (Xte, yte)}
    if select_on == "val":
        tr, va = ft.carve_validation(ytr, val_frac, seed)
        parts["val"] = (Xtr[va], ytr[va])
        Xtr, ytr = Xtr[tr], ytr[tr]
    parts["train"] = (Xtr, ytr)
    return parts, fp.official_clouds(parts, recipe, points), (sk_tr, sk_te)


def finetune(ckpt: str, data: str, out: str, points: int | None = None, epochs: int = 300,
             batch_size: int = 32, lr: float = 5e-4, weight_decay: float = 0.05, warmup: int = 10,
             smoothing: float = 0.2, dropout: float = 0.5, val_frac: float = 0.1, select_on: str = "val",
             votes: int = 1, local_radii: tuple[float, ...] = (0.32, 0.64, 1.28), seed: int = 0,
             device: str = "auto", resume: bool = True, preset: str = "tiny", progress: bool = True,
             recipe=None) -> dict:
    """Fine-tune the encoder with a classification head; see :mod:`i2p.stage3_eval.finetune` (and
    :mod:`~i2p.stage3_eval.finetune_presets` for ``recipe``: head, loss, schedule, draw, ...)."""
    from pathlib import Path

    import torch

    from i2p.common.device import deterministic_cpu
    from i2p.stage2_pretrain.run_dir import RunDirLock
    from i2p.stage3_eval import finetune as ft, finetune_presets as fp, finetune_train

    rc = recipe or fp.DEFAULT
    points = points or default_points(data)
    if select_on not in ft.SELECT:
        raise UserError(f"--select-on must be one of {', '.join(ft.SELECT)} (got {select_on!r})")
    if epochs < 1 or votes < 1:
        raise UserError(f"--epochs and --vote must be >= 1 (got {epochs}, {votes})")
    if is_teacher_ckpt(ckpt):
        raise UserError("fine-tuning needs a 3D network: --ckpt teacher:NAME works with svm, fewshot and knn")
    splits = open_splits(data, max(rc.read_points or points, points), seed)
    dev = resolve_device(device)
    torch.manual_seed(stable_seed(seed, "head"))
    enc, info = encoder_for(ckpt, dev, preset, seed, lambda: dataset_clouds(splits["train"]), batch_size)
    enc.to("cpu")
    n_levels = len(info["model_config"]["enc_dims"])
    if local_radii and len(local_radii) != n_levels:
        raise UserError(f"--local-radii needs {n_levels} values (one per level), got {len(local_radii)}")
    data_parts, pools, (sk_tr, sk_te) = _finetune_parts(splits, select_on, val_frac, seed, rc, points, progress)
    (Xte, yte), ytr = data_parts["test"], data_parts["train"][1]
    classes = splits["train"].classes
    clf = ft.Classifier(enc.network, len(classes), info["model_config"]["enc_dims"][-1],
                        dropout=dropout, local_radii=local_radii, head=rc.head, group_sizes=rc.group_sizes)
    settings = {"points": points, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                "weight_decay": weight_decay, "warmup_epochs": warmup, "label_smoothing": smoothing,
                "dropout": dropout, "val_frac": val_frac if select_on == "val" else None,
                "select_on": select_on, "votes": votes, "local_radii": list(local_radii or []),
                "head": "meanmax MLP 256-256-classes", "checkpoint": ckpt, "data": data, "seed": seed,
                **({} if recipe is None else rc.settings())}
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    # one run per directory; deterministic kernels: a killed and re-run fine-tune is bit-identical
    with RunDirLock(outp, "i2p eval finetune"), deterministic_cpu(dev):
        state = finetune_train.train(clf, data_parts, outp, epochs=epochs, batch_size=batch_size, lr=lr,
                                     weight_decay=weight_decay, warmup=warmup, smoothing=smoothing,
                                     select_on=select_on, seed=seed, device=dev, settings=settings, resume=resume,
                                     progress=progress, recipe=rc, sample_points=points if rc.fps_pool else None)
        probs1 = ft.predict(clf, Xte, batch_size, dev, 1, seed)
        probs = ft.predict(clf, Xte, batch_size, dev, votes, seed, pools.get("test")) if votes > 1 else probs1
    pred = probs.argmax(1)
    result = {**_base("finetune", data, info, seed, {**settings, "device": str(dev)}, splits),
              "accuracy": float(np.mean(pred == yte)), "accuracy_no_vote": float(np.mean(probs1.argmax(1) == yte)),
              "selected_epoch": state["best_epoch"], "selection_score": state["best"],
              "history": state["history"], "n_train": int(len(ytr)), "n_val": int(len(data_parts.get("val", ((), []))[1])),
              "n_test": int(len(yte)), "skipped": {"train": len(sk_tr), "test": len(sk_te)},
              "finetuned_checkpoint": str(outp / "best.ckpt")}
    if select_on == "test":
        result["warning"] = ft.TEST_WARNING
    return write_result(out, result, yte, pred, classes)
