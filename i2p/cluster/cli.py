"""``i2p submit``: run a stage (or the whole pipeline) as Slurm batch jobs.

    i2p submit cache-build --scheduler slurm --array 8 --gpus 1 -- --data SPEC --teacher T --out CACHE
    i2p submit pretrain    --scheduler slurm --nodes 2 --gpus 4 -- --cache CACHE --out RUN
    i2p submit eval        --scheduler slurm --gpus 1 -- svm --ckpt RUN/last.ckpt --data SPEC
    i2p submit pipeline    --scheduler slurm --data SPEC --teacher T --workdir DIR --array 8

Everything after ``--`` is the stage's own command line, passed through unchanged.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer

from i2p.common.cli_options import OnSignal, Protocol, Scheduler
from i2p.common.errors import UserError

app = typer.Typer(help="Submit stages as batch jobs (Slurm): resumable, requeue-safe, with dependencies.",
                  no_args_is_help=True)

_PASS = {"allow_extra_args": True, "ignore_unknown_options": True}


def _options(**kw):
    from i2p.cluster.slurm import SlurmOptions

    return SlurmOptions(**kw)


def _check_scheduler(scheduler: str) -> None:
    if scheduler != "slurm":
        raise UserError(f"--scheduler {scheduler!r}: only slurm is supported "
                        "(for dask use `i2p cache build --dask ...`)")


def _submit_argv() -> list[str]:
    return ["i2p", *sys.argv[1:]] if sys.argv and sys.argv[0] else ["i2p"]


def _stage_command(stage: str):
    def command(
        ctx: typer.Context,
        scheduler: Scheduler = typer.Option(Scheduler.slurm, help="Batch system"),
        partition: Optional[str] = typer.Option(None, help="Slurm partition"),
        time: Optional[str] = typer.Option(None, help="Time limit, e.g. 04:00:00 or 2-00:00:00"),
        cpus: Optional[int] = typer.Option(None, min=1, help="CPUs per task (--cpus-per-task)"),
        mem: Optional[str] = typer.Option(None, help="Memory per node, e.g. 64G"),
        gpus: int = typer.Option(0, min=0, help="GPUs per node"),
        nodes: int = typer.Option(1, min=1, help="Nodes (pretrain: one torchrun per node)"),
        array: Optional[int] = typer.Option(None, min=1, help="cache-build: N array tasks, task I builds --shard I/N",
                                     hidden=stage != "cache-build"),
        job_name: Optional[str] = typer.Option(None, help=f"Job name (default i2p-{stage})"),
        output: Path = typer.Option(Path("slurm-logs"), help="Directory for the job logs and the kept script"),
        dependency: Optional[str] = typer.Option(None, help="Slurm dependency, e.g. afterok:1234"),
        account: Optional[str] = typer.Option(None, help="Slurm account"),
        qos: Optional[str] = typer.Option(None, help="Slurm QOS"),
        constraint: Optional[str] = typer.Option(None, help="Slurm node constraint"),
        requeue: bool = typer.Option(True, help="Let Slurm requeue the job (node failure, pre-emption, by hand)"),
        signal_time: int = typer.Option(120, min=0, help="Send USR1 this many seconds before the time limit "
                                        "(0: never)"),
        on_signal: OnSignal = typer.Option(OnSignal.requeue, help="After the USR1 stop: requeue (the job requeues itself and "
                                      "resumes) or exit (status 75; requeue by hand)"),
        nproc_per_node: Optional[int] = typer.Option(None, min=1, help="pretrain: processes per node "
                                                     "(default: --gpus, or 1)", hidden=stage != "pretrain"),
        master_port: int = typer.Option(29500, help="pretrain on several nodes: rendezvous port",
                                     hidden=stage != "pretrain"),
        exe: Optional[str] = typer.Option(None, help="Command that runs i2p in the job "
                                          "(default: this python -m i2p)"),
        setup: List[str] = typer.Option([], help="Shell line run before the stage (repeatable), "
                                        "e.g. 'module load cuda'"),
        sbatch_arg: List[str] = typer.Option([], help="Extra #SBATCH option (repeatable), e.g. --exclusive"),
        chdir: Optional[Path] = typer.Option(None, help="Job working directory (default: the current one)"),
        dry_run: bool = typer.Option(False, help="Print the batch script; submit nothing"),
        parsable: bool = typer.Option(False, help="Print only the job id"),
    ) -> None:
        from i2p.cluster import slurm

        _check_scheduler(scheduler)
        opts = _options(partition=partition, time=time, cpus=cpus, mem=mem, gpus=gpus, nodes=nodes, array=array,
                        job_name=job_name, output=str(output), dependency=dependency, account=account, qos=qos,
                        constraint=constraint, requeue=requeue, signal_time=signal_time, on_signal=on_signal,
                        nproc_per_node=nproc_per_node, master_port=master_port, exe=exe, setup=list(setup),
                        sbatch_args=list(sbatch_arg), chdir=str((chdir or Path.cwd()).absolute()))
        args = list(ctx.args)
        if not args:
            raise UserError(f"give the {stage} arguments after --, e.g. "
                            f"i2p submit {stage} --scheduler slurm -- {_EXAMPLE[stage]}")
        script = slurm.render_script(stage, args, opts, _submit_argv())
        if dry_run:
            typer.echo(script, nl=False)
            return
        job_id, kept = slurm.submit_script(script, opts, stage)
        if parsable:
            typer.echo(job_id)
        else:
            typer.echo(f"submitted {stage}: job {job_id}; script {kept}; logs in {kept.parent}")

    command.__doc__ = _DOCS[stage]
    return command


_EXAMPLE = {"cache-build": "--data builtin:primitives --teacher effnet-lite2 --out ./cache",
            "pretrain": "--cache ./cache --out ./runs/pt",
            "eval": "svm --ckpt ./runs/pt/last.ckpt --data builtin:primitives"}
_DOCS = {"cache-build": "Submit stage 1 (`i2p cache build`); --array N runs N tasks, task I builds --shard I/N.",
         "pretrain": "Submit stage 2 (`i2p pretrain`); several GPUs/nodes launch through torchrun.",
         "eval": "Submit stage 3 (`i2p eval PROTOCOL ...`)."}

for _stage in ("cache-build", "pretrain", "eval"):
    app.command(_stage, context_settings=_PASS)(_stage_command(_stage))


@app.command("pipeline")
def pipeline(
    data: str = typer.Option(..., help="Data spec of the pre-training set (stage 1, split train)"),
    teacher: str = typer.Option(..., help="2D teacher (clip-vitb16, effnet-lite2, timm:NAME, ...)"),
    workdir: Path = typer.Option(..., help="WORKDIR/cache, WORKDIR/pretrain, WORKDIR/eval/PROTOCOL, WORKDIR/logs"),
    scheduler: Scheduler = typer.Option(Scheduler.slurm, help="Batch system"),
    array: int = typer.Option(1, min=1, help="Stage 1 array tasks (task I builds --shard I/N)"),
    config: str = typer.Option("paper", help="Pre-training preset (tiny, paper) or YAML file"),
    eval_data: Optional[str] = typer.Option(None, help="Data spec of the evaluation (default: --data)"),
    eval_protocol: Protocol = typer.Option(Protocol.svm, help="Evaluation protocol"),
    teacher_weights: Optional[str] = typer.Option(None, help="Stage 1 --teacher-weights (FILE or random)"),
    cache_args: str = typer.Option("", help="Extra `i2p cache build` options, one string"),
    pretrain_args: str = typer.Option("", help="Extra `i2p pretrain` options, one string"),
    eval_args: str = typer.Option("", help="Extra `i2p eval PROTOCOL` options, one string"),
    partition: Optional[str] = typer.Option(None, help="Slurm partition (all three jobs)"),
    time: Optional[str] = typer.Option(None, help="Time limit of each job"),
    cpus: Optional[int] = typer.Option(None, min=1, help="CPUs per task"),
    mem: Optional[str] = typer.Option(None, help="Memory per node"),
    gpus: int = typer.Option(0, min=0, help="GPUs per node for pretrain (stage 1 and eval take at most one)"),
    nodes: int = typer.Option(1, min=1, help="Nodes for pretrain"),
    nproc_per_node: Optional[int] = typer.Option(None, min=1, help="pretrain processes per node"),
    job_name: str = typer.Option("i2p", help="Job name prefix: PREFIX-cache-build, PREFIX-pretrain, PREFIX-eval"),
    output: Optional[Path] = typer.Option(None, help="Log directory (default WORKDIR/logs)"),
    dependency: Optional[str] = typer.Option(None, help="Dependency of the first job"),
    account: Optional[str] = typer.Option(None, help="Slurm account"),
    qos: Optional[str] = typer.Option(None, help="Slurm QOS"),
    requeue: bool = typer.Option(True, help="Jobs may be requeued"),
    signal_time: int = typer.Option(120, min=0, help="USR1 this many seconds before the time limit"),
    on_signal: OnSignal = typer.Option(OnSignal.requeue, help="requeue or exit after the USR1 stop"),
    exe: Optional[str] = typer.Option(None, help="Command that runs i2p in the jobs (default: this python -m i2p)"),
    setup: List[str] = typer.Option([], help="Shell line run before each stage (repeatable)"),
    sbatch_arg: List[str] = typer.Option([], help="Extra #SBATCH option for every job (repeatable)"),
    dry_run: bool = typer.Option(False, help="Print the three batch scripts; submit nothing"),
) -> None:
    """Submit cache build -> pretrain -> eval, each waiting on the one before (afterok)."""
    from i2p.cluster import slurm

    _check_scheduler(scheduler)
    work = workdir.expanduser().absolute()
    cache, run, ev = work / "cache", work / "pretrain", work / "eval" / eval_protocol
    logs = (output or work / "logs").expanduser().absolute()
    common = dict(partition=partition, time=time, cpus=cpus, mem=mem, account=account, qos=qos,
                  output=str(logs), requeue=requeue, signal_time=signal_time, on_signal=on_signal, exe=exe,
                  setup=list(setup), sbatch_args=list(sbatch_arg), chdir=str(Path.cwd().absolute()))
    try:
        extra = {k: shlex.split(v) for k, v in
                 (("cache", cache_args), ("pretrain", pretrain_args), ("eval", eval_args))}
    except ValueError as exc:
        raise UserError(f"cannot split the --*-args string: {exc}") from None
    stages = [
        ("cache-build", _options(**common, gpus=min(gpus, 1), array=array if array > 1 else None,
                                 job_name=f"{job_name}-cache-build"),
         ["--data", data, "--split", "train", "--teacher", teacher, "--out", str(cache), "--no-progress"]
         + (["--teacher-weights", teacher_weights] if teacher_weights else []) + extra["cache"]),
        ("pretrain", _options(**common, gpus=gpus, nodes=nodes, nproc_per_node=nproc_per_node,
                              job_name=f"{job_name}-pretrain"),
         ["--cache", str(cache), "--out", str(run), "--config", config, "--set", "log.progress=false"]
         + extra["pretrain"]),
        ("eval", _options(**common, gpus=min(gpus, 1), job_name=f"{job_name}-eval"),
         [eval_protocol, "--ckpt", str(run / "last.ckpt"), "--data", eval_data or data, "--out", str(ev),
          "--no-progress"] + extra["eval"]),
    ]
    submit_argv = _submit_argv()
    jobs: dict[str, dict] = {}
    previous = dependency
    for stage, opts, args in stages:
        opts.dependency = previous
        if dry_run:
            typer.echo(f"# ===== {stage} " + "=" * 60)
            typer.echo(slurm.render_script(stage, args, opts, submit_argv), nl=False)
            previous = f"afterok:<job id of {opts.job_name}>"
            continue
        script = slurm.render_script(stage, args, opts, submit_argv)
        job_id, kept = slurm.submit_script(script, opts, stage)
        jobs[stage] = {"job_id": job_id, "script": str(kept), "job_name": opts.job_name}
        typer.echo(f"submitted {stage}: job {job_id} ({opts.dependency or 'no dependency'}); script {kept}")
        previous = f"afterok:{job_id}"
    if dry_run:
        return
    record = {"workdir": str(work), "cache": str(cache), "pretrain": str(run), "eval": str(ev), "logs": str(logs),
              "jobs": jobs, "command": shlex.join(submit_argv)}
    work.mkdir(parents=True, exist_ok=True)
    (work / "pipeline.json").write_text(json.dumps(record, indent=2) + "\n")
    typer.echo(f"pipeline recorded in {work / 'pipeline.json'}; logs in {logs}")
