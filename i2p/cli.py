"""The ``i2p`` command: one typer app with a sub-app per stage.

Bad input (:class:`~i2p.common.errors.UserError`) is printed as one line and exits with code 2,
never a traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import warnings

# Idle OpenMP threads that spin instead of sleeping made a paper-model step 3-10x slower on a
# loaded 2-core machine (benchmarks/); passive waiting costs nothing measurable when idle. Set
# before torch is imported (commands import it lazily); a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click
import typer

from i2p import __version__
from i2p.common.errors import UserError

app = typer.Typer(name="i2p", help="I2P-MAE at cluster scale: cache build -> pretrain -> eval.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


def _mount() -> None:
    """Attach every stage's commands. Command modules import their heavy dependencies lazily,
    inside the command, so ``i2p --help`` stays fast."""
    from i2p.cache.cli import app as cache_app
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
    from i2p.api.cli import embed, export; app.command("export")(export); app.command("embed")(embed)  # noqa: E702


@app.command()
def version() -> None:
    """Print the i2p version."""
    typer.echo(__version__)


_mount()


def main(argv: list[str] | None = None) -> int:
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"i2p: warning: {msg}\n"
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="i2p", standalone_mode=False)
    except UserError as exc:
        print(f"i2p: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    except click.exceptions.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
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
