"""Result files shared by every protocol: ``result.json``, ``result.md``, ``confusion.png``.

A result must be enough on its own to say what was measured: which protocol, on which data
(spec and fingerprint of every split used), which checkpoint (path and sha256, or "random"),
which seeds and settings, every number, software versions and when. ``compare`` lines results
up in one Markdown table so runs (pretrained vs random, 2D targets vs 3D only) are read
side by side.

Every result is also meant for programs: ``schema`` names the format and its version
(:data:`SCHEMA`; results written before it existed have none and still load), ``metrics`` lists
the scalar metric keys the result reports, ``command`` is the command line that wrote it.
Classification protocols add ``mean_class_accuracy``, ``per_class_accuracy``,
``per_class_support``, ``confusion_matrix`` and its class order ``classes`` (see
:mod:`i2p.stage3_eval.metrics` for the conventions).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from i2p.common.errors import UserError
from i2p.common.invocation import command_line
from i2p.stage3_eval.metrics import class_names, classification_metrics, confusion_matrix

RESULT_JSON = "result.json"
RESULT_MD = "result.md"
CONFUSION_PNG = "confusion.png"
REQUIRED = ("protocol", "data", "checkpoint", "settings", "timestamp", "versions")
SCHEMA = "i2p.eval.result/1"
SCHEMA_NAME = SCHEMA.split("/")[0]
# Scalar metrics a result may report, in the order ``metrics`` lists them. Few-shot's
# ``accuracy`` and ``mean_class_accuracy`` are means over episodes (``*_std`` their spread).
METRIC_KEYS = ("accuracy", "mean_class_accuracy", "accuracy_std", "mean_class_accuracy_std", "accuracy_mean",
               "accuracy_paper_C", "accuracy_no_vote", "instance_miou", "class_miou", "point_accuracy")
# Part segmentation (``protocol: partseg``) reports ``instance_miou``, ``class_miou``,
# ``point_accuracy`` and ``per_category_iou`` (see :mod:`i2p.stage3_eval.partseg_metrics`).


def versions() -> dict:
    import sklearn
    import torch

    import i2p

    return {"i2p": i2p.__version__, "torch": torch.__version__, "sklearn": sklearn.__version__,
            "numpy": np.__version__}


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays, tuples and paths -> plain JSON types; NaN -> null."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def headline(result: dict) -> str:
    """``accuracy 93.12%`` or ``accuracy 95.00 ± 2.10% (10 folds)``; part segmentation:
    ``instance mIoU 84.10%, class mIoU 80.20%``."""
    if result.get("instance_miou") is not None:
        return (f"instance mIoU {100 * result['instance_miou']:.2f}%, "
                f"class mIoU {100 * (result.get('class_miou') or 0):.2f}%")
    if result.get("accuracy_mean") is not None:
        n = len(result.get("fold_accuracy") or [])
        return (f"accuracy {100 * result['accuracy_mean']:.2f} ± {100 * (result.get('accuracy_std') or 0):.2f}%"
                + (f" ({n} folds)" if n else ""))
    if result.get("accuracy") is not None:
        return f"accuracy {100 * result['accuracy']:.2f}%"
    return "accuracy n/a"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return "" if v is None else str(v)


def summary_rows(result: dict) -> list[tuple[str, str]]:
    """(field, value) rows for the Markdown report and the CLI's rich table."""
    ck = result.get("checkpoint") or {}
    rows = [("protocol", result.get("protocol", "")), ("headline", headline(result)),
            ("data", result.get("data", "")),
            ("checkpoint", ck.get("path", "")), ("checkpoint sha256", ck.get("sha256") or "-")]
    for split, fp in (result.get("fingerprints") or {}).items():
        rows.append((f"fingerprint {split}", fp))
    for key in ("accuracy", "mean_class_accuracy", "accuracy_paper_C", "accuracy_no_vote", "instance_miou",
                "class_miou", "point_accuracy", "C", "selected_epoch", "accuracy_mean", "accuracy_std",
                "mean_class_accuracy_std", "std_kind"):
        if result.get(key) is not None:
            val = result[key]
            rows.append((key, f"{100 * val:.2f}%" if "accuracy" in key or "miou" in key else _fmt(val)))
    for key, val in (result.get("settings") or {}).items():
        rows.append((f"setting {key}", _fmt(val)))
    if result.get("seeds"):
        rows.append(("seeds", _fmt(result["seeds"])))
    for key in ("n_train", "n_val", "n_test", "skipped"):
        if result.get(key) is not None:
            rows.append((key, _fmt(result[key])))
    for i, acc in enumerate(result.get("fold_accuracy") or []):
        rows.append((f"fold {i}", f"{100 * acc:.2f}%"))
    rows.append(("versions", _fmt(result.get("versions") or {})))
    rows.append(("timestamp", result.get("timestamp", "")))
    return [(str(a), str(b)) for a, b in rows]


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def result_markdown(result: dict) -> str:
    """First line: a warning when there is one (e.g. model selected on test), then a title."""
    lines = []
    if result.get("warning"):
        lines.append(f"**WARNING: {result['warning']}**\n")
    lines.append(f"# i2p eval {result.get('protocol', '')}: {headline(result)}\n")
    text = "\n".join(lines) + "\n" + markdown_table(["field", "value"], summary_rows(result))
    per_class = result.get("per_class_accuracy") or {}
    if per_class:
        support = result.get("per_class_support") or {}
        text += "\n## Per-class accuracy\n\n" + markdown_table(
            ["class", "accuracy", "test shapes"],
            [(name, f"{100 * acc:.2f}%" if acc is not None else "-", _fmt(support.get(name)))
             for name, acc in per_class.items()])
    per_cat = result.get("per_category_iou") or {}
    if per_cat:
        shapes = result.get("per_category_shapes") or {}
        text += "\n## Per-category IoU\n\n" + markdown_table(
            ["category", "mIoU", "test shapes"],
            [(name, f"{100 * iou:.2f}%" if iou is not None else "-", _fmt(shapes.get(name)))
             for name, iou in per_cat.items()])
    return text


