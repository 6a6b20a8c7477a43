"""The training plots of the report, from ``metrics.jsonl`` records: loss curves, throughput
and learning rate, linear-probe accuracy (the 2D/3D balance figure is in :mod:`balance_plot`)."""

from __future__ import annotations

import math

from i2p.report.page import fig_png

def _int_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _series(metrics: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in metrics:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v) and "step" in r:
            xs.append(r["step"])
            ys.append(float(v))
    return xs, ys


def _smooth(ys: list[float], k: int) -> list[float]:
    if k <= 1 or len(ys) < k:
        return ys
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= k:
            acc -= ys[i - k]
        out.append(acc / min(i + 1, k))
    return out


def loss_plot(metrics: list[dict]) -> bytes | None:
    from matplotlib.figure import Figure

    parts = [("loss_3d", "3D part: Chamfer-L2 of masked tokens"), ("loss_2d", "2D part: MSE to teacher features"),
             ("loss", "total loss")]
    parts = [(k, t) for k, t in parts if _series(metrics, k)[0]]
    if not parts:
        return None
    fig = Figure(figsize=(5.2 * len(parts), 3.6))
    k = max(1, len(_series(metrics, "loss")[0]) // 25)
    for i, (key, title) in enumerate(parts):
        ax = fig.add_subplot(1, len(parts), i + 1)
        xs, ys = _series(metrics, key)
        ax.plot(xs, ys, color="#9ab", lw=1, label="per step")
        if k > 1:
            ax.plot(xs, _smooth(ys, k), color="#d62728", lw=1.8, label=f"mean of {k} steps")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        _int_steps(ax)
        ax.grid(alpha=0.3)
        if all(y > 0 for y in ys) and max(ys) / max(min(ys), 1e-12) > 20:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig_png(fig)


def rate_plot(metrics: list[dict]) -> bytes | None:
    from matplotlib.figure import Figure

    xs, ys = _series(metrics, "samples_per_s")
    lx, ly = _series(metrics, "lr")
    if not xs:
        return None
    fig = Figure(figsize=(10.4, 3.2))
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(xs, ys, ".", ms=3, color="#1f77b4")
    med = sorted(ys)[len(ys) // 2]
    ax.axhline(med, color="#d62728", lw=1, label=f"median {med:.3g}")
    ax.set_title("throughput (samples/s, all ranks)", fontsize=10)
    ax.set_xlabel("step")
    _int_steps(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if lx:
        ax = fig.add_subplot(1, 2, 2)
        ax.plot(lx, ly, color="#2ca02c")
        ax.set_title("learning rate", fontsize=10)
        ax.set_xlabel("step")
        _int_steps(ax)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig_png(fig)


def probe_plot(metrics: list[dict]) -> bytes | None:
    from matplotlib.figure import Figure

    recs = [r for r in metrics if isinstance(r.get("probe_svm_acc"), (int, float))]
    if not recs:
        return None
    fig = Figure(figsize=(5.2, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    ep = [int(r.get("epoch", 0)) + 1 for r in recs]
    acc = [100 * float(r["probe_svm_acc"]) for r in recs]
    ax.plot(ep, acc, "o-", color="#9467bd")
    ax.set_xlabel("epochs completed")
    _int_steps(ax)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("linear-SVM probe (3-fold CV on the probe cache)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig_png(fig)
