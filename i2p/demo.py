"""``i2p demo``: the whole pipeline on the built-in shapes, end to end, in minutes on a CPU.

Stage 1 builds a cache of ``builtin:primitives`` with the offline ``effnet-lite2`` teacher,
stage 2 pre-trains the ``tiny`` model on it (with a periodic linear probe), stage 3 runs a
linear SVM and few-shot episodes for the pretrained encoder AND for a randomly initialised one
(the floor a pretrained encoder must beat), and a self-contained HTML report ties it together.

Every stage resumes: the cache build and pre-training pick up where they stopped, an
evaluation whose ``result.json`` exists (for the same checkpoint) is not run again, and the
report is always rewritten. Layout of ``--out DIR``::

    DIR/cache/            stage-1 cache (train split)
    DIR/run/              pre-training run (config.yaml, metrics.jsonl, last.ckpt)
    DIR/eval/<name>/      result.json, result.md, confusion.png per evaluation
    DIR/report.html       the report; DIR/report-figures/*.png its figures
    DIR/demo.json         what ran, how long each stage took
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import typer

DEMO_DATA = "builtin:primitives?n_train=10&n_test=5"
DEMO_TEACHER = "effnet-lite2"
DEMO_POINTS = 1024
DEMO_EPOCHS = 6


@dataclass
class DemoPlan:
    out: str
    data: str = DEMO_DATA
    teacher: str = DEMO_TEACHER
    teacher_weights: Optional[str] = None
    points: int = DEMO_POINTS
    epochs: int = DEMO_EPOCHS
    batch_size: int = 16
    device: str = "auto"
    seed: int = 0
    way: int = 5
    shot: int = 10
    query: int = 5
    folds: int = 10
    figures: int = 2
    workers: int = 0
    probe_every: int = 2  # epochs between linear-probe points (monitoring)
    progress: bool = True
    overrides: list = field(default_factory=list)  # extra --set for the pretrain config


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


class _Stages:
    """Banners with elapsed time, and per-stage wall times for demo.json."""

    def __init__(self, console, total: int):
        self.console, self.total, self.n = console, total, 0
        self.t0 = time.perf_counter()
        self.times: dict[str, float] = {}
        self._name, self._start = None, None

    def start(self, name: str, what: str) -> None:
        self.finish()
        self.n += 1
        self._name, self._start = name, time.perf_counter()
        el = time.perf_counter() - self.t0
        self.console.rule(f"[bold cyan]{self.n}/{self.total} {name}[/]")
        self.console.print(f"[dim]{what} ({el:.0f}s elapsed)[/]")

    def finish(self) -> None:
        if self._name is not None:
            self.times[self._name] = round(time.perf_counter() - self._start, 1)
            self._name = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def _eval_done(result_dir: Path, ckpt: str) -> dict | None:
    """The existing result for ``ckpt`` (by sha256 for a file, by name for 'random'), else None."""
    from i2p.common.checkpoint import file_sha256

    path = result_dir / "result.json"
    if not path.is_file():
        return None
    try:
        res = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    ck = res.get("checkpoint") or {}
    if ckpt == "random":
        return res if ck.get("path") == "random" else None
    return res if ck.get("sha256") == file_sha256(ckpt) else None


def _teacher_bar(bcfg):
    """A shape-level bar for stage 1 (the build's own bar moves once per 64-shape shard)."""
    from tqdm.auto import tqdm

    from i2p.cache import store as cs
    from i2p.common.datasets import create_dataset
    from i2p.common.errors import UserError

    total = len(create_dataset(bcfg.data, split=bcfg.split, num_points=bcfg.points, seed=bcfg.seed))
    done = 0
    try:
        root = cs.open_store(bcfg.out)
        layout = cs.layout_of(root)
        done = sum(hi - lo for lo, hi in map(layout.shard_range, cs.done_shards(root)))
    except (UserError, KeyError, OSError):
        pass
    return tqdm(total=total, initial=min(done, total), unit="shape", desc="cache build", dynamic_ncols=True)


def _counting(factory: Callable | None, bar) -> Callable | None:
    """A teacher factory whose teacher advances ``bar`` by the shapes of every forward."""
    if bar is None:
        return factory

    def make(name, weights=None, device="cpu"):
        from i2p.stage1_project.projection import VIEW_AXES
        from i2p.stage1_project.teachers import create_teacher

        teacher = (factory or create_teacher)(name, weights=weights, device=device)

        def advance(_module, args, _out):  # returns None: the output is left as it is
            bar.update(int(args[0].shape[0]) // len(VIEW_AXES))

        teacher.register_forward_hook(advance)
        return teacher

    return make


def _stage1(plan: DemoPlan, out: Path, teacher_factory: Callable | None, console) -> Path:
    """Build (or finish) the cache; refuses to go on with an incomplete one."""
    from i2p.common.errors import UserError
    from i2p.stage1_project.build import BuildConfig, build_cache, summary_line

    cache = out / "cache"
    bcfg = BuildConfig(data=plan.data, out=str(cache), teacher=plan.teacher, teacher_weights=plan.teacher_weights,
                       split="train", points=plan.points, batch_size=16, device=plan.device, seed=plan.seed,
                       progress=False)
    bar = _teacher_bar(bcfg) if plan.progress else None
    try:
        report = build_cache(bcfg, teacher_factory=_counting(teacher_factory, bar))
    finally:
        if bar is not None:
            bar.close()
    console.print(summary_line(report))
    if not report.complete:
        raise UserError(f"cache {cache} is incomplete (stopped by {report.stopped_by_signal}); re-run to finish")
    return cache


def _stage2(plan: DemoPlan, out: Path, cache: Path, console) -> str:
    """Pre-train (or resume) the tiny model with a periodic probe; returns the checkpoint."""
    from i2p.stage2_pretrain import config as pcfg
    from i2p.stage2_pretrain.train import pretrain

    cfg = pcfg.resolve("tiny", list(plan.overrides), seed=plan.seed, device=plan.device,
                       optim={"epochs": plan.epochs, "batch_size": plan.batch_size},
                       data={"workers": plan.workers},
                       log={"progress": plan.progress, "probe_every_epochs": plan.probe_every})
    run = out / "run"
    result = pretrain(str(cache), str(run), cfg, probe_cache=str(cache))
    ckpt = str(run / "last.ckpt")
    console.print(f"pretrain: step {result.step}, epoch {result.epoch} -> {ckpt}")
    return ckpt


def _stage3(plan: DemoPlan, out: Path, ckpt: str, console) -> tuple[list[Path], list[tuple[str, str]]]:
    """SVM and few-shot for the pretrained and the random-init encoder (a result for the same
    checkpoint is reused); returns the result directories and (name, headline) rows."""
    from i2p.stage3_eval import runner
    from i2p.stage3_eval.report import headline

    common = dict(points=plan.points, seed=plan.seed, device=plan.device, preset="tiny", progress=plan.progress)
    jobs = []
    for who, ck in (("pretrained", ckpt), ("random", "random")):
        jobs.append((f"svm-{who}", ck, lambda d, ck=ck: runner.svm(ck, plan.data, str(d), **common)))
        jobs.append((f"fewshot-{who}", ck, lambda d, ck=ck: runner.fewshot(
            ck, plan.data, str(d), way=plan.way, shot=plan.shot, query=plan.query, folds=plan.folds, **common)))
    evals, rows = [], []
    for name, ck, job in jobs:
        d = out / "eval" / name
        res = _eval_done(d, ck)
        if res is not None:
            console.print(f"[dim]{name}: reusing {d / 'result.json'}[/]")
        else:
            console.print(f"[bold]{name}[/] ...")
            res = job(d)
        console.print(f"  {name}: {headline(res)}")
        rows.append((name, headline(res)))
        evals.append(d)
    return evals, rows


def _write_report(plan: DemoPlan, out: Path, cache: Path, evals: list[Path]) -> Path:
    from i2p.report.html import build_report

    bar = None
    if plan.progress and plan.figures > 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=2 * plan.figures, unit="figure", desc="figures", dynamic_ncols=True)
    try:
        return build_report(out / "run", out / "report.html", evals, cache=str(cache), samples=plan.figures,
                            title="i2p demo report", progress=(lambda: bar.update(1)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()


def _write_summary(plan: DemoPlan, out: Path, stages: _Stages, ckpt: str, html: Path, rows: list) -> dict:
    """demo.json: the plan, each stage's wall time (and those of earlier invocations), results."""
    from i2p.common.atomic import read_json, write_json

    summary = {"plan": asdict(plan), "stage_seconds": stages.times, "total_seconds": round(stages.elapsed(), 1),
               "checkpoint": ckpt, "report": str(html), "results": dict(rows)}
    old = read_json(out / "demo.json")
    history = []
    if isinstance(old, dict):  # keep the timings of earlier (interrupted or resumed) invocations
        history = old.get("history", []) + [{k: old.get(k) for k in ("stage_seconds", "total_seconds", "finished")}]
    summary["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    summary["history"] = history
    write_json(out / "demo.json", summary)
    return summary


def run_demo(plan: DemoPlan, teacher_factory: Callable | None = None) -> dict:
    """Run (or finish) the demo described by ``plan``; returns the summary written to demo.json."""
    from rich.table import Table

    console = _console()
    out = Path(plan.out).resolve()  # absolute: the checkpoint records the cache path for `i2p report`
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(console, 4)
    console.print(f"[bold]i2p demo[/] -> {out}\n"
                  f"  data {plan.data} | teacher {plan.teacher} | {plan.points} points | tiny model, "
                  f"{plan.epochs} epochs | SVM + {plan.way}-way {plan.shot}-shot vs random init\n"
                  "  re-running the same command resumes: finished stages are reused")
    stages.start("stage 1: cache build", f"{plan.teacher} on 3 depth views per shape")
    cache = _stage1(plan, out, teacher_factory, console)
    stages.start("stage 2: pretrain", f"tiny I2P-MAE, {plan.epochs} epochs, linear probe every {plan.probe_every}")
    ckpt = _stage2(plan, out, cache, console)
    stages.start("stage 3: evaluate", "linear SVM and few-shot; pretrained vs random init")
    evals, rows = _stage3(plan, out, ckpt, console)
    stages.start("report", "settings, curves, figures, results -> one HTML file")
    html = _write_report(plan, out, cache, evals)
    stages.finish()
    summary = _write_summary(plan, out, stages, ckpt, html, rows)

    table = Table(title="i2p demo results", show_header=True, header_style="bold")
    table.add_column("evaluation")
    table.add_column("accuracy")
    for name, head in rows:
        table.add_row(name, head.replace("accuracy ", ""))
    console.print(table)
    # Said on screen because the table invites a verdict it cannot give at these sizes (a fresh
    # run's figures are in the README).
    console.print(f"[dim]a smoke test of the pipeline, not a verdict: {plan.epochs} epochs on this small set are too "
                  "few for pretraining to beat random init (here random init may lead); docs/RESULTS.md has "
                  "the 3-seed comparisons[/]")
    console.print(f"[bold green]done[/] in {summary['total_seconds']:.0f}s; report: {html.resolve()}")
    return summary


def demo(
    out: Path = typer.Option(Path("i2p-demo"), "--out", help="output directory (re-running resumes)"),
    epochs: int = typer.Option(DEMO_EPOCHS, "--epochs", help="pre-training epochs"),
    data: str = typer.Option(DEMO_DATA, "--data", help="data spec (train and test splits)"),
    teacher: str = typer.Option(DEMO_TEACHER, "--teacher", help="2D teacher"),
    points: int = typer.Option(DEMO_POINTS, "--points", help="points per shape"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda"),
    seed: int = typer.Option(0, "--seed", help="seed of every stage"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bars"),
) -> None:
    """The whole pipeline on built-in shapes, with progress, in minutes on a CPU.

    Cache build (effnet-lite2) -> tiny pretrain -> SVM + few-shot against the random-init
    floor -> OUT/report.html. About 5 minutes on 2 CPU cores; re-running resumes."""
    run_demo(DemoPlan(out=str(out), data=data, teacher=teacher, points=points, epochs=epochs, device=device,
                      seed=seed, progress=progress))
