"""``i2p eval``: the stage-3 protocols as a typer sub-app.

The lead's CLI mounts it with ``app.add_typer(stage3_eval.cli.app, name="eval")`` and turns
:class:`~i2p.common.errors.UserError` into one line and exit code 2; this module only parses
options, calls :mod:`i2p.stage3_eval.runner` and prints the headline and a table with rich.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from i2p.common.cli_options import (
    EpisodesFrom, FewshotMode, FinetuneRecipe, PartsegPreset, Pool, Preset, Sampling, SelectOn, Solver, Vote,
    existing_checkpoint, existing_path, existing_weights, value,
)
from i2p.common.errors import UserError

app = typer.Typer(help="Stage 3: evaluate a pretrained (or random) encoder: linear SVM, few-shot, "
                       "kNN, fine-tune, part segmentation; compare results.", no_args_is_help=True)
console = Console()

CKPT = typer.Option(..., "--ckpt", callback=existing_checkpoint, help="checkpoint file, run directory (its last.ckpt), export directory (`i2p export` / `i2p convert`), 'random' (random init), or teacher:NAME (the 2D teacher's own pooled features: the ceiling)")
DATA = typer.Option(..., "--data", help="data spec, e.g. builtin:primitives, modelnet40:DIR")
POINTS = typer.Option(None, "--points", help="points per shape (default: 2048; with --sampling official the paper's: ScanObjectNN 2048, else 1024)")
POOL = typer.Option(None, "--pool", help="token pooling: meanmax = mean and max concatenated, mean_plus_max = summed, mean = mean only, levels = mean and max of every level concatenated (default: levels; max with --sampling official; meanmax for teacher:NAME; an export directory's own)")
SEED = typer.Option(0, "--seed", help="seed for point sampling, random init, CV folds and episodes")
DEVICE = typer.Option("auto", "--device", help="auto | cpu | cuda")
BATCH = typer.Option(32, "--batch-size", help="shapes per encoder forward pass")
PRESET = typer.Option(Preset.tiny, "--preset", help="architecture of --ckpt random")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="show tqdm progress bars")
TEACHER_WEIGHTS = typer.Option(None, "--teacher-weights", callback=existing_weights,
                               help="with --ckpt teacher:NAME: the teacher's weights FILE or 'random' "
                               "(default: its own source, as in i2p cache build)")


def _out(out: Optional[Path], name: str) -> Path:
    return out if out is not None else Path("runs") / "eval" / name


def _show(result: dict) -> None:
    from i2p.stage3_eval.report import headline, summary_rows

    if result.get("warning"):
        console.print(f"[bold red]WARNING: {result['warning']}[/]")
    console.print(f"[bold green]{result['protocol']}[/] {result['data']}: [bold]{headline(result)}[/]")
    table = Table(show_header=True, header_style="bold")
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key, value in summary_rows(result):
        table.add_row(key, value)
    console.print(table)
    console.print(f"written to {Path(result['files']['json']).parent}")


def _c_value(C: str) -> str | float:
    if C == "auto":
        return C
    try:
        value = float(C)
    except ValueError:
        raise UserError(f"--C must be 'auto' or a positive number (got {C!r})") from None
    if not value > 0:
        raise UserError(f"--C must be positive (got {C})")
    return value


@app.command("svm")
def svm_cmd(ckpt: str = CKPT, data: str = DATA, points: Optional[int] = POINTS, pool: Optional[Pool] = POOL,
            C: str = typer.Option("auto", "--C", help="'auto' (CV on train only) or a number"),
            folds: int = typer.Option(5, "--cv-folds", help="folds of the C cross-validation"),
            solver: Solver = typer.Option(Solver.svc, "--solver", help="svc (libsvm, paper's C) or liblinear"),
            sampling: Sampling = typer.Option(Sampling.i2p, "--sampling", help="i2p: each reader's seeded subset of the re-centred, re-scaled cloud | official: the first --points stored points, not re-normalised, encoded as given (the official SVM input; readers with a stored order: modelnet40-h5, scanobjectnn, npz, shapenet55, modelnet40)"),
            seed: int = SEED, out: Optional[Path] = typer.Option(None, "--out", help="result directory"),
            device: str = DEVICE, batch_size: int = BATCH, preset: Preset = PRESET,
            progress: bool = PROGRESS, teacher_weights: Optional[str] = TEACHER_WEIGHTS) -> None:
    """Linear SVM on frozen features; C by cross-validation on train, paper's C beside."""
    from i2p.stage3_eval import runner

    _show(runner.svm(ckpt, data, str(_out(out, "svm")), points, value(pool), _c_value(C), seed, device,
                     batch_size, folds, value(solver), value(preset), progress, value(sampling),
                     teacher_weights))


