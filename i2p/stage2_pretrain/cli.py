"""``i2p pretrain``: stage 2 from a stage-1 cache."""

from __future__ import annotations

from typing import List, Optional

import typer

from i2p.common.cli_options import Mask, Targets, existing_path, existing_weights, value


def pretrain(
    cache: List[str] = typer.Option(..., help="Stage-1 cache directory or URL (repeat to mix caches "
                                    "built with the same teacher and settings); DIR:W weights it: each "
                                    "epoch draws round(W x its samples) of it (W=0.3: a seeded 30%)"),
    cache_weights: Optional[str] = typer.Option(None, "--cache-weights",
                                                help="Weights of the --cache sources in order, e.g. 1,0.3 "
                                                "(instead of DIR:W)"),
    out: str = typer.Option(..., help="Run directory (last.ckpt, config.yaml, metrics.jsonl, tb/)"),
    config: str = typer.Option("base", help="Preset: base (published model, automatic 2D/3D balance), tiny (CPU minutes), paper (the published recipe exactly), or a YAML file"),
    set_: List[str] = typer.Option([], "--set", help="Override: section.key=value (repeatable)"),
    epochs: Optional[int] = typer.Option(None, help="Epochs (overrides the config)"),
    batch_size: Optional[int] = typer.Option(None, help="Global batch size"),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda"),
    mask: Optional[Mask] = typer.Option(None, help="saliency (2D-guided, the paper's) or random (3D-only baseline)"),
    targets: Optional[Targets] = typer.Option(None, help="2d3d (the paper's) or 3d (no 2D target)"),
    temperature: Optional[float] = typer.Option(None, help="Saliency softmax temperature T (paper: 1)"),
    online_teacher: Optional[bool] = typer.Option(None, "--online-teacher/--cached-targets",
                                                  help="Run projection + teacher inside each step (the paper's way)"),
    teacher_weights: Optional[str] = typer.Option(None, callback=existing_weights,
                                                  help="Online teacher weights FILE or 'random'"),
    seed: Optional[int] = typer.Option(None, help="Seed"),
    workers: Optional[int] = typer.Option(None, help="Data-loading worker processes"),
    probe_cache: Optional[str] = typer.Option(None, callback=existing_path, help="Labelled cache for a periodic linear-SVM probe"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Resume from OUT/last.ckpt if present"),
    max_steps: Optional[int] = typer.Option(None, hidden=True, help="Stop after this many steps (tests)"),
) -> None:
    """Pre-train the hierarchical 3D MAE with 2D-guided masking and 2D-semantic targets."""
    from pathlib import Path

    from i2p.common.errors import UserError
    from i2p.stage2_pretrain import config as pcfg
    from i2p.stage2_pretrain.mixing import parse_weighted_caches
    from i2p.stage2_pretrain.train import pretrain as run

    try:
        cache, weights = parse_weighted_caches(list(cache), cache_weights)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    for c in cache:
        if "://" not in c and not Path(c).expanduser().exists():
            raise UserError(f"--cache {c!r} does not exist")
    if weights is not None:
        set_ = list(set_) + ["data.cache_weights=[" + ",".join(repr(float(w)) for w in weights) + "]"]

    cfg = pcfg.resolve(config, set_, seed=seed, device=device, online_teacher=online_teacher,
                       teacher_weights=teacher_weights,
                       model={"mask_mode": value(mask), "targets": value(targets), "temperature": temperature},
                       optim={"epochs": epochs, "batch_size": batch_size}, data={"workers": workers})
    result = run(cache, out, cfg, resume=resume, probe_cache=probe_cache, max_steps=max_steps)
    state = "stopped by signal (re-run the command to resume)" if result.stopped_by_signal else "done"
    typer.echo(f"pretrain {state}: step {result.step}, epoch {result.epoch}, checkpoint {result.run_dir / 'last.ckpt'}",
               err=True)
    if result.stopped_by_signal:
        from i2p.common.signals import EXIT_REQUEUE

        raise typer.Exit(EXIT_REQUEUE)  # progress saved; the exit status asks the scheduler to requeue