def write_confusion(y_true, y_pred, classes: Sequence[str] | None, path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix as a PNG (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cm = confusion_matrix(y_true, y_pred, len(classes or [])).astype(np.float64)
    n = len(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    names = class_names(classes, n)
    size = min(4 + 0.25 * n, 24)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(n)
    fs = max(4, 10 - n // 8)
    ax.set_xticks(ticks, names, rotation=90, fontsize=fs)
    ax.set_yticks(ticks, names, fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def reported_metrics(result: dict) -> list[str]:
    """The :data:`METRIC_KEYS` that ``result`` holds as numbers, in that order."""
    return [k for k in METRIC_KEYS if isinstance(result.get(k), (int, float)) and not isinstance(result.get(k), bool)]


def write_result(out_dir: str | Path, result: dict, y_true=None, y_pred=None,
                 classes: Sequence[str] | None = None) -> dict:
    """Write ``result.json`` and ``result.md`` (plus ``confusion.png`` when predictions are
    given) into ``out_dir``; returns the final dict.

    Adds ``schema``, ``command``, ``timestamp``, ``versions`` and ``metrics``. With predictions,
    adds the classification metrics of :func:`~i2p.stage3_eval.metrics.classification_metrics`
    for the keys the protocol did not set itself (few-shot sets its own ``accuracy`` and
    ``mean_class_accuracy``, means over episodes, and gives pooled predictions for the rest)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = {"schema": SCHEMA, **result}
    res.setdefault("command", command_line())
    res.setdefault("timestamp", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    res.setdefault("versions", versions())
    missing = [k for k in ("protocol", "data", "checkpoint", "settings") if k not in res]
    if missing:
        raise ValueError(f"result lacks {missing}")
    files = {"json": str(out / RESULT_JSON), "markdown": str(out / RESULT_MD)}
    if y_true is not None and y_pred is not None:
        for key, val in classification_metrics(y_true, y_pred, classes).items():
            res.setdefault(key, val)
        write_confusion(y_true, y_pred, classes, out / CONFUSION_PNG,
                        title=f"{res['protocol']} {res.get('data', '')}: {headline(res)}")
        files["confusion"] = str(out / CONFUSION_PNG)
    res.setdefault("metrics", reported_metrics(res))
    res["files"] = files
    res = to_jsonable(res)
    tmp = out / (RESULT_JSON + ".tmp")
    tmp.write_text(json.dumps(res, indent=2, sort_keys=False) + "\n")
    tmp.replace(out / RESULT_JSON)
    (out / RESULT_MD).write_text(result_markdown(res))
    return res


def load_result(path: str | Path) -> dict:
    """A result.json, or a directory holding one. Results written before :data:`SCHEMA`
    existed load too: they get ``schema: None`` and ``metrics`` read off their keys, so
    callers see one shape. A ``schema`` of another format is refused."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULT_JSON
    if not p.is_file():
        raise UserError(f"no result at {path} (expected a result.json or a directory holding one)")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{p} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "protocol" not in data:
        raise UserError(f"{p} is not an i2p eval result (no 'protocol')")
    schema = data.get("schema")
    if schema is not None and str(schema).split("/")[0] != SCHEMA_NAME:
        raise UserError(f"{p} has schema {schema!r}, not {SCHEMA_NAME}/N")
    data.setdefault("schema", None)
    if not isinstance(data.get("metrics"), list):
        data["metrics"] = reported_metrics(data)
    data["_path"] = str(p)
    return data


COMPARE_HEADER = ("result", "protocol", "data", "checkpoint", "accuracy", "mean class accuracy", "settings",
                  "timestamp")


def _mean_class_cell(res: dict) -> str:
    """``91.20%``, or ``90.10 ± 3.00%`` for few-shot; ``-`` for results without it (older ones)."""
    mca = res.get("mean_class_accuracy")
    if not isinstance(mca, (int, float)):
        return "-"
    std = res.get("mean_class_accuracy_std")
    return f"{100 * mca:.2f} ± {100 * std:.2f}%" if isinstance(std, (int, float)) else f"{100 * mca:.2f}%"


def compare_rows(results: Sequence[str | Path]) -> list[list[str]]:
    rows = []
    for r in results:
        res = load_result(r)
        ck = res.get("checkpoint") or {}
        sha = (ck.get("sha256") or "")[:12]
        ckpt = ck.get("path", "") + (f" ({sha})" if sha else "")
        acc = headline(res).replace("accuracy ", "")
        if res.get("accuracy_paper_C") is not None:
            acc += f" [paper C: {100 * res['accuracy_paper_C']:.2f}%]"
        settings = _fmt({k: v for k, v in (res.get("settings") or {}).items() if v is not None})
        rows.append([res["_path"], res["protocol"], str(res.get("data", "")), ckpt, acc, _mean_class_cell(res),
                     settings, str(res.get("timestamp", ""))])
    return rows


def compare(results: Sequence[str | Path]) -> str:
    """Markdown table with one row per result file (or directory)."""
    if not results:
        raise UserError("compare needs at least one result")
    return markdown_table(COMPARE_HEADER, compare_rows(results))
