"""Typing mistakes on the real ``i2p`` command: one line on stderr, exit code 2, no traceback.

Runs :func:`i2p.cli.main` in-process (the same code path as the console script) so the whole
parser, the option callbacks and the error formatting are exercised; one case also runs a
subprocess to prove the console entry point prints the same single line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from i2p import __version__
from i2p.cli import main

REPO = Path(__file__).resolve().parents[1]

# (argv, words the one line must contain: the option or command, and what is allowed)
MISTAKES = [
    (["cache", "build", "--out", "x"], ["--data"]),
    (["pretrain", "--epochs", "x", "--cache", ".", "--out", "o"], ["--epochs", "integer"]),
    (["cache", "build", "--teacher", "nope", "--data", "builtin:primitives?n_train=1&n_test=1", "--out", "{tmp}/c",
      "--no-progress", "--device", "cpu"], ["nope", "effnet-lite2"]),
    (["pretrain", "--cache", "/nonexistent", "--out", "{tmp}/run"], ["--cache", "/nonexistent", "does not exist"]),
    (["pretrain", "--mask", "sal", "--cache", ".", "--out", "{tmp}/run"], ["--mask", "'sal'", "saliency", "random"]),
    (["eval", "svm", "--ckpt", "random", "--data", "builtin:primitives", "--pool", "avg"], ["--pool", "max", "meanmax"]),
    (["eval", "svm", "--ckpt", "/no/such.ckpt", "--data", "builtin:primitives"], ["--ckpt", "/no/such.ckpt"]),
    (["eval", "knn", "--ckpt", "random", "--data", "builtin:primitives", "--vote", "most"],
     ["--vote", "majority", "weighted"]),
    (["eval", "nope"], ["nope", "svm", "fewshot", "finetune", "knn"]),
    (["submit", "pretrain", "--scheduler", "pbs", "--dry-run", "--", "--cache", "c", "--out", "r"],
     ["--scheduler", "'pbs'", "slurm"]),
    (["viz", "sample", "--cache", "/no/cache", "--out", "{tmp}/x.png"], ["--cache", "/no/cache", "does not exist"]),
    (["eval", "finetune", "--ckpt", "random", "--data", "builtin:primitives", "--vote", "x"], ["--vote"]),
    (["pretrain", "--cache", ".", "--out", "o", "--bogus"], ["--bogus"]),
    (["eval", "compare", "/no/result.json"], ["/no/result.json"]),
    (["cache", "build", "--data", "builtin:primitives", "--out", "{tmp}/c", "--teacher-weights", "/no/w.pt"],
     ["--teacher-weights", "/no/w.pt", "does not exist"]),
    (["pretrain", "--cache", ".", "--out", "{tmp}/run", "--config", "nope"], ["nope", "base", "tiny", "paper"]),
    (["submit", "pipeline", "--data", "d", "--teacher", "t", "--workdir", "w", "--eval-protocol", "lin"],
     ["--eval-protocol", "svm", "knn"]),
]


@pytest.mark.parametrize("argv,words", MISTAKES, ids=[" ".join(a[:3]) for a, _ in MISTAKES])
def test_mistake_is_one_line_and_exit_2(argv, words, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc = main(argv)
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert rc == 2, (argv, captured.err)
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("i2p: error: ")
    assert "Traceback" not in captured.err + captured.out
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_choices_are_listed_in_help(capsys):
    assert main(["pretrain", "--help"]) == 0
    out = capsys.readouterr().out
    assert "saliency" in out and "random" in out and "2d3d" in out


def test_version_is_eager(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == __version__
    # eager: wins over a subcommand's own required options
    assert main(["--version", "pretrain"]) == 0
    assert main(["version"]) == 0
    assert capsys.readouterr().out.split() == [__version__, __version__]


def test_console_entry_point_prints_one_line():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "i2p", "pretrain", "--mask", "sal", "--cache", ".", "--out", "o"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "i2p: error: --mask: 'sal' is not one of 'saliency', 'random' (see 'i2p pretrain --help')"]


def test_exception_classes_come_from_the_installed_typer():
    """main() must catch what ``typer.main.get_command`` really raises (typer >= 0.29 vendors click)."""
    import typer

    from i2p import cli

    command = typer.main.get_command(cli.app)
    with pytest.raises(cli.USAGE_ERRORS) as info:
        command.main(args=["pretrain", "--epochs", "x"], prog_name="i2p", standalone_mode=False)
    assert isinstance(info.value, cli.CLICK_ERRORS)
