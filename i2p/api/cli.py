"""``i2p export`` and ``i2p embed``: the encoder as a product, from the command line.

Only option parsing here; the work is in :mod:`i2p.api.export` and :mod:`i2p.api.embed`
(imported inside the commands, so ``i2p --help`` does not import torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from i2p.common.cli_options import Pool, Split, existing_checkpoint, value

SOURCE_HELP = ("a checkpoint of `i2p pretrain` (RUN/last.ckpt), a run directory (its last.ckpt) or an export "
               "directory (`i2p export` / `i2p convert`)")
POOL = typer.Option(None, "--pool", help="pooling of the coarsest tokens: meanmax = mean and max concatenated, "
                                         "mean_plus_max = summed (default: the export's, else max)")
CALIBRATE = typer.Option(None, "--calibrate", metavar="SPEC",
                         help="re-estimate BatchNorm statistics on up to 512 shapes of SPEC's train split first "
                              "(labels unused), as `i2p eval` does")
SEED = typer.Option(0, "--seed", help="seed of the readers' point sampling")
DEVICE = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N")


def export(ckpt: str = typer.Option(..., "--ckpt", callback=existing_checkpoint, help=SOURCE_HELP),
           out: Path = typer.Option(..., "--out", help="export directory to write"),
           pool: Optional[Pool] = POOL, calibrate: Optional[str] = CALIBRATE,
           points: Optional[int] = typer.Option(None, "--points", help="points per calibration shape "
                                                                       "(default: the training point count)"),
           seed: int = SEED, device: str = DEVICE) -> None:
    """Export the encoder: OUT/model.safetensors (encoder weights only) + config.json + README.md.

    Load it with `i2p.load_encoder(OUT)` or pass OUT to `i2p embed` / `i2p eval --ckpt`; loading reads json and safetensors only (no pickle)."""  # noqa: E501
    import json

    from i2p.api.export import CONFIG, export_encoder

    out_dir = export_encoder(ckpt, out, pool=value(pool), calibrate=calibrate, points=points, seed=seed, device=device)
    cfg = json.loads((out_dir / CONFIG).read_text())
    typer.echo(f"exported {ckpt} -> {out_dir} ({cfg['weights']['parameters']:,} parameters, "
               f"embedding {cfg['embedding_dim']}, point features {cfg['point_feature_dim']})")


def embed(ckpt: str = typer.Option(..., "--ckpt", callback=existing_checkpoint, help=SOURCE_HELP),
          data: str = typer.Option(..., "--data", help="data spec, e.g. meshes:DIR, builtin:primitives"),
          out: Path = typer.Option(..., "--out", help="FILE.npy (+ FILE.ids.json), FILE.npz or FILE.parquet"),
          split: Split = typer.Option(Split.test, "--split", help="data split to embed"),
          points: Optional[int] = typer.Option(None, "--points",
                                               help="points per shape (default: 2048 ScanObjectNN, else 1024)"),
          pool: Optional[Pool] = POOL, calibrate: Optional[str] = CALIBRATE, seed: int = SEED,
          batch_size: int = typer.Option(32, "--batch-size", help="shapes per forward pass"),
          device: str = DEVICE,
          progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar")) -> None:
    """Embed every shape of a data split: one row per shape with its id and label.

    .npy: the [N, D] float32 matrix, ids/labels/classes in FILE.ids.json; .npz: arrays embeddings, ids, labels, classes, meta; .parquet (needs pyarrow): columns id, label, label_name, embedding."""  # noqa: E501
    from i2p.api.embed import embed_dataset

    res = embed_dataset(ckpt, data, out, split=value(split), points=points, pool=value(pool), batch_size=batch_size,
                        device=device, seed=seed, calibrate=calibrate, progress=progress)
    skipped = f", {res['skipped']} skipped" if res["skipped"] else ""
    typer.echo(f"{res['rows']} embeddings of dim {res['dim']}{skipped} -> {', '.join(res['files'])}")
