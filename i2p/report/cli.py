"""``i2p report RUN_DIR [--eval RESULT ...] --out report.html``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from i2p.common.cli_options import existing_path


def report(
    run_dir: Path = typer.Argument(..., callback=existing_path, help="pretrain run directory (config.yaml, metrics.jsonl, last.ckpt)"),
    evals: List[Path] = typer.Option([], "--eval", callback=existing_path, help="result.json or its directory (repeatable)"),
    out: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write"),
    cache: Optional[str] = typer.Option(None, "--cache", help="cache for the figures (default: the checkpoint's)"),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="generate and embed viz figures"),
    samples: int = typer.Option(2, "--samples", help="shapes in the figure gallery"),
    title: Optional[str] = typer.Option(None, "--title", help="report title"),
) -> None:
    """One self-contained HTML report of a run: settings, curves, figures, evaluation tables.

    Loss curves (3D and 2D parts), probe accuracy over epochs, samples/s, a gallery of viz
    figures (from the cache named in last.ckpt) and the evaluation tables, all in one file."""
    from i2p.report.html import build_report

    path = build_report(run_dir, out, evals, cache=cache, figures=figures, samples=samples, title=title)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", err=True)
