"""``i2p embed``: one embedding per shape of a dataset split, written with its id and label.

Output formats, chosen by the suffix of ``--out`` (each readable without i2p):

``FILE.npy``      the ``[N, D]`` float32 matrix, plus ``FILE.ids.json`` beside it: ``ids``,
                  ``labels`` (row order), ``classes`` (label -> name) and the run's settings.
                  ``np.load("FILE.npy")`` + ``json.load(open("FILE.ids.json"))``.
``FILE.npz``      one file: ``embeddings`` [N, D] float32, ``ids`` and ``classes`` (unicode
                  arrays), ``labels`` int64, ``meta`` (a JSON string); ``np.load`` reads it
                  without ``allow_pickle``.
``FILE.parquet``  one row per shape: ``id``, ``label``, ``label_name``, ``embedding``
                  (fixed-size list of float32); settings in the schema metadata under ``i2p``.
                  Needs pyarrow.

Files are written to a temporary name and renamed, so a killed run leaves no half file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from i2p import __version__
from i2p.common.atomic import atomic_open
from i2p.common.errors import UserError

FORMAT = "i2p-embeddings-1"
SUFFIXES = (".npy", ".npz", ".parquet")


def companion_path(out: str | os.PathLike) -> Path:
    """``FILE.npy`` -> ``FILE.ids.json``: ids, labels and settings of a ``.npy`` output."""
    return Path(out).with_suffix(".ids.json")


def check_output(out: str | os.PathLike) -> str:
    """The output's suffix, refused early (before any encoding) when unusable."""
    suffix = Path(out).suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"--out {out}: use a .npy, .npz or .parquet file name")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("writing .parquet needs pyarrow: pip install pyarrow (or write .npy / .npz)") from None
    if Path(out).is_dir():
        raise UserError(f"--out {out} is a directory; give a file name")
    return suffix


def _write(path: Path, write) -> None:
    with atomic_open(path, "wb") as fh:
        write(fh)


def _write_parquet(fh, X: np.ndarray, ids, labels, classes, meta: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [classes[int(y)] if 0 <= int(y) < len(classes) else str(int(y)) for y in labels]
    flat = pa.array(np.ascontiguousarray(X, dtype=np.float32).reshape(-1), type=pa.float32())
    table = pa.table({"id": pa.array(list(ids), pa.string()), "label": pa.array(labels, pa.int64()),
                      "label_name": pa.array(names, pa.string()),
                      "embedding": pa.FixedSizeListArray.from_arrays(flat, X.shape[1])})
    table = table.replace_schema_metadata({"i2p": json.dumps(meta)})
    pq.write_table(table, fh)


def write_embeddings(out: str | os.PathLike, X: np.ndarray, ids: Sequence[str], labels: Sequence[int],
                     classes: Sequence[str], meta: dict) -> list[str]:
    """Write ``X`` with ids and labels in the format of ``out``'s suffix; returns the files."""
    out = Path(out)
    suffix = check_output(out)
    X = np.ascontiguousarray(X, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    ids, classes = [str(i) for i in ids], [str(c) for c in classes]
    if suffix == ".npy":
        side = companion_path(out)
        _write(out, lambda fh: np.save(fh, X))
        body = {"ids": ids, "labels": labels.tolist(), "classes": classes, **meta}
        _write(side, lambda fh: fh.write((json.dumps(body, indent=1) + "\n").encode()))
        return [str(out), str(side)]
    if suffix == ".npz":
        _write(out, lambda fh: np.savez(fh, embeddings=X, ids=np.array(ids, dtype=str), labels=labels,
                                         classes=np.array(classes, dtype=str), meta=np.array(json.dumps(meta))))
        return [str(out)]
    _write(out, lambda fh: _write_parquet(fh, X, ids, labels, classes, meta))
    return [str(out)]


def embed_dataset(source: str, data: str, out: str | os.PathLike, *, split: str = "test",
                  points: int | None = None, pool: str | None = None, batch_size: int = 32,
                  device: str = "auto", seed: int = 0, calibrate: str | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Embed every usable shape of ``data``'s ``split`` with the encoder of ``source`` (a
    checkpoint, run or export directory) and write them to ``out``. ``calibrate=SPEC``
    re-estimates BatchNorm statistics on SPEC's train split first (as ``i2p eval`` does).
    Returns a summary (rows, dim, files, skipped)."""
    from i2p.api.loading import load_encoder
    from i2p.common.datasets import create_dataset
    from i2p.stage3_eval.features import dataset_clouds, extract_features
    from i2p.stage3_eval.runner import probe_points

    check_output(out)
    enc = load_encoder(source, device, pool=pool, batch_size=batch_size, seed=seed)
    n = int(points or probe_points(data))
    ds = create_dataset(data, split, num_points=n, seed=seed)
    calib = 0
    if calibrate:
        calib = enc.calibrate(dataset_clouds(create_dataset(calibrate, "train", num_points=n, seed=seed)))
    feats = extract_features(enc, ds, batch_size, enc.device, enc.pool, progress)
    meta = {"format": FORMAT, "i2p_version": __version__, "checkpoint": enc.info.get("checkpoint"),
            "checkpoint_sha256": enc.info.get("sha256"), "data": data, "split": split,
            "data_fingerprint": ds.fingerprint(), "points": n, "pool": enc.pool, "normalize": enc.normalize,
            "seed": seed, "dim": int(feats.X.shape[1]), "rows": int(len(feats.ids)),
            "bn_calibration": {"data": calibrate, "shapes": calib} if calibrate else None,
            "skipped": [list(s) for s in feats.skipped]}
    files = write_embeddings(out, feats.X, feats.ids, feats.y, ds.classes, meta)
    return {"rows": meta["rows"], "dim": meta["dim"], "files": files, "skipped": len(feats.skipped)}