@app.command("knn")
def knn_cmd(ckpt: str = CKPT, data: str = DATA, points: Optional[int] = POINTS, pool: Optional[Pool] = POOL,
            k: int = typer.Option(20, "--k", help="neighbours"),
            vote: Vote = typer.Option(Vote.majority, "--vote", help="neighbour vote"),
            seed: int = SEED, out: Optional[Path] = typer.Option(None, "--out", help="result directory"),
            device: str = DEVICE, batch_size: int = BATCH, preset: Preset = PRESET,
            progress: bool = PROGRESS, teacher_weights: Optional[str] = TEACHER_WEIGHTS) -> None:
    """kNN probe (exact cosine: faiss when installed, else torch) on frozen features."""
    from i2p.stage3_eval import runner

    _show(runner.knn(ckpt, data, str(_out(out, "knn")), points, value(pool), k, value(vote), seed, device,
                     batch_size, value(preset), progress, teacher_weights))


@app.command("fewshot")
def fewshot_cmd(ckpt: str = CKPT,
                data: Optional[str] = typer.Option(None, "--data", help="data spec (or use --fold-dir)"),
                way: int = typer.Option(5, "--way"), shot: int = typer.Option(10, "--shot"),
                folds: int = typer.Option(10, "--folds"),
                query: int = typer.Option(20, "--query", help="test shapes per class"),
                mode: FewshotMode = typer.Option(FewshotMode.linear, "--mode",
                                                 help="linear (SVM on frozen features) or finetune"),
                fold_dir: Optional[Path] = typer.Option(None, "--fold-dir", callback=existing_path,
                                                        help="Point-BERT ModelNetFewshot folds: DIR/{way}way_{shot}shot/{fold}.pkl"),
                episodes_from: EpisodesFrom = typer.Option(EpisodesFrom.split, "--episodes-from",
                                                  help="split: support from train, query from test | all: pool both"),
                C: str = typer.Option("0.0093", "--C", help="SVM C per episode, or 'auto' (CV on the support set)"),
                points: Optional[int] = POINTS, pool: Optional[Pool] = POOL, seed: int = SEED,
                out: Optional[Path] = typer.Option(None, "--out", help="result directory"),
                device: str = DEVICE, batch_size: int = BATCH, preset: Preset = PRESET,
                progress: bool = PROGRESS, teacher_weights: Optional[str] = TEACHER_WEIGHTS) -> None:
    """N-way K-shot episodes; mean ± std accuracy over folds."""
    from i2p.stage3_eval import runner

    _show(runner.fewshot(ckpt, data, str(_out(out, f"fewshot_{way}way_{shot}shot")), way, shot, query,
                         folds, value(mode), str(fold_dir) if fold_dir else None, points, value(pool),
                         _c_value(C), seed, device, batch_size, value(episodes_from), value(preset), progress,
                         teacher_weights))


@app.command("compare")
def compare_cmd(results: List[Path] = typer.Argument(..., callback=existing_path, help="result.json files or their directories"),
                markdown: bool = typer.Option(False, "--markdown", help="print the Markdown table instead")) -> None:
    """One table across results."""
    from i2p.stage3_eval.report import COMPARE_HEADER, compare, compare_rows

    if markdown:
        typer.echo(compare(results), nl=False)
        return
    rows = compare_rows(results)
    table = Table(show_header=True, header_style="bold")
    for h in COMPARE_HEADER:
        table.add_column(h, overflow="fold")
    for r in rows:
        table.add_row(*r)
    console.print(table)


