"""``i2p cache build|info|verify``."""

from __future__ import annotations

import json
from typing import Optional, Tuple

import typer

from i2p.common.cli_options import Projection, Split, TeacherInput, existing_path, existing_weights, value

app = typer.Typer(help="Stage 1: render views, run the frozen 2D teacher, store a Zarr cache.",
                  no_args_is_help=True)


@app.command()
def build(
    data: str = typer.Option(..., help="Data spec: builtin:primitives, meshes:DIR, shapenet55:DIR, "
                             "modelnet40:DIR, modelnet40-h5:DIR, scanobjectnn:DIR, npz:FILE"),
    out: str = typer.Option(..., help="Cache directory or fsspec URL"),
    teacher: str = typer.Option("effnet-lite2", help="clip-vitb16, effnet-lite2, timm:NAME, open_clip:ARCH:TAG"),
    teacher_weights: Optional[str] = typer.Option(None, callback=existing_weights,
                                                  help="FILE, or 'random' (recorded, warned)"),
    split: Split = typer.Option(Split.train, help="Split to read"),
    points: int = typer.Option(2048, min=16, help="Points per cloud"),
    batch_size: int = typer.Option(16, min=1, help="Shapes per teacher batch"),
    device: str = typer.Option("auto", help="auto, cpu, cuda"),
    shard: str = typer.Option("0/1", help="I/N: build shards s with s %% N == I (array jobs)"),
    limit: Optional[int] = typer.Option(None, help="Only the first N shapes"),
    overwrite: bool = typer.Option(False, help="Replace a cache built with other settings"),
    seed: int = typer.Option(0, help="Seed of point sampling"),
    read_workers: int = typer.Option(4, min=1, help="Threads reading shapes"),
    progress: bool = typer.Option(True, help="Show a progress bar"),
    projection: Projection = typer.Option(Projection.sum, help="Depth raster: sum (the paper's signed sum) or "
                                          "zbuffer (nearest depth)"),
    denoise: int = typer.Option(0, min=0, help="Average the teacher over the clean render and K jittered renders"),
    denoise_sigma: float = typer.Option(0.01, min=0.0, help="Std of the jitter of --denoise renders"),
    teacher_input: TeacherInput = typer.Option(TeacherInput.teacher, help="Normalisation of the teacher's "
                                               "input images: teacher (its own mean/std) or official (ImageNet's, "
                                               "as the official I2P-MAE feeds CLIP)"),
    aug_renders: int = typer.Option(0, min=0, help="Also store K renders per shape of seeded transformed copies of the "
                                    "cloud (train on them with --set data.aug_renders=true); 0 = none"),
    aug_scale: Tuple[float, float] = typer.Option((2 / 3, 3 / 2), help="LO HI: per-axis scale range of "
                                                  "--aug-renders"),
    aug_shift: float = typer.Option(0.2, help="Shift range (+-) of --aug-renders"),
    aug_rotate: float = typer.Option(0.0, help="Rotation range (+- degrees, about the y axis) of --aug-renders"),
    dask: Optional[str] = typer.Option(None, help="Spread shards over dask workers: local:K (K worker "
                                       "processes here) or tcp://HOST:PORT (a running scheduler)"),
) -> None:
    """Build (or finish: re-running does only missing shards) a feature cache.

    SIGTERM/SIGUSR1 finish the shard in progress and stop; re-running resumes."""
    from rich.console import Console

    from i2p.common.errors import UserError
    from i2p.stage1_project.aug_renders import AugRenders
    from i2p.stage1_project.build import BuildConfig, build_cache, parse_shard, summary_line

    cfg = BuildConfig(data=data, out=out, teacher=teacher, teacher_weights=teacher_weights, split=value(split),
                      points=points, batch_size=batch_size, device=device, shard=parse_shard(shard),
                      limit=limit, overwrite=overwrite, seed=seed, read_workers=read_workers, progress=progress,
                      projection=value(projection), denoise=denoise, denoise_sigma=denoise_sigma,
                      teacher_input=value(teacher_input),
                      aug=AugRenders(aug_renders, tuple(aug_scale), aug_shift, aug_rotate))
    if projection not in ("sum", "zbuffer"):
        raise UserError(f"--projection must be sum or zbuffer (got {projection!r})")
    if dask:
        from i2p.stage1_project.dask_build import build_cache_dask

        report = build_cache_dask(cfg, dask)
    else:
        report = build_cache(cfg)
    console = Console(stderr=True)
    console.print(summary_line(report))
    for worker, w in sorted(report.workers.items()):
        console.print(f"  dask worker {worker}: shards {w['shards']}, teacher created {w['teacher_created']}x")
    t = report.timings
    if sum(t.values()) > 0:
        console.print("phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    for s in report.skipped_samples[:20]:
        console.print(f"  skipped #{s['index']} {s['id']}: {s['reason']}")
    if len(report.skipped_samples) > 20:
        console.print(f"  ... and {len(report.skipped_samples) - 20} more (see `i2p cache info`)")


@app.command()
def info(path: str = typer.Argument(..., callback=existing_path, help="Cache directory or URL"),
         as_json: bool = typer.Option(False, "--json", help="Print JSON")) -> None:
    """Counts, classes, teacher and weights sha256, settings, skips, build throughput."""
    from rich.console import Console
    from rich.table import Table

    from i2p.cache.inspect import cache_info

    meta = cache_info(path)
    if as_json:
        typer.echo(json.dumps(meta, indent=2))
        return
    table = Table(title=f"i2p cache {path}", show_header=False)
    for key, value in meta.items():
        if key == "skips":
            value = f"{len(value)}" + "".join(f"\n#{s['index']} {s['id']}: {s['reason']}" for s in value[:10])
        elif key == "timings_s":
            value = ", ".join(f"{k} {v:.1f}" for k, v in value.items()) or "-"
        table.add_row(key, str(value))
    Console().print(table)


@app.command()
def verify(path: str = typer.Argument(..., callback=existing_path, help="Cache directory or URL"),
           progress: bool = typer.Option(True, help="Show a progress bar")) -> None:
    """Check every shard: built, readable, no unwritten sample, finite values (exit 1 if not)."""
    from i2p.cache.inspect import verify_cache

    problems = verify_cache(path, progress=progress)
    if problems:
        for p in problems:
            typer.echo(f"FAIL {p}", err=True)
        raise typer.Exit(1)
    typer.echo(f"OK {path}: every shard built, readable and finite")
