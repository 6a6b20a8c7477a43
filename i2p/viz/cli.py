"""``i2p viz sample|recon|partseg``: figures of one cached sample or of a part-segmentation result,
headless (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from i2p.common.cli_options import Mask, existing_path, value

app = typer.Typer(help="Figures: a sample's stage-1 images, saliency and masks; a checkpoint's reconstruction; "
                       "part segmentation, true vs predicted.",
                  no_args_is_help=True)


def render_sample(cache: str, index: int, out: str | Path, config: str | None = "paper", seed: int | None = None,
                  step: int = 0, temperature: float | None = None, epoch: int | None = None) -> Path:
    from i2p.viz.data import sample_viz
    from i2p.viz.figures import sample_figure, save_figure

    return save_figure(sample_figure(sample_viz(cache, index, config, seed, step, temperature, epoch)), out)


def render_recon(ckpt: str, cache: str, index: int, out: str | Path, seed: int | None = None, step: int = 0,
                 mask: str | None = None) -> Path:
    from i2p.common.errors import UserError
    from i2p.viz.data import load_model, load_sample, reconstruct
    from i2p.viz.figures import recon_figure, save_figure

    if mask not in (None, "saliency", "random"):
        raise UserError(f"--mask must be saliency or random (got {mask!r})")
    model, _, ck = load_model(ckpt)
    if seed is None:
        seed = int((ck.get("config") or {}).get("seed") or 0)
    rec = reconstruct(model, load_sample(cache, index), seed=seed, step=step, mode=mask, checkpoint=str(ckpt))
    return save_figure(recon_figure(rec), out)


@app.command("sample")
def sample_cmd(
    cache: str = typer.Option(..., "--cache", callback=existing_path, help="stage-1 cache directory or URL"),
    index: int = typer.Option(0, "--index", help="sample index in the cache"),
    out: Path = typer.Option(..., "--out", help="PNG file to write"),
    seed: Optional[int] = typer.Option(None, "--seed",
                                       help="run seed of the masking draw (default: the run's, else 0)"),
    step: int = typer.Option(0, "--step", help="training step whose draw to show"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="saliency softmax temperature T"),
    config: str = typer.Option("paper", "--config",
                               help="model sizes: preset (paper, tiny), a run dir / config.yaml, or a checkpoint"),
    epoch: Optional[int] = typer.Option(None, "--epoch",
                                        help="group in that epoch's augmented frame (the exact training step)"),
) -> None:
    """Depth images, teacher saliency, saliency cloud and masks of one cached shape.

    The stage-1 depth images, the teacher's saliency over them, the saliency cloud, and the
    visible/masked tokens at every level for one 2D-guided and one random draw."""
    path = render_sample(cache, index, out, config, seed, step, temperature, epoch)
    typer.echo(f"wrote {path}", err=True)


@app.command("recon")
def recon_cmd(
    ckpt: str = typer.Option(..., "--ckpt", callback=existing_path, help="pretrain checkpoint (last.ckpt)"),
    cache: str = typer.Option(..., "--cache", callback=existing_path, help="stage-1 cache directory or URL"),
    index: int = typer.Option(0, "--index", help="sample index in the cache"),
    out: Path = typer.Option(..., "--out", help="PNG file to write"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed of the masking draw (default: the run's)"),
    step: int = typer.Option(0, "--step", help="training step whose draw to use"),
    mask: Optional[Mask] = typer.Option(None, "--mask", help="masking to draw (default: the run's)"),
) -> None:
    """Input, visible points and the checkpoint's prediction of the masked tokens."""
    path = render_recon(ckpt, cache, index, out, seed, step, value(mask))
    typer.echo(f"wrote {path}", err=True)


@app.command("partseg")
def partseg_cmd(
    result: Path = typer.Option(..., "--result", callback=existing_path,
                                help="result directory of `i2p eval partseg` (holds partseg_samples.npz)"),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG file to write (default RESULT/partseg.png)"),
    count: int = typer.Option(4, "--count", min=1, help="test shapes to show (one row each)"),
) -> None:
    """Test shapes coloured by true and by predicted part, side by side, with each shape's IoU."""
    from i2p.viz.partseg import render_partseg

    typer.echo(f"wrote {render_partseg(result, out, count)}", err=True)
