"""One self-contained HTML report of a pre-training run and its evaluations.

Everything is inside the file: plots and figures are PNG data URIs, the style sheet and the
small self-check script are inline, and a Content-Security-Policy forbids any other source, so
the file can be mailed, attached to a CI run or opened offline and looks the same.

Here: reading a run directory and its results, making the figure gallery, writing the file.
The page's parts: :mod:`page` (building blocks), :mod:`plots`, :mod:`sections`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from i2p.common.atomic import write_text
from i2p.common.errors import UserError
from i2p.report.page import CSP, png_data_uri
from i2p.report.sections import ReportInputs, render_html


def read_run(run_dir: str | Path) -> ReportInputs:
    import yaml

    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist")
    inputs = ReportInputs(run_dir=run)
    cfg_path = run / "config.yaml"
    if cfg_path.is_file():
        inputs.config_text = cfg_path.read_text()
        try:
            inputs.config = yaml.safe_load(inputs.config_text) or {}
        except yaml.YAMLError:
            inputs.notes.append("config.yaml could not be parsed")
    from i2p.stage2_pretrain.diagnostics import read_metrics

    inputs.metrics = read_metrics(run / "metrics.jsonl")
    if not inputs.config_text and not inputs.metrics:
        raise UserError(f"{run} is not a pretrain run directory (no config.yaml, no metrics.jsonl)")
    ckpt = run / "last.ckpt"
    if ckpt.is_file():
        from i2p.common.checkpoint import load_checkpoint

        try:
            ck = load_checkpoint(ckpt)
            inputs.checkpoint = {"path": str(ckpt), "step": ck.get("step"), "epoch": ck.get("epoch"),
                                 "cache": dict(ck.get("cache") or {}), "i2p_version": ck.get("i2p_version")}
        except UserError as exc:
            inputs.notes.append(str(exc))
    return inputs


# ---------------------------------------------------------------- figures

def gallery(inp: ReportInputs, cache: str | None, out_dir: Path, samples: int = 2, recon: bool = True,
            progress=None) -> list[tuple[str, Path]]:
    """Write ``viz`` figures of ``samples`` cached shapes into ``out_dir`` (sample figures with the
    run's model sizes and seed, plus reconstructions by ``last.ckpt``); returns (caption, path)."""
    from i2p.cache import store as cs
    from i2p.viz.cli import render_recon, render_sample
    from i2p.viz.data import first_valid_indices

    cache = cache or (inp.checkpoint.get("cache") or {}).get("path")
    if not cache:
        inp.notes.append("no cache path known (the run has no last.ckpt): figures skipped; pass --cache")
        return []
    try:
        cs.open_store(cache)
    except UserError as exc:
        inp.notes.append(f"figures skipped: {exc}")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    config = str(inp.run_dir / "config.yaml") if (inp.run_dir / "config.yaml").is_file() else "paper"
    ckpt = inp.checkpoint.get("path")
    figs: list[tuple[str, Path]] = []
    for index in first_valid_indices(cache, samples):
        path = render_sample(cache, index, out_dir / f"sample-{index}.png", config=config)
        figs.append((f"viz sample --index {index}: stage-1 depth images (what the teacher saw), its saliency, "
                     "the saliency cloud and the visible/masked tokens of a 2D-guided and a random draw.", path))
        if progress:
            progress()
        if recon and ckpt:
            path = render_recon(ckpt, cache, index, out_dir / f"recon-{index}.png")
            figs.append((f"viz recon --index {index}: input, visible points and the masked tokens' points "
                         "predicted by last.ckpt.", path))
            if progress:
                progress()
    return figs


def build_report(run_dir: str | Path, out: str | Path, evals: Sequence[str | Path] = (), cache: str | None = None,
                 figures: bool = True, samples: int = 2, figures_dir: str | Path | None = None,
                 title: str | None = None, progress=None) -> Path:
    """Read the run (and results), make the figures, write ``out``; returns its path."""
    from i2p.stage3_eval.report import load_result

    inp = read_run(run_dir)
    inp.results = [load_result(r) for r in evals]
    out = Path(out)
    inp.figures_requested = bool(figures and samples > 0)
    if inp.figures_requested:
        fdir = Path(figures_dir) if figures_dir else out.parent / f"{out.stem}-figures"
        inp.figures = gallery(inp, cache, fdir, samples, progress=progress)
    write_text(out, render_html(inp, title))
    return out


__all__ = ["build_report", "render_html", "read_run", "ReportInputs", "png_data_uri", "CSP"]
