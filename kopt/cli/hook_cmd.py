"""`kopt hook install|uninstall|run`: a git hook that runs `kopt check` on what a merge or push changes."""

from __future__ import annotations

from pathlib import Path
from typing import List, Literal, Optional

import typer

from kopt.cli.help import App

app = App(help="Install a git hook that blocks merges bringing in stale or broken kernels.",
                  no_args_is_help=True)

Hook = Literal["pre-merge-commit", "pre-push"]
Mode = Literal["check", "optimize"]
HookOpt = typer.Option("pre-merge-commit", "--hook", help="pre-merge-commit (runs during `git merge`) or pre-push.")


@app.command("install")
def install(
    hook: Hook = HookOpt,
    mode: Mode = typer.Option("check", "--mode", help="check: block stale or broken kernels; optimize: re-record stale kernels from their recorded samples, then block so you can commit them."),
) -> None:
    """Write .git/hooks/<hook>; a hook already there is kept as <hook>.legacy and still runs first."""
    import sys

    from kopt.cli.console import console
    from kopt.githook import install as do_install

    res = do_install(hook, mode)
    verb = "updated" if res.updated else "installed"
    console.print(f"{verb} {res.path} (mode {mode}; runs {sys.executable} -m kopt)", highlight=False)
    if res.legacy:
        console.print(f"the hook that was there is kept as {res.legacy} and runs first", highlight=False)


@app.command("uninstall")
def uninstall(hook: str = HookOpt) -> None:
    """Remove kopt's hook and restore the one it replaced."""
    from kopt.cli.console import console
    from kopt.githook import uninstall as do_uninstall

    res = do_uninstall(hook)
    if not res.removed:
        console.print(f"no hook at {res.path}; nothing to do", highlight=False)
    elif res.restored:
        console.print(f"removed kopt's hook; restored the previous {res.restored}", highlight=False)
    else:
        console.print(f"removed {res.path}", highlight=False)


@app.command("run", hidden=True)
def run(
    hook: Hook = HookOpt,
    mode: Mode = typer.Option("check", "--mode", help="check or optimize."),
    args: Optional[List[str]] = typer.Argument(None, help="What git passed to the hook."),
) -> int:
    """What the installed hook calls (not for direct use)."""
    from kopt.cli.check_cmd import render
    from kopt.cli.console import err_console, print_error
    from kopt.githook import read_stdin
    from kopt.githook import run as run_hook

    outcome = run_hook(hook, mode, list(args or []), read_stdin(hook), cwd=Path.cwd(),
                       say=lambda s: err_console.print(s, highlight=False))
    if outcome.report is not None and (outcome.report.results or outcome.exit_code):
        render(err_console, outcome.report)
    for m in outcome.messages:
        err_console.print(m, highlight=False, soft_wrap=True)
    if outcome.exit_code:
        git_cmd = "merge" if hook == "pre-merge-commit" else "push"
        print_error(f"kopt {hook} hook: blocked", f"fix the kernels above, or skip once with `git {git_cmd} --no-verify`")
    return outcome.exit_code
