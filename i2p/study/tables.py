"""A study's tables and chart, from the summary :func:`i2p.study.report.collect` builds: the
accuracy table (mean ± std over seeds, paired Δ to the reference variant), the per-seed table,
the data-efficiency table (accuracy vs number of pretraining shapes) and the bar chart."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from i2p.study.config import StudyConfig


def _pct(ms: tuple, signed: bool = False, expected: int | None = None) -> str:
    """``12.3 ± 1.2`` (percent); ``(n=2)`` is added when fewer seeds than planned finished."""
    m, s, n = ms
    if n == 0:
        return "–"
    head = f"{100 * m:+.1f}" if signed else f"{100 * m:.1f}"
    return head + (f" ± {100 * s:.1f}" if n > 1 else "") + ("" if expected is None or n >= expected else f" (n={n})")


def _num(x, fmt="{:.3f}") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def _protocol_titles(study: StudyConfig) -> dict[str, str]:
    fs = study.eval.fewshot
    names = {"svm": "linear SVM %", "fewshot": f"{fs.way}-way {fs.shot}-shot %"}
    return {p: names[p] for p in study.eval.protocols}


def accuracy_table(summary: dict, study: StudyConfig) -> str:
    ref, n = summary["reference"], len(study.seeds)
    titles = _protocol_titles(study)
    short = {"svm": "SVM", "fewshot": "few-shot"}
    ablation = study.kind == "ablation"
    cols = ["variant", "setting"]
    for p, t in titles.items():
        cols += [t, f"Δ {short[p]} vs {ref}"]
    if "svm" in titles:
        cols.append("SVM % at C=0.0093")
    if ablation:
        cols += ["train saliency visible / masked", "final loss 3D"]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    lines = []
    for r in summary["rows"]:
        cells = [r["label"], r["setting"]]
        for p in titles:
            d = _pct(r[f"{p}_delta"], True, n) if f"{p}_delta" in r else "(ref)" if r["variant"] == ref else "–"
            cells += [_pct(r[p], expected=n), d]
        if "svm" in titles:
            cells.append(_pct(r["svm_paper_C"], expected=n))
        if ablation:
            cells.append(f"{_num(r.get('sal_visible'))} / {_num(r.get('sal_masked'))}" if r["pretrain"] else "–")
            cells.append(_num(r.get("final_loss_3d"), "{:.4f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def per_seed_table(summary: dict, study: StudyConfig) -> str:
    protos = list(study.eval.protocols)
    what = " / ".join({"svm": "SVM", "fewshot": "few-shot"}[p] for p in protos)
    cols = " | ".join(f"seed {s} {what}" for s in study.seeds)
    head = f"| variant | {cols} |\n|---|" + "---|" * len(study.seeds) + "\n"
    lines = []
    for r in summary["rows"]:
        cells = []
        for s in study.seeds:
            d = r["per_seed"][s]
            cells.append(" / ".join(_num(d[p] and 100 * d[p], '{:.1f}') for p in protos))
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def efficiency_table(summary: dict, study: StudyConfig) -> str:
    """Out-of-domain accuracy vs number of pretraining shapes (the pretrained rows, fewest shapes
    first); the rows that train on every shape show where the curve ends."""
    protos = list(study.eval.protocols)
    titles = _protocol_titles(study)
    rows = sorted((r for r in summary["rows"] if r["pretrain"] and r.get("train_shapes")),
                  key=lambda r: (r["setting"].split(",")[:2], r["train_shapes"]))
    head = "| variant | pretraining shapes | " + " | ".join(titles[p] for p in protos) + " |\n|---|---|" + \
        "---|" * len(protos) + "\n"
    n = len(study.seeds)
    return head + "\n".join(f"| {r['label']} | {r['train_shapes']} | " + " | ".join(_pct(r[p], expected=n) for p in protos)
                             + " |" for r in rows) + "\n"


def chart(summary: dict, study: StudyConfig, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    labels = [r["label"] for r in rows]
    x = np.arange(len(rows))
    fs = study.eval.fewshot
    panels = [(k, t, c) for k, t, c in (("svm", "linear SVM (test split)", "#4C72B0"),
                                        ("fewshot", f"{fs.way}-way {fs.shot}-shot ({fs.folds} episodes)", "#DD8452"))
              if k in study.eval.protocols]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.5 * len(panels), 1.5 * len(rows) + 2), 4.2),
                             sharey=False, squeeze=False)
    for ax, (key, title, color) in zip(axes[0], panels):
        means = np.array([100 * r[key][0] if r[key][2] else np.nan for r in rows])
        stds = np.array([100 * r[key][1] if r[key][2] > 1 else 0.0 for r in rows])
        ax.bar(x, np.nan_to_num(means), yerr=stds, color=color, alpha=0.85, capsize=4, edgecolor="black",
               linewidth=0.5)
        for i, r in enumerate(rows):
            pts = [100 * r["per_seed"][s][key] for s in study.seeds if r["per_seed"][s][key] is not None]
            ax.scatter([i] * len(pts), pts, color="black", s=10, zorder=3)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("accuracy %")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if key == "fewshot":
            ax.axhline(100.0 / fs.way, color="grey", linestyle="--", linewidth=1)
            ax.text(len(rows) - 0.5, 100.0 / fs.way, "chance", ha="right", va="bottom", fontsize=7, color="grey")
        # the axis starts at 0: a cut axis would make seed-noise-sized gaps look large
        finite = means[np.isfinite(means)]
        top = float(np.nanmax(means + stds)) if len(finite) else 100.0
        ax.set_ylim(0.0, min(100.0, top + 8))
    fig.suptitle(f"{study.name}: mean ± std over {len(study.seeds)} seeds (dots: seeds)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
