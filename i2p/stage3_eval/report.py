"""Result files shared by every protocol: ``result.json``, ``result.md``, ``confusion.png``.

A result must be enough on its own to say what was measured: which protocol, on which data
(spec and fingerprint of every split used), which checkpoint (path and sha256, or "random"),
which seeds and settings, every number, software versions and when. ``compare`` lines results
up in one Markdown table so runs (pretrained vs random, 2D targets vs 3D only) are read
side by side.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from i2p.common.errors import UserError

RESULT_JSON = "result.json"
RESULT_MD = "result.md"
CONFUSION_PNG = "confusion.png"
REQUIRED = ("protocol", "data", "checkpoint", "settings", "timestamp", "versions")


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
    """``accuracy 93.12%`` or ``accuracy 95.00 ± 2.10% (10 folds)``."""
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
    for key in ("accuracy", "accuracy_paper_C", "accuracy_no_vote", "C", "selected_epoch",
                "accuracy_mean", "accuracy_std", "std_kind"):
        if result.get(key) is not None:
            val = result[key]
            rows.append((key, f"{100 * val:.2f}%" if key.startswith("accuracy") else _fmt(val)))
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
    return "\n".join(lines) + "\n" + markdown_table(["field", "value"], summary_rows(result))


def write_confusion(y_true, y_pred, classes: Sequence[str] | None, path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix as a PNG (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    n = int(max(len(classes or []), y_true.max(initial=-1) + 1, y_pred.max(initial=-1) + 1, 1))
    cm = np.zeros((n, n))
    np.add.at(cm, (y_true, y_pred), 1)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    names = list(classes or []) + [str(i) for i in range(len(classes or []), n)]
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


def write_result(out_dir: str | Path, result: dict, y_true=None, y_pred=None,
                 classes: Sequence[str] | None = None) -> dict:
    """Write ``result.json`` and ``result.md`` (plus ``confusion.png`` when predictions are
    given) into ``out_dir``. Adds ``timestamp`` and ``versions``; returns the final dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = dict(result)
    res.setdefault("timestamp", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    res.setdefault("versions", versions())
    missing = [k for k in ("protocol", "data", "checkpoint", "settings") if k not in res]
    if missing:
        raise ValueError(f"result lacks {missing}")
    files = {"json": str(out / RESULT_JSON), "markdown": str(out / RESULT_MD)}
    if y_true is not None and y_pred is not None:
        write_confusion(y_true, y_pred, classes, out / CONFUSION_PNG,
                        title=f"{res['protocol']} {res.get('data', '')}: {headline(res)}")
        files["confusion"] = str(out / CONFUSION_PNG)
    res["files"] = files
    res = to_jsonable(res)
    tmp = out / (RESULT_JSON + ".tmp")
    tmp.write_text(json.dumps(res, indent=2, sort_keys=False) + "\n")
    tmp.replace(out / RESULT_JSON)
    (out / RESULT_MD).write_text(result_markdown(res))
    return res


def load_result(path: str | Path) -> dict:
    """A result.json, or a directory holding one."""
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
    data["_path"] = str(p)
    return data


COMPARE_HEADER = ("result", "protocol", "data", "checkpoint", "accuracy", "settings", "timestamp")


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
        rows.append([res["_path"], res["protocol"], str(res.get("data", "")), ckpt, acc, settings,
                     str(res.get("timestamp", ""))])
    return rows


def compare(results: Sequence[str | Path]) -> str:
    """Markdown table with one row per result file (or directory)."""
    if not results:
        raise UserError("compare needs at least one result")
    return markdown_table(COMPARE_HEADER, compare_rows(results))
