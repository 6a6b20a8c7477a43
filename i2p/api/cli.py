"""``i2p export``: the encoder as a product, from the command line (``i2p embed``, which reads
data sets, lives with stage 3 in :mod:`i2p.stage3_eval.embed` and shares these options).

Only option parsing here; the work is in :mod:`i2p.api.export` (imported inside the command,
so ``i2p --help`` does not import torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from i2p.common.cli_options import Pool, existing_checkpoint, value

SOURCE_HELP = ("a checkpoint of `i2p pretrain` (RUN/last.ckpt), a run directory (its last.ckpt) or an export "
               "directory (`i2p export` / `i2p convert`)")
POOL = typer.Option(None, "--pool", help="token pooling: levels = mean and max of every level concatenated, "
                                         "max / meanmax (mean and max concatenated) / mean_plus_max (summed) / mean of "
                                         "the coarsest tokens (default: the export's, else levels)")
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

    from i2p.api.export import CONFIG
    from i2p.api.export_run import export_encoder

    out_dir = export_encoder(ckpt, out, pool=value(pool), calibrate=calibrate, points=points, seed=seed, device=device)
    cfg = json.loads((out_dir / CONFIG).read_text())
    typer.echo(f"exported {ckpt} -> {out_dir} ({cfg['weights']['parameters']:,} parameters, "
               f"embedding {cfg['embedding_dim']}, point features {cfg['point_feature_dim']})")
