"""``i2p convert``: official I2P-MAE / Point-M2AE checkpoints <-> i2p encoder exports; ``i2p
export``: the api's export command plus ``--format i2p-mae|point-m2ae`` (the official layout,
:mod:`i2p.official.export`). ``export`` is mounted from here because writing the official layout
needs this package, which sits above :mod:`i2p.api` in the layering; ``--format i2p`` (the
default) runs :func:`i2p.api.cli.export` unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from i2p.api.cli import CALIBRATE, DEVICE, POOL, SEED, SOURCE_HELP
from i2p.api.cli import export as export_i2p
from i2p.common.cli_options import Pool, existing_checkpoint
from i2p.common.errors import UserError

FORMATS = ("i2p-mae", "point-m2ae", "i2p")


def convert(
    src: Path = typer.Argument(..., help="official checkpoint file (--from i2p-mae|point-m2ae) or an i2p "
                                         "encoder export directory (--from i2p; what i2p.load_encoder takes)"),
    from_: str = typer.Option(..., "--from", help="i2p-mae | point-m2ae (official checkpoints) | i2p (an export directory)"),
    out: Path = typer.Option(..., "--out", help="output: export directory (model.safetensors + config.json), "
                                                "or with --to i2p-mae|point-m2ae an official checkpoint file"),
    model_config: Optional[Path] = typer.Option(None, "--model-config",
                                                help="official model config: YAML (the 'model:' section or a whole "
                                                     "official config) or JSON; default: the paper config of --from"),
    to: str = typer.Option("i2p", "--to", help="i2p (export directory, default) | i2p-mae | point-m2ae "
                                               "(official layout, with --from i2p)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output"),
) -> None:
    """Convert official I2P-MAE / Point-M2AE checkpoints into an i2p encoder export (loadable by
    i2p.load_encoder(DIR) and --ckpt DIR), or an export back into the official layout."""
    if from_ not in FORMATS:
        raise UserError(f"--from must be one of {', '.join(FORMATS)} (got {from_!r})")
    if to not in FORMATS:
        raise UserError(f"--to must be one of {', '.join(FORMATS)} (got {to!r})")
    if (from_ == "i2p") == (to == "i2p"):
        raise UserError("convert goes from an official format to i2p (--from i2p-mae|point-m2ae) "
                        "or from i2p to an official format (--from i2p --to i2p-mae|point-m2ae)")
    if out.exists() and not overwrite and (out.is_file() or any(out.iterdir())):
        raise UserError(f"{out} already exists (pass --overwrite to replace it)")
    if from_ != "i2p":
        from i2p.api.export import read_export
        from i2p.official.convert import convert_to_dir

        path = convert_to_dir(src, from_, out, model_config)
        _, config = read_export(path)  # read back as every loader will (sha256 checked)
        prov = config["provenance"]
        typer.echo(f"converted {src} ({from_}, {prov['dropped_keys']['clip_model']} clip_model and "
                   f"{prov['dropped_keys']['decoder_and_heads']} decoder/head keys dropped): encoder "
                   f"{prov['encoder_parameters']:,} parameters, dims {config['architecture']['enc_dims']}, "
                   f"pooling {config['pooling']} -> {path}", err=True)
        return
    if model_config is not None:
        raise UserError("--model-config applies to official sources only; an export holds its own config")
    from i2p.api.loading import load_encoder
    from i2p.official.convert import write_official_checkpoint

    enc = load_encoder(src, "cpu")  # the one loader: an export directory (or an i2p checkpoint / run)
    path = write_official_checkpoint(enc.state_dict(), enc.config, out, source=to)
    typer.echo(f"wrote the encoder of {src} in the official {to} layout ('module.' keys, as released; the official "
               f"fine-tuning loader needs them unprefixed: i2p export --format {to}) -> {path}", err=True)


def export(ckpt: str = typer.Option(..., "--ckpt", callback=existing_checkpoint, help=SOURCE_HELP),
           out: Path = typer.Option(..., "--out", help="export directory to write"),
           pool: Optional[Pool] = POOL, calibrate: Optional[str] = CALIBRATE,
           points: Optional[int] = typer.Option(None, "--points", help="points per calibration shape "
                                                                       "(default: the training point count)"),
           seed: int = SEED, device: str = DEVICE,
           format_: str = typer.Option("i2p", "--format", help="i2p (default: model.safetensors + config.json) | "
                                       "i2p-mae | point-m2ae (the official checkpoint layout: OUT/FORMAT.pth + "
                                       "OUT/FORMAT.yaml, the official model: section)"),
           module_prefix: bool = typer.Option(False, "--module-prefix",
                                              help="official formats: 'module.'-prefixed keys (nn.DataParallel, "
                                                   "as the released files); the official fine-tuning loaders need "
                                                   "them unprefixed"),
           ) -> None:
    """Export the encoder: OUT/model.safetensors (encoder weights only) + config.json + README.md.

    Load it with `i2p.load_encoder(OUT)` or pass OUT to `i2p embed` / `i2p eval --ckpt`; loading reads json and safetensors only (no pickle).
    --format i2p-mae|point-m2ae writes the official checkpoint layout instead: the whole pre-training model of a run with the official architecture and decoder, else the encoder."""  # noqa: E501
    if format_ == "i2p":
        if module_prefix:
            raise UserError("--module-prefix applies to --format i2p-mae|point-m2ae only")
        return export_i2p(ckpt, out, pool, calibrate, points, seed, device)
    if format_ not in FORMATS[:2]:
        raise UserError(f"--format must be one of i2p, {', '.join(FORMATS[:2])} (got {format_!r})")
    given = [name for name, v in (("--pool", pool), ("--calibrate", calibrate), ("--points", points)) if v is not None]
    if given:
        raise UserError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --format i2p only: "
                        f"the official layout records no pooling and no calibration")
    from i2p.official.export import export_official

    res = export_official(ckpt, out, format_, module_prefix=module_prefix)
    what = "whole pre-training model" if res.whole_model else "encoder"
    typer.echo(f"exported the {what} of {ckpt} in the official {format_} layout ({res.keys} keys, "
               f"{res.parameters:,} parameters) -> {res.checkpoint} + {res.config.name}")
    if res.note:
        typer.echo(f"encoder only: {res.note}", err=True)
