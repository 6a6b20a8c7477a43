"""``i2p study``: the ablation and transfer studies (and the helper jobs they launch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from i2p.common.cli_options import existing_path

app = typer.Typer(help="Studies: the masking/targets ablation and the out-of-domain transfer study (pretrain + "
                       "evaluate variants x seeds), masking statistics.", no_args_is_help=True)


def _run_study(kind: str, config: Path, out: Path, jobs: Optional[int], threads: int, write_docs: Optional[Path],
               dry_run: bool, report_only: bool) -> None:
    """What ``i2p study ablation`` and ``i2p study transfer`` share: run (or continue) the job
    graph, then write results.md + the chart, and the docs block with ``--write-docs``."""
    from i2p.study import config as scfg
    from i2p.study import report, runner

    study = scfg.load(config, kind=kind)
    command = f"i2p study {kind} --config {config} --out {out}" + (f" --jobs {jobs}" if jobs else "")
    if report_only:
        state = runner.read_json(runner.Layout(out).state) or {}
    else:
        try:
            state = runner.execute(study, out, jobs=jobs, threads=threads, echo=lambda m: typer.echo(m, err=True),
                                   dry_run=dry_run)
        except KeyboardInterrupt:
            typer.echo(f"study interrupted; state saved in {Path(out) / runner.STATE}: re-run the same command "
                       "to continue", err=True)
            raise typer.Exit(130)
        if dry_run:
            return
    state["command"] = command
    report.write_outputs(study, out, state, command)
    chart = report.chart_name(study)
    typer.echo(f"results: {Path(out) / 'results.md'}, chart: {Path(out) / chart}", err=True)
    if write_docs is not None:
        path = report.write_docs(study, out, state, command, write_docs)
        typer.echo(f"docs: {path} (chart: {path.parent / chart})", err=True)
    failed = [k for k, t in (state.get("tasks") or {}).items() if t.get("status") not in ("done", None)]
    if failed and not report_only:
        typer.echo(f"{len(failed)} job(s) not done: {', '.join(failed[:8])}{' ...' if len(failed) > 8 else ''} "
                   "(logs in OUT/logs; re-run the same command to retry)", err=True)
        raise typer.Exit(1)


_CONFIG_HELP = "study YAML (see experiments/{}.yaml)"
_OUT = typer.Option(..., "--out", help="study directory (resumable: re-run the same command to continue)")
_JOBS = typer.Option(None, "--jobs", help="runs at a time, each single-threaded (default: the config's)")
_THREADS = typer.Option(1, "--threads", help="threads per run (OMP/MKL/torch)")
_DRY = typer.Option(False, "--dry-run", help="list the jobs that would run; run nothing")
_REPORT = typer.Option(False, "--report-only", help="only rebuild results.md and the chart from what exists")


@app.command("ablation")
def ablation_cmd(
    config: Path = typer.Option(..., "--config", callback=existing_path, help=_CONFIG_HELP.format("ablation-shrec")),
    out: Path = _OUT, jobs: Optional[int] = _JOBS, threads: int = _THREADS,
    write_docs: Optional[Path] = typer.Option(None, "--write-docs",
                                              help="also put the tables, chart and commands into this Markdown file "
                                                   "(chart copied beside it as ablation.png)"),
    dry_run: bool = _DRY, report_only: bool = _REPORT,
) -> None:
    """Pretrain and evaluate every variant x seed of the study, then write results.md + ablation.png."""
    _run_study("ablation", config, out, jobs, threads, write_docs, dry_run, report_only)


@app.command("transfer")
def transfer_cmd(
    config: Path = typer.Option(..., "--config", callback=existing_path, help=_CONFIG_HELP.format("transfer-shrec")),
    out: Path = _OUT, jobs: Optional[int] = _JOBS, threads: int = _THREADS,
    write_docs: Optional[Path] = typer.Option(None, "--write-docs",
                                              help="also put the tables, chart and commands into this Markdown file "
                                                   "(chart copied beside it as NAME.png)"),
    dry_run: bool = _DRY, report_only: bool = _REPORT,
) -> None:
    """Out-of-domain transfer: cache the pretraining data (a class subset or another source), pretrain
    every variant x seed on it, evaluate on held-out classes or another data set beside random init
    and the teacher's own features; results.md + NAME.png (mean ± std over seeds, paired Δ)."""
    _run_study("transfer", config, out, jobs, threads, write_docs, dry_run, report_only)


@app.command("masking")
def masking_cmd(
    config: Path = typer.Option(..., "--config", callback=existing_path, help="study YAML: caches, grouping (pretrain preset + overrides), "
                                "temperatures, sample count, seed"),
    out: Path = typer.Option(..., "--out", help="JSON file to write"),
    samples: Optional[int] = typer.Option(None, "--samples", help="override masking.samples"),
    cache: List[str] = typer.Option([], "--cache", help="caches to measure (default: the config's "
                                    "pretrain.caches; a study passes the ones it built too)"),
) -> None:
    """Masking statistics (no training): saliency of visible vs masked tokens, overlap with the
    top-20% salient tokens and the softmax's spread, for random masking and each T."""
    from i2p.study import config as scfg
    from i2p.study.masking import markdown_table, masking_stats
    from i2p.common.atomic import write_json

    study = scfg.load(config)
    base = next((v for v in study.variants if v.pretrain), study.variants[0])
    cfg = scfg.resolve_pretrain(study, base, study.masking.seed)
    stats = masking_stats(list(cache) or study.pretrain.caches, cfg.model, study.masking.temperatures,
                          samples=samples or study.masking.samples, seed=study.masking.seed,
                          top_fraction=study.masking.top_fraction)
    stats["study_fingerprint"] = study.fingerprint()
    stats["grouping_from_variant"] = base.name
    write_json(out, stats, default=str)
    typer.echo(markdown_table(stats))


@app.command("materialize", hidden=True)
def materialize_cmd(data: str = typer.Option(..., "--data"), points: int = typer.Option(1024, "--points"),
                    seed: int = typer.Option(0, "--seed"), out: Path = typer.Option(..., "--out")) -> None:
    """Sample an evaluation data set once into an npz file (train/test layout)."""
    from i2p.study.tasks import materialize

    info = materialize(data, points, seed, out)
    typer.echo(json.dumps(info))


@app.command("init-encoder", hidden=True)
def init_encoder_cmd(cache: List[str] = typer.Option(..., "--cache"), preset: str = typer.Option("tiny", "--preset"),
                     set_: List[str] = typer.Option([], "--set"), seed: int = typer.Option(0, "--seed"),
                     calib_data: str = typer.Option(..., "--calib-data"),
                     points: int = typer.Option(0, "--points", help="0: the protocol default"),
                     batch_size: int = typer.Option(32, "--batch-size"), device: str = typer.Option("cpu", "--device"),
                     out: Path = typer.Option(..., "--out")) -> None:
    """Write the random-init baseline checkpoint (the pretraining runs' step-0 network)."""
    from i2p.study.tasks import init_encoder

    info = init_encoder(list(cache), preset, list(set_), seed, calib_data, points or None, batch_size, out, device)
    typer.echo(json.dumps(info))
