"""Slurm batch scripts for the three stages, and their submission with ``sbatch``.

A generated script is meant to be read: ``#SBATCH`` lines, a header recording the i2p version, the
``i2p submit`` command that wrote it and the exact stage command, then a small runner that
starts the stage as a child process and forwards signals to it.

Why a child and not ``exec``: the script must outlive the stage to act on the signal. Slurm sends
``USR1`` to the batch shell ``--signal-time`` seconds before the time limit
(``#SBATCH --signal=B:USR1@120``); the shell forwards ``TERM`` to the stage, which finishes the
shard or step in progress, writes it (shard marker / ``last.ckpt``) and exits; the shell then
requeues the job (``scontrol requeue``), and the requeued job resumes where the stage stopped.
A plain ``TERM`` (``scancel``, pre-emption, the time limit itself) is forwarded the same way but
never requeues by itself. Jobs are submitted with ``--requeue``, so a node failure or a
requeue by hand (``scontrol requeue JOBID``) restarts them too, and ``--open-mode=append`` keeps
the log of every attempt in one file.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from i2p import __version__
from i2p.common.errors import UserError

STAGES = {"cache-build": ["cache", "build"], "pretrain": ["pretrain"], "eval": ["eval"]}
EXIT_STOPPED = 75  # --on-signal exit: the stage was stopped early (EX_TEMPFAIL); requeue to resume


class Raw(str):
    """A token written into the script as is (it holds a shell expansion, e.g. the array index)."""


@dataclass
class SlurmOptions:
    partition: str | None = None
    time: str | None = None
    cpus: int | None = None
    mem: str | None = None
    gpus: int = 0                     # GPUs per node
    nodes: int = 1
    array: int | None = None          # stage 1: N array tasks, task I builds --shard I/N
    job_name: str | None = None
    output: str = "slurm-logs"        # directory for logs and the kept scripts
    dependency: str | None = None     # raw Slurm syntax, e.g. afterok:123
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    requeue: bool = True
    signal_time: int = 120            # seconds before the time limit that USR1 is sent (0: none)
    on_signal: str = "requeue"        # requeue | exit
    nproc_per_node: int | None = None  # pretrain: processes per node (default: GPUs per node, or 1)
    master_port: int = 29500
    exe: str | None = None            # how the job runs i2p (default: this python -m i2p)
    setup: list[str] = field(default_factory=list)       # shell lines run before the stage
    sbatch_args: list[str] = field(default_factory=list)  # extra raw #SBATCH options
    chdir: str | None = None


def default_exe() -> list[str]:
    return [sys.executable, "-m", "i2p"]


def exe_argv(opts: SlurmOptions) -> list[str]:
    if not opts.exe:
        return default_exe()
    argv = shlex.split(opts.exe)
    if not argv:
        raise UserError("--exe is empty")
    return argv


def _is_python(path: str) -> bool:
    return re.match(r"python[0-9.]*$", os.path.basename(path)) is not None


def stage_segments(stage: str, args: list[str], opts: SlurmOptions) -> list[list[str]]:
    """The command the job runs, as segments (launcher, interpreter, stage and its options);
    :class:`Raw` tokens hold shell expansions."""
    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
    args = list(args)
    if stage == "cache-build" and opts.array:
        if any(a == "--shard" or a.startswith("--shard=") for a in args):
            raise UserError("--array N gives each array task its own --shard I/N: do not pass --shard too")
        if opts.array > 1 and "--overwrite" in args:
            raise UserError("--overwrite with --array would let every array task wipe the others' shards: "
                            "build with --overwrite once, or choose a new --out")
        args += ["--shard", Raw(f'"${{SLURM_ARRAY_TASK_ID}}/{opts.array}"')]
    exe = exe_argv(opts)
    nproc = opts.nproc_per_node or max(1, opts.gpus)
    if stage != "pretrain" or (opts.nodes == 1 and nproc == 1):
        return [exe + STAGES[stage], args]
    # torchrun as `python -m torch.distributed.run`, then the module or script that --exe names
    if _is_python(exe[0]):
        launch, rest = [exe[0], "-m", "torch.distributed.run"], exe[1:]
    else:
        launch, rest = [shutil.which("torchrun") or "torchrun", "--no-python"], exe
    if opts.nodes == 1:
        launch += ["--standalone", "--nproc-per-node", str(nproc)]
        return [launch, rest + STAGES[stage], args]
    launch += ["--nnodes", Raw('"$SLURM_JOB_NUM_NODES"'), "--nproc-per-node", str(nproc),
               "--rdzv-id", Raw('"$SLURM_JOB_ID"'), "--rdzv-backend", "c10d",
               "--rdzv-endpoint", Raw('"$MASTER_ADDR:$MASTER_PORT"')]
    srun = ["srun", "--nodes", Raw('"$SLURM_JOB_NUM_NODES"'), "--ntasks-per-node", "1", "--kill-on-bad-exit=1"]
    if opts.cpus:  # srun does not inherit --cpus-per-task from the batch job on every Slurm version
        srun += ["--cpus-per-task", str(opts.cpus)]
    return [srun, launch, rest + STAGES[stage], args]


def stage_command(stage: str, args: list[str], opts: SlurmOptions) -> list[str]:
    return [tok for seg in stage_segments(stage, args, opts) for tok in seg]


def _q(token: str) -> str:
    return str(token) if isinstance(token, Raw) else shlex.quote(str(token))


def _format_command(segments: list[list[str]], indent: str = "    ") -> str:
    """The command inside a bash array: each segment on a new line, one option per line."""
    lines: list[list[str]] = []
    for seg in segments:
        lines.append([])
        for tok in seg:
            if str(tok).startswith("-") and lines[-1]:
                lines.append([])
            lines[-1].append(tok)
    return "\n".join(indent + " ".join(_q(t) for t in line) for line in lines if line)


def _sbatch_lines(stage: str, opts: SlurmOptions, job_name: str, log_dir: Path) -> list[str]:
    log = log_dir / ("%x-%A_%a.out" if opts.array else "%x-%j.out")
    lines = [f"--job-name={job_name}", f"--output={log}", "--open-mode=append"]
    if opts.chdir:
        lines.append(f"--chdir={opts.chdir}")
    if opts.array:
        lines.append(f"--array=0-{opts.array - 1}")
    lines.append(f"--nodes={opts.nodes}")
    lines.append("--ntasks-per-node=1")
    if opts.cpus:
        lines.append(f"--cpus-per-task={opts.cpus}")
    if opts.mem:
        lines.append(f"--mem={opts.mem}")
    if opts.gpus:
        lines.append(f"--gpus-per-node={opts.gpus}")
    for key in ("partition", "time", "account", "qos", "constraint"):
        value = getattr(opts, key)
        if value:
            lines.append(f"--{key}={value}")
    if opts.dependency:
        lines.append(f"--dependency={opts.dependency}")
    lines.append("--requeue" if opts.requeue else "--no-requeue")
    if opts.signal_time > 0:
        lines.append(f"--signal=B:USR1@{opts.signal_time}")
    lines.extend(opts.sbatch_args)
    return lines


def default_job_name(stage: str) -> str:
    return f"i2p-{stage}"


def _check_options(stage: str, opts: SlurmOptions) -> None:
    """Option combinations that cannot make a working job."""
    if opts.on_signal not in ("requeue", "exit"):
        raise UserError(f"--on-signal {opts.on_signal!r}: expected requeue or exit")
    if opts.nodes < 1:
        raise UserError("--nodes must be >= 1")
    if opts.nodes > 1 and stage != "pretrain":
        raise UserError(f"{stage} runs on one node per job: use --array N (stage 1) to spread it")
    if opts.array is not None and stage != "cache-build":
        raise UserError("--array is for cache-build (one array task per --shard I/N)")
    if opts.array is not None and opts.array < 1:
        raise UserError("--array N needs N >= 1")
    if opts.on_signal == "requeue" and not opts.requeue:
        raise UserError("--on-signal requeue needs --requeue")


def _runner_lines(segments: list[list[str]], opts: SlurmOptions) -> list[str]:
    """The script's body: start the stage as a child, forward USR1/TERM to it as TERM, then
    requeue (``--on-signal requeue``) or exit 75 after a USR1 stop."""
    return [
        "",
        "cmd=(",
        _format_command(segments),
        ")",
        "",
        'echo "[i2p] $(date -Is) job ${SLURM_JOB_ID}${SLURM_ARRAY_TASK_ID:+ (array task $SLURM_ARRAY_TASK_ID)}'
        ' restart ${SLURM_RESTART_COUNT:-0} on $(hostname)"',
        f'echo "[i2p] i2p {__version__}: ${{cmd[*]}}"',
        "",
        f"on_signal={opts.on_signal}",
        'signalled=""',
        'child=""',
        'forward() {  # remember the first signal; the stage gets TERM and stops cleanly',
        '    [[ -z "$signalled" ]] && signalled=$1',
        '    [[ -n "$child" ]] && kill -TERM "$child" 2>/dev/null',
        '    return 0',
        '}',
        "trap 'forward USR1' USR1",
        "trap 'forward TERM' TERM",
        '"${cmd[@]}" &',
        "child=$!",
        'while kill -0 "$child" 2>/dev/null; do wait "$child"; done',
        'wait "$child"; status=$?',
        "",
        'if [[ -n "$signalled" ]]; then',
        '    echo "[i2p] $(date -Is) stage stopped after SIG$signalled (exit $status); its progress is saved"',
        '    if [[ "$signalled" == USR1 && "$on_signal" == requeue ]]; then',
        '        echo "[i2p] requeueing job $SLURM_JOB_ID: it resumes from the last shard/checkpoint"',
        '        scontrol requeue "$SLURM_JOB_ID" && exit 0',
        '        echo "[i2p] scontrol requeue failed: resubmit or requeue by hand to resume" >&2',
        "    fi",
        f'    [[ "$signalled" == USR1 ]] && exit {EXIT_STOPPED}',
        "fi",
        'echo "[i2p] $(date -Is) stage exited with status $status"',
        'exit "$status"',
        "",
    ]


def render_script(stage: str, args: list[str], opts: SlurmOptions, submit_argv: list[str] | None = None,
                  now: _dt.datetime | None = None) -> str:
    """The batch script for ``stage`` run with ``args`` (the stage's own options)."""
    _check_options(stage, opts)
    now = now or _dt.datetime.now().astimezone()
    job_name = opts.job_name or default_job_name(stage)
    log_dir = Path(opts.output).expanduser().absolute()
    segments = stage_segments(stage, args, opts)
    cmd = [tok for seg in segments for tok in seg]
    plain_cmd = " ".join(_q(t) for t in cmd)
    submit = shlex.join(submit_argv) if submit_argv else "(from Python)"
    out = ["#!/bin/bash"]
    out += [f"#SBATCH {line}" for line in _sbatch_lines(stage, opts, job_name, log_dir)]
    out += [
        "#",
        f"# i2p {__version__} -- stage {stage} -- written {now.isoformat(timespec='seconds')}",
        f"# submitted with: {submit}",
        f"# stage command:  {plain_cmd}",
        "#",
        "# Every stage resumes: re-running the same command does only what is missing.",
        f"# USR1 {opts.signal_time}s before the time limit -> the stage finishes the shard/step in progress,",
        "# saves it and exits; " + ("this script then requeues the job, which resumes."
                                    if opts.on_signal == "requeue" else
                                    f"this script exits {EXIT_STOPPED}; `scontrol requeue JOBID` resumes it."),
        "# TERM (scancel, pre-emption) -> the same clean stop, without requeueing by itself.",
        "set -uo pipefail",
        "export PYTHONUNBUFFERED=1",
    ]
    for line in opts.setup:
        out.append(line)
    if stage == "pretrain" and opts.nodes > 1:
        out += ['export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
                f'export MASTER_PORT="${{MASTER_PORT:-{opts.master_port}}}"']
    out += _runner_lines(segments, opts)
    return "\n".join(out)


# ---- submission --------------------------------------------------------------------------

def _run(argv: list[str], what: str) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise UserError(f"{argv[0]} not found: run this on a Slurm login node (or use --dry-run)") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise UserError(f"{what} failed: {msg[-1] if msg else f'exit {proc.returncode}'}")
    return proc.stdout


def submit_script(script: str, opts: SlurmOptions, stage: str) -> tuple[str, Path]:
    """Write the script into the log directory, ``sbatch`` it; returns (job id, kept script path)."""
    log_dir = Path(opts.output).expanduser().absolute()
    log_dir.mkdir(parents=True, exist_ok=True)
    name = opts.job_name or default_job_name(stage)
    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S%f")
    path = log_dir / f"{name}.{stamp}.sbatch"
    path.write_text(script)
    path.chmod(0o755)
    out = _run(["sbatch", "--parsable", str(path)], "sbatch")
    job_id = out.strip().splitlines()[-1].split(";")[0].strip()
    if not job_id.isdigit():
        raise UserError(f"sbatch printed {out.strip()!r}, not a job id")
    kept = log_dir / f"{name}-{job_id}.sbatch"
    path.rename(kept)
    return job_id, kept


def job_states(job_id: str) -> list[dict[str, str]]:
    """``scontrol show job -o`` as dicts, one per job (an array job id gives one per task). Works
    without accounting (no ``sacct``) as long as the controller remembers the job (MinJobAge)."""
    out = _run(["scontrol", "show", "job", "-o", str(job_id)], "scontrol show job")
    recs = []
    for line in out.strip().splitlines():
        rec: dict[str, str] = {}
        for tok in line.split():
            if "=" in tok:
                key, _, value = tok.partition("=")
                rec[key] = value
        recs.append(rec)
    return recs