def _radii(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--local-radii must be comma-separated numbers (got {text!r})") from None
    return vals if any(v > 0 for v in vals) else ()


@app.command("finetune")
def finetune_cmd(ckpt: str = CKPT, data: str = DATA, points: Optional[int] = POINTS,
                 recipe: Optional[FinetuneRecipe] = typer.Option(
                     None, "--recipe", help="the official hyper-parameters of one data set (epochs, batch, LR, "
                     "schedule, loss, clipping, head, groups, radii, points, augmentation, votes; "
                     "docs/FIDELITY.md); options given here still win. Default: i2p's"),
                 epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="[default: 300]"),
                 batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="[default: 32]"),
                 lr: Optional[float] = typer.Option(None, "--lr", help="[default: 5e-4]"),
                 weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="[default: 0.05]"),
                 warmup: Optional[int] = typer.Option(None, "--warmup-epochs", help="[default: 10]"),
                 smoothing: Optional[float] = typer.Option(None, "--label-smoothing", help="[default: 0.2]"),
                 dropout: Optional[float] = typer.Option(None, "--dropout", help="[default: 0.5]"),
                 val_frac: float = typer.Option(0.1, "--val-frac", help="share of train held out for selection"),
                 select_on: SelectOn = typer.Option(SelectOn.val, "--select-on",
                                                    help="val, test (best-on-test: flagged in the report) or last"),
                 votes: Optional[int] = typer.Option(None, "--vote", min=1,
                                                     help="test-time voting passes (1 = none) [default: 1]"),
                 local_radii: Optional[str] = typer.Option(None, "--local-radii",
                                                           help="attention radius per level; 0 = global attention "
                                                           "[default: 0.32,0.64,1.28]"),
                 seed: int = SEED, out: Optional[Path] = typer.Option(None, "--out", help="result and checkpoint directory"),
                 device: str = DEVICE, resume: bool = typer.Option(True, "--resume/--no-resume",
                                                                   help="continue OUT/last.ckpt when present"),
                 preset: Preset = PRESET, progress: bool = PROGRESS) -> None:
    """Fine-tune encoder + MLP head; select on a validation split carved from train."""
    from i2p.stage3_eval import finetune_presets, runner

    rc = finetune_presets.resolve(value(recipe), points=points, epochs=epochs, batch_size=batch_size, lr=lr,
                                  weight_decay=weight_decay, warmup=warmup, smoothing=smoothing, dropout=dropout,
                                  votes=votes, local_radii=None if local_radii is None else _radii(local_radii))
    from i2p.common.signals import EXIT_REQUEUE, StoppedBySignal

    try:
        result = runner.finetune(ckpt, data, str(_out(out, "finetune")), rc.points, rc.epochs, rc.batch_size, rc.lr,
                                 rc.weight_decay, rc.warmup, rc.smoothing, rc.dropout, val_frac, value(select_on),
                                 rc.votes, rc.local_radii, seed, device, resume, value(preset), progress,
                                 recipe=rc if recipe is not None else None)
    except StoppedBySignal as stop:  # progress saved; the exit status asks the scheduler to requeue
        typer.echo(str(stop), err=True)
        raise typer.Exit(EXIT_REQUEUE) from None
    _show(result)


@app.command("partseg")
def partseg_cmd(ckpt: str = CKPT,
                data: str = typer.Option(..., "--data", help="data with part labels: shapenetpart:DIR or builtin:primitives"),
                preset: PartsegPreset = typer.Option(PartsegPreset.default, "--preset",
                                                     help="recipe: default (i2p's, CPU-sized head) or paper "
                                                     "(Point-M2AE's: 300 epochs, batch 16, lr 2e-4, full head); "
                                                     "options given here still win"),
                epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="epochs (default 100; paper 300)"),
                batch_size: Optional[int] = typer.Option(None, "--batch-size", min=2, help="shapes per step (default 16)"),
                points: Optional[int] = typer.Option(None, "--points", min=1, help="points per shape (default 2048)"),
                lr: Optional[float] = typer.Option(None, "--lr", help="base learning rate (default 5e-4; paper 2e-4)"),
                arch: Optional[Preset] = typer.Option(None, "--arch", help="architecture of --ckpt random "
                                                      "(default tiny; paper with --preset paper)"),
                val_frac: float = typer.Option(0.1, "--val-frac", help="share of train held out for selection "
                                               "when the data has no val split"),
                seed: int = SEED, out: Optional[Path] = typer.Option(None, "--out", help="result and checkpoint directory"),
                device: str = DEVICE, resume: bool = typer.Option(True, "--resume/--no-resume",
                                                                  help="continue OUT/last.ckpt when present"),
                progress: bool = PROGRESS) -> None:
    """Part segmentation: encoder + per-point head; class and instance mIoU, epoch selected on val."""
    from i2p.stage3_eval import partseg, partseg_train

    rc = partseg_train.resolve(value(preset), epochs=epochs, batch_size=batch_size, points=points, lr=lr,
                               arch=value(arch))
    _show(partseg.run(ckpt, data, str(_out(out, "partseg")), rc, seed=seed, device=device, resume=resume,
                      progress=progress, val_frac=val_frac))
