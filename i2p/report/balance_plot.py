"""The 2D/3D balance of a pre-training run, as one figure for the HTML report.

Three panels from ``metrics.jsonl``: the weight each 2D term received per step (the automatic
balance's output, or the fixed ``lambda_2d``), the ratio of the gradient norms that the 2D
terms send into the encoder to the 3D term's (logged every ``log.diag_every_steps``), and the
held-out R2 of the 2D heads (logged every epoch): whether the 2D targets are being learnt in a
way that generalises to shapes the run never trained on.
"""

from __future__ import annotations

import math

SERIES = {
    "weights": [("w_2d", "2D per-point term"), ("w_global", "global term")],
    "ratios": [("enc_grad_ratio_2d", "2D per-point / 3D"), ("enc_grad_ratio_global", "global / 3D")],
    "r2": [("heldout_r2_2d", "2D per-point head"), ("heldout_r2_global", "global head")],
}
TITLES = {"weights": "weight of each 2D term per step", "ratios": "encoder gradient-norm ratio",
          "r2": "held-out R2 of the 2D heads"}


def _points(metrics: list[dict], key: str, x: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in metrics:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v) and (key.startswith("heldout") or v != 0) and x in r:
            xs.append(r[x] + (1 if x == "epoch" else 0))
            ys.append(float(v))
    return xs, ys


def balance_plot(metrics: list[dict]) -> bytes | None:
    from matplotlib.figure import Figure

    from i2p.report.page import fig_png

    panels = {name: [(label, *_points(metrics, key, "epoch" if name == "r2" else "step"))
                     for key, label in series] for name, series in SERIES.items()}
    panels = {k: [s for s in v if s[1]] for k, v in panels.items()}
    panels = {k: v for k, v in panels.items() if v}
    if not panels:
        return None
    fig = Figure(figsize=(5.0 * len(panels), 3.4))
    for i, (name, series) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for label, xs, ys in series:
            ax.plot(xs, ys, "o-" if name == "r2" else "-", ms=3, lw=1.2, label=label)
        if name != "r2" and all(y > 0 for _, _, ys in series for y in ys):
            ax.set_yscale("log")
        ax.set_xlabel("epochs completed" if name == "r2" else "step")
        ax.set_title(TITLES[name], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig_png(fig)
