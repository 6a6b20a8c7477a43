"""A study's job graph: every job as the ``i2p`` command a person could type, with
the check that says it is done and the jobs it waits for (run by :mod:`i2p.study.runner`).

Jobs: ``cache/srcI`` (``i2p cache build``: the pretraining data the study caches itself, once),
``data/seedS`` (``i2p study materialize``: the eval clouds of seed S, once), ``masking``
(``i2p study masking``), ``init/V/seedS`` (``i2p study init-encoder``: the random-init
baseline), ``pretrain/V/seedS`` (``i2p pretrain ... --seed S``), ``svm/V/seedS`` and
``fewshot/V/seedS`` (``i2p eval svm|fewshot --seed S``; ``--ckpt teacher:NAME`` for a teacher
variant, the 2D ceiling on the same clouds).

Done rule: the outputs are complete AND were made by the same command (recorded in
``DIR/study.json``): a pretrain run when its ``last.ckpt`` reached the planned step count; an
evaluation when its ``result.json`` exists and names the sha256 of the checkpoint that is there
now. A pretrain run directory made by a different command is refused (its task's ``guard``).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from i2p.common.atomic import read_json
from i2p.common.errors import UserError
from i2p.study.config import StudyConfig, Variant, resolve_pretrain

STATE = "study.json"


class StudyError(UserError):
    pass


@dataclass
class Task:
    id: str
    kind: str
    argv: list[str]  # after "python -m i2p"
    deps: list[str] = field(default_factory=list)
    done: Callable[[], bool] = lambda: False
    guard: Callable[[], None] | None = None  # raises StudyError when outputs clash
    order: tuple = ()

    @property
    def command(self) -> str:
        return "i2p " + " ".join(shlex.quote(a) for a in self.argv)


# ---------------------------------------------------------------- layout
class Layout:
    def __init__(self, out: str | Path):
        self.root = Path(os.path.abspath(out))

    def run(self, variant: str, seed: int) -> Path:
        return self.root / "runs" / variant / f"seed{seed}"

    def pretrain(self, variant: str, seed: int) -> Path:
        return self.run(variant, seed) / "pretrain"

    def init_ckpt(self, variant: str, seed: int) -> Path:
        return self.run(variant, seed) / "init.ckpt"

    def ckpt(self, variant: Variant, seed: int) -> Path | str:
        if variant.teacher:
            return f"teacher:{variant.teacher}"
        return (self.pretrain(variant.name, seed) / "last.ckpt") if variant.pretrain \
            else self.init_ckpt(variant.name, seed)

    def result(self, protocol: str, variant: str, seed: int, dset: str | None = None) -> Path:
        """``.../svm/result.json`` on ``eval.data``; ``.../svm@NAME/result.json`` on ``eval.also[NAME]``."""
        return self.run(variant, seed) / (protocol + (f"@{dset}" if dset else "")) / "result.json"

    def cache(self, i: int) -> Path:
        return self.root / "caches" / f"src{i}"

    def eval_data(self, seed: int, dset: str | None = None) -> Path:
        return self.root / "eval-data" / (f"{dset}/seed{seed}.npz" if dset else f"seed{seed}.npz")

    @property
    def masking(self) -> Path:
        return self.root / "masking.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state(self) -> Path:
        return self.root / STATE


# ---------------------------------------------------------------- small utilities
def ckpt_step(path: Path) -> int | None:
    if not path.is_file():
        return None
    try:
        from i2p.common.checkpoint import load_checkpoint

        return int(load_checkpoint(path).get("step", -1))
    except Exception:  # noqa: BLE001 - unreadable = not done
        return None


def _sha256(path: Path) -> str | None:
    from i2p.common.checkpoint import file_sha256

    return file_sha256(path) if path.is_file() else None


def planned_steps(study: StudyConfig, variant: Variant, seed: int, caches: list[str] | None = None) -> int:
    """Steps ``i2p pretrain`` will run for this variant: epochs x (samples of an epoch // batch),
    the epoch planned as the run plans it (holdout, data.fraction, cache weights), capped by
    ``pretrain.max_steps``."""
    from i2p.cache.reader import MultiCacheDataset
    from i2p.stage2_pretrain.mixing import training_plan
    from i2p.stage2_pretrain.sampler import EpochBatchSampler

    cfg = resolve_pretrain(study, variant, seed)
    full = MultiCacheDataset(list(caches or study.pretrain.caches), with_targets=False)
    n = training_plan(full, cfg.data, cfg.seed)["epoch_size"]
    total = EpochBatchSampler.steps_per_epoch(n, cfg.optim.batch_size) * cfg.optim.epochs
    return total if study.pretrain.max_steps is None else min(total, study.pretrain.max_steps)


def cache_ready(path: Path) -> bool:
    """A cache every shard of which is written (what ``i2p pretrain`` accepts)."""
    from i2p.cache.reader import open_for_training

    if not path.exists():
        return False
    try:
        open_for_training(str(path))
    except Exception:  # noqa: BLE001 - incomplete or unreadable = not done
        return False
    return True


def eval_sets(study: StudyConfig) -> list[tuple[str | None, str]]:
    """(name, spec) of every evaluation data set: ``eval.data`` (name None), then ``eval.also``."""
    return [(None, study.eval.data)] + sorted(study.eval.also.items())


def eval_spec(study: StudyConfig, layout: Layout, seed: int, dset: str | None = None) -> str:
    if not study.eval.materialize:
        return study.eval.also[dset] if dset else study.eval.data
    return f"npz:{layout.eval_data(seed, dset)}"


def _data_tid(seed: int, dset: str | None) -> str:
    return f"data/{dset}/seed{seed}" if dset else f"data/seed{seed}"


def pretrain_overrides(study: StudyConfig, variant: Variant) -> list[str]:
    sets = study.pretrain_overrides(variant)
    if not any(s.split("=", 1)[0].strip() == "log.progress" for s in sets):
        sets = sets + ["log.progress=false"]  # the log goes to a file: no progress bar
    return sets


# ---------------------------------------------------------------- the job graph
def _flag(name: str, values) -> list[str]:
    return sum(([name, str(v)] for v in values), [])


class _Planner:
    """Builds the tasks of one study; ``state`` is the live record (a job launched by this
    invocation is recorded at launch), ``recorded`` the commands before this invocation."""

    def __init__(self, study: StudyConfig, layout: Layout, state: dict):
        self.study, self.layout, self.state = study, layout, state
        self.recorded = {k: v.get("argv") for k, v in state.get("tasks", {}).items()}
        # absolute but NOT symlink-resolved: the command should name the paths the config names
        self.caches = [c if "://" in c else os.path.abspath(c) for c in study.pretrain.caches]
        self.caches += [str(layout.cache(i)) for i in range(len(study.pretrain.data))]
        self.cache_deps = [f"cache/src{i}" for i in range(len(study.pretrain.data))]
        self.tasks: list[Task] = []

    def cache_tasks(self) -> None:
        """Stage 1 for ``pretrain.data``: one cache per spec, with the study's teacher."""
        study, pre = self.study, self.study.pretrain
        for i, spec in enumerate(pre.data):
            tid, path = f"cache/src{i}", self.layout.cache(i)
            argv = ["cache", "build", "--data", spec, "--out", str(path), "--teacher", str(study.teacher),
                    "--split", pre.split, "--points", str(pre.points), "--no-progress"]
            if study.teacher_weights:
                argv += ["--teacher-weights", study.teacher_weights]
            argv += list(pre.build_args)

            def guard(p=path, t=tid, a=argv):
                if p.exists() and self.recorded.get(t) not in (None, a):
                    raise StudyError(f"{p} was built by another command than this study now runs "
                                     f"(pretrain.data or teacher changed?): use a fresh --out or remove that directory")

            self.tasks.append(Task(tid, "cache", argv, guard=guard, order=(i,),
                                   done=lambda p=path, t=tid, a=argv: cache_ready(p) and self.same_argv(t, a)))

    def same_argv(self, tid: str, argv: list[str]) -> bool:
        return (self.state.get("tasks", {}).get(tid) or {}).get("argv") == argv

    def eval_data(self, seed: int, dset: str | None = None) -> Path | None:
        """The materialized eval clouds of ``seed`` (None when the eval reads its spec itself)."""
        return self.layout.eval_data(seed, dset) if self.study.eval.materialize else None

    def data_tasks(self) -> None:
        ev = self.study.eval
        for dset, spec in eval_sets(self.study) if ev.materialize else ():
            for s in self.study.seeds:
                tid, path = _data_tid(s, dset), self.layout.eval_data(s, dset)
                argv = ["study", "materialize", "--data", spec, "--points", str(ev.points or 1024),
                        "--seed", str(s), "--out", str(path)]
                self.tasks.append(Task(tid, "data", argv, order=(s,),
                                       done=lambda p=path, t=tid, a=argv: p.is_file() and self.same_argv(t, a)))

    def masking_task(self) -> None:
        study, out = self.study, self.layout.masking
        argv = ["study", "masking", "--config", os.path.abspath(study.source) if study.source else "",
                "--out", str(out), *_flag("--cache", self.caches)]
        fingerprint = study.fingerprint()

        def done():
            data = read_json(out)
            return bool(data) and data.get("study_fingerprint") == fingerprint and self.same_argv("masking", argv)

        if study.source and study.masking.samples > 0:
            self.tasks.append(Task("masking", "masking", argv, deps=list(self.cache_deps), done=done, order=(0,)))

    def pretrain_task(self, v: Variant, s: int, sets: list[str], order: tuple) -> str:
        study, tid = self.study, f"pretrain/{v.name}/seed{s}"
        run, ckpt = self.layout.pretrain(v.name, s), self.layout.ckpt(v, s)
        argv = ["pretrain", *_flag("--cache", self.caches), "--out", str(run), "--config", study.pretrain.preset,
                *_flag("--set", sets), "--seed", str(s)]
        if study.pretrain.max_steps is not None:
            argv += ["--max-steps", str(study.pretrain.max_steps)]
        def done():
            if not all(cache_ready(Path(c)) for c in self.caches if "://" not in c):
                return False
            step = ckpt_step(ckpt)
            return step is not None and step >= planned_steps(study, v, s, self.caches) and self.same_argv(tid, argv)

        def guard():
            if ckpt.exists() and self.recorded.get(tid) not in (None, argv):
                raise StudyError(f"{run} was made by another command than this study now runs "
                                 f"(settings changed?): use a fresh --out or remove that directory")

        self.tasks.append(Task(tid, "pretrain", argv, deps=list(self.cache_deps), done=done, guard=guard, order=order))
        return tid

    def init_task(self, v: Variant, s: int, sets: list[str], order: tuple) -> str:
        study, ev, tid = self.study, self.study.eval, f"init/{v.name}/seed{s}"
        ckpt, data = self.layout.ckpt(v, s), self.eval_data(s)
        argv = ["study", "init-encoder", *_flag("--cache", self.caches), "--preset", study.pretrain.preset,
                *_flag("--set", sets), "--seed", str(s), "--calib-data", eval_spec(study, self.layout, s),
                "--points", str(ev.points or 0), "--batch-size", str(ev.batch_size), "--out", str(ckpt)]

        def done():
            if not ckpt.is_file() or not self.same_argv(tid, argv):
                return False
            return data is None or (data.is_file() and data.stat().st_mtime <= ckpt.stat().st_mtime)

        deps = list(self.cache_deps) + ([f"data/seed{s}"] if data else [])
        self.tasks.append(Task(tid, "init", argv, deps=deps, done=done, order=order))
        return tid

    def eval_tasks(self, v: Variant, s: int, ck_dep: str | None, order: tuple) -> None:
        for dset, _ in eval_sets(self.study):
            self._eval_set_tasks(v, s, ck_dep, order, dset)

    def _eval_set_tasks(self, v: Variant, s: int, ck_dep: str | None, order: tuple, dset: str | None) -> None:
        ev, fs, data = self.study.eval, self.study.eval.fewshot, self.eval_data(s, dset)
        ckpt = self.layout.ckpt(v, s)
        common = ["--ckpt", str(ckpt), "--data", eval_spec(self.study, self.layout, s, dset), "--pool", v.pool or ev.pool,
                  "--seed", str(s), "--batch-size", str(ev.batch_size), "--no-progress"]
        if ev.points:
            common += ["--points", str(ev.points)]
        if v.teacher and self.study.teacher_weights and v.teacher == self.study.teacher:
            common += ["--teacher-weights", self.study.teacher_weights]
        protocols = {"svm": ["--C", str(ev.svm.C), "--cv-folds", str(ev.svm.cv_folds)],
                     "fewshot": ["--way", str(fs.way), "--shot", str(fs.shot), "--query", str(fs.query),
                                 "--folds", str(fs.folds), "--C", str(fs.C)]}
        for proto, extra in ((p, protocols[p]) for p in ev.protocols):
            name = proto + (f"@{dset}" if dset else "")
            tid, res = f"{name}/{v.name}/seed{s}", self.layout.result(proto, v.name, s, dset)
            argv = ["eval", proto, *common, *extra, "--out", str(res.parent)]

            def done(r=res, t=tid, a=argv):
                found = read_json(r)
                if not found or not self.same_argv(t, a):
                    return False
                if data is not None and (not data.is_file() or data.stat().st_mtime > r.stat().st_mtime):
                    return False  # the eval clouds were re-made after this result
                if v.teacher:  # no file to hash: the result must name the teacher it ran
                    return (found.get("checkpoint") or {}).get("path") == ckpt
                return (found.get("checkpoint") or {}).get("sha256") == _sha256(ckpt)

            deps = ([ck_dep] if ck_dep else []) + ([_data_tid(s, dset)] if data else [])
            self.tasks.append(Task(tid, proto, argv, deps=deps, done=done, order=order))


def plan(study: StudyConfig, layout: Layout, state: dict) -> list[Task]:
    """Every job of the study, with its done-check and its dependencies."""
    p = _Planner(study, layout, state)
    p.cache_tasks()
    p.data_tasks()
    p.masking_task()
    for s in study.seeds:
        for vi, v in enumerate(study.variants):
            if v.teacher:
                p.eval_tasks(v, s, None, (s, vi))
                continue
            sets = pretrain_overrides(study, v)
            make = p.pretrain_task if v.pretrain else p.init_task
            p.eval_tasks(v, s, make(v, s, sets, (s, vi)), (s, vi))
    return p.tasks
