"""The ``i2p`` command: one typer app with a sub-app per stage.

Bad input is printed as one ``i2p: error: ...`` line and exits with code 2, never a traceback:
both a mistake in typing the command (missing or unknown option, bad value or choice, missing
file: typer's usage errors) and bad input found by a command
(:class:`~i2p.common.errors.UserError`). Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import warnings

# Idle OpenMP threads that spin instead of sleeping made a paper-model step 3-10x slower on a
# loaded 2-core machine (benchmarks/); passive waiting costs nothing measurable when idle. Set
# before torch is imported (commands import it lazily); a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib
import re

import typer

from i2p import __version__
from i2p.common.errors import UserError
from i2p.common.heap import keep_freed_memory
from i2p.common.invocation import recording


def _exception_types(name: str) -> tuple[type, ...]:
    """Every class called ``name`` among the exception modules typer may raise from.

    typer >= 0.29 vendors click as ``typer._click`` (its exceptions are not the ``click``
    package's); older typer uses ``click`` itself. Resolving both at import time keeps
    :func:`main` catching what the installed typer really raises."""
    found: list[type] = []
    for module in ("typer._click.exceptions", "typer.exceptions", "click.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


CLICK_ERRORS = _exception_types("ClickException")
USAGE_ERRORS = _exception_types("UsageError") + _exception_types("FileError")
ABORTS = _exception_types("Abort")
NO_ARGS_HELP = _exception_types("NoArgsIsHelpError")

app = typer.Typer(name="i2p", help="I2P-MAE at cluster scale: cache build -> pretrain -> eval.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


def _print_version(flag: bool) -> None:
    if flag:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="Print the i2p version and exit.")) -> None:
    """I2P-MAE at cluster scale: cache build -> pretrain -> eval."""


def _mount() -> None:
    """Attach every stage's commands. Command modules import their heavy dependencies lazily,
    inside the command, so ``i2p --help`` stays fast."""
    from i2p.stage1_project.cli import app as cache_app
    from i2p.stage2_pretrain.cli import pretrain
    from i2p.stage3_eval.cli import app as eval_app

    app.add_typer(cache_app, name="cache")
    app.command("pretrain")(pretrain)
    app.add_typer(eval_app, name="eval")
    from i2p.study.cli import app as study_app; app.add_typer(study_app, name="study")  # noqa: E702
    from i2p.cluster.cli import app as submit_app; app.add_typer(submit_app, name="submit")  # noqa: E702
    from i2p.viz.cli import app as viz_app; app.add_typer(viz_app, name="viz")  # noqa: E702
    from i2p.report.cli import report; app.command("report")(report)  # noqa: E702
    from i2p.demo import demo; app.command("demo")(demo)  # noqa: E702
    from i2p.official.cli import convert; app.command("convert")(convert)  # noqa: E702
    from i2p.official.cli import export; app.command("export")(export)  # noqa: E702  (api's, plus --format)
    from i2p.stage3_eval.embed_cli import embed; app.command("embed")(embed)  # noqa: E702


@app.command()
def version() -> None:
    """Print the i2p version."""
    typer.echo(__version__)


_mount()


def _rejected_input(exc: BaseException) -> str:
    """`` (got 'x')`` when the message does not show the rejected text: typer >= 0.29 converts
    with pydantic, whose ``Input should be a valid integer`` leaves it out; the input is kept
    on the chained validation error."""
    try:
        got = exc.__cause__.errors()[0]["input"]  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - not a pydantic error: nothing to add
        return ""
    return f" (got {got!r})" if repr(got) not in exc.format_message() else ""


def _missing_help(exc: BaseException) -> str:
    """A missing option's own help text, cut short: it says what kind of value is wanted."""
    help_text = " ".join(str(getattr(getattr(exc, "param", None), "help", None) or "").split())
    if not help_text or not type(exc).__name__ == "MissingParameter":
        return ""
    return f" ({help_text[:117] + '...' if len(help_text) > 120 else help_text})"


def usage_line(exc: BaseException) -> str:
    """One line for a parsing error: the option, what was wrong and what is allowed, then where
    the full help is. ``Invalid value for '--mask': X`` becomes ``--mask: X``; an unknown
    subcommand gets the list of the existing ones (click names only the typo)."""
    text = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    text = " ".join(line.strip() for line in str(text).splitlines() if line.strip())
    text = re.sub(r"^Invalid value for '([^']+)': ", r"\1: ", text)
    text = text.replace(": Value error, ", ": ")  # typer >= 0.29's wording of a bad choice
    text = text.rstrip(".") + _rejected_input(exc) + _missing_help(exc)
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return text
    if text.startswith("No such command") and hasattr(ctx.command, "list_commands"):
        names = [n for n in ctx.command.list_commands(ctx)
                 if not getattr(ctx.command.get_command(ctx, n), "hidden", False)]
        text = f"{text}; choose from {', '.join(names)}"
    return f"{text} (see '{ctx.command_path} --help')"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code. Usage errors and :class:`UserError` print one
    ``i2p: error: ...`` line and return 2; bugs keep their traceback."""
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"i2p: warning: {msg}\n"
    argv = list(sys.argv[1:] if argv is None else argv)
    keep_freed_memory()  # glibc: no page faults from re-growing the heap every step (common/heap.py)
    command = typer.main.get_command(app)
    try:
        with recording(argv):
            rv = command.main(args=argv, prog_name="i2p", standalone_mode=False)
    except UserError as exc:
        print(f"i2p: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    except NO_ARGS_HELP as exc:
        exc.show()
        return exc.exit_code
    except USAGE_ERRORS as exc:
        print(f"i2p: error: {usage_line(exc)}", file=sys.stderr)
        return 2
    except CLICK_ERRORS as exc:
        print(f"i2p: error: {usage_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except ABORTS:
        print("i2p: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("i2p: interrupted", file=sys.stderr)
        return 130
    return rv if isinstance(rv, int) else 0


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
