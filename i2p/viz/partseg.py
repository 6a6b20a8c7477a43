"""``i2p viz partseg``: test shapes of a part-segmentation result, coloured by true and predicted part.

Reads ``partseg_samples.npz`` that ``i2p eval partseg`` leaves in its result directory (a few
test shapes per category with their points, true and predicted global part ids). Each row is
one shape: the truth on the left, the prediction on the right, the same colour for the same
part (colours index the part within its category), the shape's IoU in the title. Shapes are
picked round-robin over categories, categories with several parts first, so a small figure
shows what is hard rather than spheres. Artists carry gids ``partseg-true-K`` /
``partseg-pred-K`` (K = row) for tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from i2p.common.errors import UserError

SAMPLES_NPZ = "partseg_samples.npz"  # the name i2p.stage3_eval.partseg writes
FIGURE_PNG = "partseg.png"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def load_samples(result: str | Path) -> dict[str, np.ndarray]:
    """The arrays of ``partseg_samples.npz`` in a result directory (or the file itself)."""
    p = Path(result)
    path = p / SAMPLES_NPZ if p.is_dir() else p
    if not path.is_file():
        raise UserError(f"no part-segmentation samples at {path} (run `i2p eval partseg --out DIR` first)")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def pick_rows(s: dict[str, np.ndarray], count: int) -> list[int]:
    """Round-robin over categories; categories whose shapes have several true parts first."""
    labels = s["labels"]
    cats = list(dict.fromkeys(labels.tolist()))
    richness = {c: max(len(np.unique(s["true"][i])) for i in np.flatnonzero(labels == c)) for c in cats}
    cats.sort(key=lambda c: -richness[c])
    queues = {c: list(np.flatnonzero(labels == c)) for c in cats}
    rows: list[int] = []
    while len(rows) < count and any(queues.values()):
        for c in cats:
            if queues[c] and len(rows) < count:
                rows.append(int(queues[c].pop(0)))
    return rows


def _local_colors(parts: np.ndarray, first: int) -> list[str]:
    return [PALETTE[(int(p) - first) % len(PALETTE)] for p in parts]


def partseg_figure(s: dict[str, np.ndarray], count: int = 4):
    """A Figure with ``count`` rows (fewer if there are fewer shapes): truth | prediction."""
    from i2p.stage3_eval.partseg_metrics import shape_iou
    from i2p.viz.figures import _axes3d, _figure, _limit

    rows = pick_rows(s, max(1, count))
    fig = _figure((7.0, 3.2 * len(rows)))
    gs = fig.add_gridspec(len(rows), 2)
    names = s["part_names"]
    for r, i in enumerate(rows):
        pts, true, pred = s["points"][i], s["true"][i], s["pred"][i]
        cat = str(s["classes"][s["labels"][i]])
        own = sorted({int(p) for p in np.concatenate([true, pred])})
        prefix = cat + "/"
        parts = [k for k, n in enumerate(names) if str(n).startswith(prefix)] or own
        first = parts[0]
        lim = _limit(pts)
        for col, (lab, what) in enumerate(((true, "true parts"), (pred, "predicted"))):
            title = f"{s['ids'][i]} ({cat}): {what}"
            if col:
                title += f", IoU {100 * shape_iou(pred, true, parts):.1f}%"
            ax = _axes3d(fig, gs[r, col], title, lim)
            ax.title.set_fontsize(8)
            ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], c=_local_colors(lab, first), s=2, depthshade=False,
                       gid=f"partseg-{'pred' if col else 'true'}-{r}")
    fig.tight_layout()
    return fig


def render_partseg(result: str | Path, out: str | Path | None = None, count: int = 4) -> Path:
    """Write the figure of a result directory's samples (default ``RESULT/partseg.png``)."""
    from i2p.viz.figures import save_figure

    s = load_samples(result)
    if out is None:
        p = Path(result)
        out = (p if p.is_dir() else p.parent) / FIGURE_PNG
    return save_figure(partseg_figure(s, count), out)
