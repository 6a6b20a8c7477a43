"""``i2p embed`` (the command): option parsing only; the work is in :mod:`i2p.stage3_eval.embed`,
imported inside the command so that ``i2p --help`` imports neither numpy nor torch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from i2p.api.cli import CALIBRATE, DEVICE, POOL, SEED, SOURCE_HELP
from i2p.common.cli_options import Pool, Split, existing_checkpoint, value


def embed(ckpt: str = typer.Option(..., "--ckpt", callback=existing_checkpoint, help=SOURCE_HELP),
          data: str = typer.Option(..., "--data", help="data spec, e.g. meshes:DIR, builtin:primitives"),
          out: Path = typer.Option(..., "--out", help="FILE.npy (+ FILE.ids.json), FILE.npz or FILE.parquet"),
          split: Split = typer.Option(Split.test, "--split", help="data split to embed"),
          points: Optional[int] = typer.Option(None, "--points",
                                               help="points per shape (default: 2048, what every frozen-feature protocol reads)"),
          pool: Optional[Pool] = POOL, calibrate: Optional[str] = CALIBRATE, seed: int = SEED,
          batch_size: int = typer.Option(32, "--batch-size", help="shapes per forward pass"),
          device: str = DEVICE,
          progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar")) -> None:
    """Embed every shape of a data split: one row per shape with its id and label.

    .npy: the [N, D] float32 matrix, ids/labels/classes in FILE.ids.json; .npz: arrays embeddings, ids, labels, classes, meta; .parquet (needs pyarrow): columns id, label, label_name, embedding."""  # noqa: E501
    from i2p.stage3_eval.embed import embed_dataset

    res = embed_dataset(ckpt, data, out, split=value(split), points=points, pool=value(pool), batch_size=batch_size,
                        device=device, seed=seed, calibrate=calibrate, progress=progress)
    skipped = f", {res['skipped']} skipped" if res["skipped"] else ""
    typer.echo(f"{res['rows']} embeddings of dim {res['dim']}{skipped} -> {', '.join(res['files'])}")
