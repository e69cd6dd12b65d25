"""The `kopt` command: one module per subcommand, composed here. The CLI is thin: parse, call one core
function, render. Errors the user can act on (KoptError) print one line and exit 1; Ctrl-C exits 130;
anything else is a kopt bug: traceback, exit 3.
"""

from __future__ import annotations

import sys

import click
import typer

from kopt.cli import cache_cmd, check_cmd, compare_cmd, eval_cmd, hook_cmd, init_cmd, optimize_cmd

app = typer.Typer(
    name="kopt",
    help="Find a faster kernel for a PyTorch module: sample K kernels from an LLM, keep the correct ones, "
    "time the most surprising few (Barnes 2026, arXiv 2602.07670).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (init_cmd, eval_cmd, optimize_cmd, compare_cmd, check_cmd):
    module.register(app)
app.add_typer(cache_cmd.app, name="cache")
app.add_typer(hook_cmd.app, name="hook")


def main(argv: list[str] | None = None) -> None:
    from kopt.cli.console import print_error
    from kopt.errors import KoptError

    try:
        rv = app(args=argv, standalone_mode=False)
    except KoptError as e:
        print_error(e.message, e.hint)
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        print_error("interrupted; finished samples and verdicts are cached, rerun the same command to resume")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code if e.exit_code else 1)
    sys.exit(rv if isinstance(rv, int) else 0)
