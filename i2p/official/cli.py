"""``i2p convert``: official I2P-MAE / Point-M2AE checkpoints <-> i2p encoder exports."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

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
    typer.echo(f"wrote the encoder of {src} in the official {to} layout -> {path}", err=True)
