"""Matplotlib figures of one sample and of one reconstruction (headless: Figure + Agg, no pyplot).

Artists carry a ``gid`` (``depth-v0``, ``saliency-v0``, ``saliency-cloud``,
``saliency-l3-visible``, ``random-l1-masked``, ...) so tests can check that what is drawn
is exactly what the pipeline computed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from i2p.viz.data import GUIDED_MODE, Reconstruction, SampleViz

AXIS_NAMES = "xyz"
COLORS = {GUIDED_MODE: "#d62728", "random": "#1f77b4"}
TITLES = {GUIDED_MODE: "2D-guided", "random": "random"}


def _figure(size):
    from matplotlib.figure import Figure
    import mpl_toolkits.mplot3d  # noqa: F401  (registers the 3d projection)

    return Figure(figsize=size, dpi=100)


def _axes3d(fig, spec, title: str, limit: float = 1.0):
    ax = fig.add_subplot(spec, projection="3d")
    ax.set_title(title, fontsize=10)
    for set_lim in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        set_lim(-limit, limit)
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=20, azim=-60)
    ax.tick_params(labelsize=6, pad=0)
    ax.set_xlabel("x", fontsize=7, labelpad=-8)
    ax.set_ylabel("y", fontsize=7, labelpad=-8)
    ax.set_zlabel("z", fontsize=7, labelpad=-8)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_ticklabels([])
    return ax


def _scatter(ax, xyz: np.ndarray, gid: str, **kw):
    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    return ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], depthshade=False, gid=gid, **kw)


def _limit(*clouds: np.ndarray) -> float:
    m = max(float(np.abs(c).max()) if len(c) else 0.0 for c in clouds)
    return max(m * 1.05, 1e-3)


def _view_title(v: int, axes) -> str:
    a, b, d = axes
    return f"view {v}: rows {AXIS_NAMES[a]}, cols {AXIS_NAMES[b]}, depth {AXIS_NAMES[d]}"


def _image_rows(fig, gs, viz: SampleViz, axes: list[tuple]) -> None:
    """Rows 1-2: the stage-1 images, then the teacher's saliency over them with the coarse
    centres (filled = visible in the 2D-guided draw)."""
    import torch

    from i2p.stage1_project.projection import pixel_indices

    size = viz.images.shape[-1]
    pix = pixel_indices(torch.from_numpy(viz.coarse_centers)[None], torch.from_numpy(viz.proj)[None],
                        size=size, views=axes)[0].numpy()  # [V, G, 2]
    vis_top = viz.guided.visible[-1]
    for v in range(viz.images.shape[0]):
        ax = fig.add_subplot(gs[0, v])
        ax.imshow(viz.images[v], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", gid=f"depth-v{v}")
        ax.set_title(_view_title(v, axes[v]) + "\nsigmoid(depth): the teacher's input", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax = fig.add_subplot(gs[1, v])
        ax.imshow(viz.images[v], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        sal = viz.saliency_up[v]
        lo, hi = float(sal.min()), float(sal.max())
        ax.imshow((sal - lo) / (hi - lo) if hi > lo else np.zeros_like(sal), cmap="jet", alpha=0.45,
                  vmin=0, vmax=1, interpolation="bilinear", gid=f"saliency-v{v}")
        ax.scatter(pix[v, ~vis_top, 1], pix[v, ~vis_top, 0], s=10, facecolors="none", edgecolors="white",
                   linewidths=0.6, gid=f"saliency-v{v}-masked")
        ax.scatter(pix[v, vis_top, 1], pix[v, vis_top, 0], s=18, c="white", edgecolors="black", linewidths=0.5,
                   gid=f"saliency-v{v}-visible")
        ax.set_title(f"view {v}: teacher saliency (bicubic to {size}x{size})\n"
                     "dots: coarse centres (filled = visible, 2D-guided)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])


def _cloud_row(fig, gs, viz: SampleViz, lim: float) -> None:
    """Row 3: input cloud, saliency cloud, draw probabilities."""
    s = viz.sample
    ax = _axes3d(fig, gs[2, 0], f"input: {s.points.shape[1]} points (cached)", lim)
    _scatter(ax, s.points[0].numpy(), "input-points", s=1.5, c="#555555", alpha=0.6)
    ax = _axes3d(fig, gs[2, 1], f"saliency cloud: {len(viz.saliency_cloud)} coarse centres\n"
                                "(saliency back-projected,\nmean over views)", lim)
    sc = _scatter(ax, viz.coarse_centers, "saliency-cloud", s=40, c=viz.saliency_cloud, cmap="jet")
    fig.colorbar(sc, ax=ax, shrink=0.6, pad=0.02).ax.tick_params(labelsize=7)
    ax = fig.add_subplot(gs[2, 2])
    order = np.argsort(-viz.saliency_cloud, kind="stable")
    probs = viz.guided.probabilities[order]
    colors = np.where(viz.guided.visible[-1][order], COLORS[GUIDED_MODE], "#cccccc")
    ax.bar(np.arange(len(order)), probs, color=colors, width=0.9, gid="draw-probabilities")
    rv = np.flatnonzero(viz.random.visible[-1][order])
    ax.scatter(rv, np.zeros_like(rv, dtype=float), marker="^", s=22, c=COLORS["random"], zorder=3,
               gid="random-visible-marks", clip_on=False)
    ax.set_title(f"draw probabilities softmax(s / T), T = {viz.temperature:g}\n"
                 f"red bar: visible (2D-guided, seed {viz.seed})\n"
                 f"blue ▲: visible (random, seed {viz.seed + 1})", fontsize=9)
    ax.set_xlabel("coarse token (most salient first)", fontsize=8)
    ax.set_ylabel("draw probability", fontsize=8)
    ax.tick_params(labelsize=7)


def _mask_rows(fig, gs, viz: SampleViz, lim: float) -> None:
    """Rows 4-5: visible/masked tokens per level, 2D-guided then random."""
    from matplotlib import colormaps

    cmap = colormaps["gray"]
    for row, draw in ((3, viz.guided), (4, viz.random)):
        for lvl in range(len(draw.visible)):
            vis = draw.visible[lvl]
            ctr = draw.centers[lvl]
            who = f"seed {viz.seed}" if draw is viz.guided else f"seed {viz.seed + 1}"
            ax = _axes3d(fig, gs[row, lvl], f"{TITLES[draw.mode]} masking ({who}), level {lvl + 1}:\n"
                                           f"{int(vis.sum())}/{len(vis)} tokens visible", lim)
            size_pt = {0: 5, 1: 10}.get(lvl, 30)
            _scatter(ax, ctr[~vis], f"{draw.mode}-l{lvl + 1}-masked", s=size_pt, c=[cmap(0.8)], alpha=0.35)
            _scatter(ax, ctr[vis], f"{draw.mode}-l{lvl + 1}-visible", s=size_pt * 1.6, c=COLORS[draw.mode])


def sample_figure(viz: SampleViz):
    """Depth images, saliency overlays, the saliency cloud, the draw probabilities, and the
    visible/masked tokens of every level for a 2D-guided and a random draw."""
    from i2p.stage1_project.projection import VIEW_AXES

    s = viz.sample
    cols = max(viz.images.shape[0], len(viz.guided.visible), 3)
    fig = _figure((4.2 * cols, 4.1 * 5))
    gs = fig.add_gridspec(5, cols, hspace=0.38, wspace=0.28, top=0.94, bottom=0.02)
    _image_rows(fig, gs, viz, [tuple(a) for a in s.settings.get("view_axes", VIEW_AXES)])
    lim = _limit(s.points[0].numpy())
    _cloud_row(fig, gs, viz, lim)
    _mask_rows(fig, gs, viz, lim)
    frame = "augmented frame of that step" if viz.augmented else "original frame"
    n_vis, n_top = int(viz.guided.visible[-1].sum()), len(viz.guided.visible[-1])
    fig.suptitle(f"{s.sample_id}  (cache index {s.index}, label {s.label}; teacher {s.settings.get('teacher', '?')})\n"
                 f"masks of training step {viz.step}, seed {viz.seed} ({frame}): {n_vis}/{n_top} coarse tokens "
                 f"visible, finer levels follow kNN membership", fontsize=12, y=0.985)
    for note in viz.notes:
        fig.text(0.01, 0.002, f"NOTE: {note}", color="red", fontsize=9)
    return fig


def recon_figure(rec: Reconstruction):
    """Input, visible points, and the reconstruction of the masked head-level tokens."""
    fig = _figure((18, 5.2))
    gs = fig.add_gridspec(1, 4, wspace=0.05)
    lim = _limit(rec.points, rec.predicted)
    ax = _axes3d(fig, gs[0, 0], f"input: {len(rec.points)} points", lim)
    _scatter(ax, rec.points, "recon-input", s=1.5, c="#555555", alpha=0.6)
    ax = _axes3d(fig, gs[0, 1], f"masked input: visible points ({100 * rec.visible_fraction:.0f}%)", lim)
    _scatter(ax, rec.visible_points, "recon-visible", s=1.5, c="#2ca02c", alpha=0.8)
    n_tok = len(rec.masked_centers)
    k = len(rec.predicted) // max(n_tok, 1)
    ax = _axes3d(fig, gs[0, 2], f"reconstruction: visible + predicted\n({n_tok} masked level-{rec.head_level + 1} "
                                f"tokens x {k} points)", lim)
    _scatter(ax, rec.visible_points, "recon-visible-2", s=1.5, c="#2ca02c", alpha=0.5)
    _scatter(ax, rec.predicted, "recon-predicted", s=3, c=COLORS[GUIDED_MODE], alpha=0.9)
    ax = _axes3d(fig, gs[0, 3], f"masked tokens: true members (grey) vs predicted (red)\n"
                                f"Chamfer-L2 per token {rec.chamfer:.4g}", lim)
    _scatter(ax, rec.target, "recon-target", s=3, c="#777777", alpha=0.6)
    _scatter(ax, rec.predicted, "recon-predicted-2", s=3, c=COLORS[GUIDED_MODE], alpha=0.7)
    s = rec.sample
    fig.suptitle(f"{s.sample_id} (cache index {s.index}) -- {Path(rec.checkpoint).name or 'model'}: "
                 f"{TITLES.get(rec.mode, rec.mode)} masking, seed {rec.seed}, step {rec.step}", fontsize=12)
    return fig


def save_figure(fig, out: str | Path, dpi: int = 100) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")
    return out


__all__ = ["sample_figure", "recon_figure", "save_figure"]
