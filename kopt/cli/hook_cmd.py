"""`kopt hook install|uninstall|run`: git hooks that run `kopt check` on what a merge, commit or push changes."""

from __future__ import annotations

from pathlib import Path
from typing import List, Literal, Optional

import typer

from kopt.cli.help import App

app = App(help="Install git hooks that block merges bringing in stale or broken kernels (CI's `kopt check --base` "
          "is the gate: see README).", no_args_is_help=True)

HookSet = Literal["merge", "pre-merge-commit", "commit-msg", "post-merge", "pre-push"]
Hook = Literal["pre-merge-commit", "commit-msg", "post-merge", "pre-push"]
Mode = Literal["check", "optimize"]
HookSetOpt = typer.Option("merge", "--hook", help="merge: pre-merge-commit (blocks `git merge`), commit-msg (blocks the "
                          "`git commit` that concludes a stopped merge) and post-merge (warns after a fast-forward); "
                          "or pre-push, or one hook by name.")
HookOpt = typer.Option("pre-merge-commit", "--hook", help="The hook git ran.")


@app.command("install")
def install(
    hook: HookSet = HookSetOpt,
    mode: Mode = typer.Option("check", "--mode", help="check: block stale or broken kernels; optimize: re-record stale kernels with their recorded sampler and model, then block so you can commit them."),
) -> None:
    """Write .git/hooks/<hook>; a hook already there is kept as <hook>.legacy and still runs first."""
    import sys

    from kopt.cli.console import console
    from kopt.githook import HOOK_SETS
    from kopt.githook import install as do_install

    for name in HOOK_SETS[hook]:
        res = do_install(name, mode)
        verb = "updated" if res.updated else "installed"
        console.print(f"{verb} {res.path} (mode {mode}; runs {sys.executable} -m kopt)", highlight=False)
        if res.legacy:
            console.print(f"  the hook that was there is kept as {res.legacy} and runs first", highlight=False)
    console.print("a local hook is skipped by --no-verify and absent in fresh clones: run `kopt check --base "
                  "origin/main` in CI as the gate", highlight=False)


@app.command("uninstall")
def uninstall(hook: HookSet = HookSetOpt) -> None:
    """Remove kopt's hooks and restore the ones they replaced."""
    from kopt.cli.console import console
    from kopt.githook import HOOK_SETS, is_kopt_hook
    from kopt.githook import uninstall as do_uninstall

    for name in HOOK_SETS[hook]:
        from kopt.git import hooks_dir, open_repo

        if hook == "merge" and not is_kopt_hook(hooks_dir(open_repo(None)) / name):
            continue  # part of the set that was never installed (or is someone else's): leave it alone
        res = do_uninstall(name)
        if not res.removed:
            console.print(f"no hook at {res.path}; nothing to do", highlight=False)
        elif res.restored:
            console.print(f"removed kopt's {name} hook; restored the previous one", highlight=False)
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
    quiet_pass = outcome.warn_only and outcome.report is not None and not outcome.report.failed
    if outcome.report is not None and (outcome.report.results or outcome.exit_code) and not quiet_pass:
        render(err_console, outcome.report)
    for m in outcome.messages:
        err_console.print(m, highlight=False, soft_wrap=True)
    if outcome.warn_only and outcome.report is not None and outcome.report.failed:
        from kopt.cli.console import print_warning

        print_warning("this merge brought kernels that fail `kopt check` (a fast-forward or --no-verify merge runs "
                      "no blocking hook); fix them with the commands above and commit")
    if outcome.exit_code:
        from kopt.githook import BLOCKING

        git_cmd = BLOCKING.get(hook, "merge")
        print_error(f"kopt {hook} hook: blocked", f"fix the kernels above, or skip once with `git {git_cmd} --no-verify`")
    return outcome.exit_code
