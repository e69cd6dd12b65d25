"""The `kopt` command: one module per subcommand, composed here. The CLI is thin: parse, call one core
function, render. kopt/cli/boundary.py turns every exception into an exit code: 0 done, 1 a problem the user
can act on (one line and a hint), 2 a usage mistake, 3 a bug in kopt (traceback in $KOPT_HOME/kopt.log),
130 interrupted.
"""

from __future__ import annotations

import sys

import typer

from kopt.cli import cache_cmd, check_cmd, compare_cmd, eval_cmd, hook_cmd, init_cmd, optimize_cmd
from kopt.cli.help import App

app = App(
    name="kopt",
    help="Find a faster kernel for a PyTorch module: sample K kernels from an LLM, keep the correct ones, "
    "time the most surprising few (Barnes 2026, arXiv 2602.07670).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(isolation: str = typer.Option(
        None, "--isolation", metavar="LEVEL",
        help="How candidates are sandboxed: bwrap or unshare (default: the strongest that works here). "
             "`none` runs them unsandboxed and is only taken when asked for; every verdict records the level.")) -> None:
    import os

    if isolation is not None:
        if isolation not in ("bwrap", "unshare", "none"):
            raise typer.BadParameter(f"{isolation!r} is not one of bwrap, unshare, none", param_hint="--isolation")
        # The same knob as $KOPT_ISOLATION: every sandboxed child of this run (capture, compile, sessions) uses it.
        os.environ["KOPT_ISOLATION"] = isolation


for module in (init_cmd, eval_cmd, optimize_cmd, compare_cmd, check_cmd):
    module.register(app)
app.add_typer(cache_cmd.app, name="cache")
app.add_typer(hook_cmd.app, name="hook")


def main(argv: list[str] | None = None) -> None:
    import os

    from kopt.cli.boundary import run

    # transformers and huggingface_hub draw their own tqdm bars above kopt's; kopt's bars say what is happening.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    sys.exit(run(app, argv))
