"""`kopt hook install|uninstall|run`: git hooks that keep stale or broken kernels out of a branch.

`kopt hook install` puts three hooks around a merge, because no single git hook sees every way a merge ends:
- pre-merge-commit: `git merge` that creates a merge commit; blocks it.
- commit-msg: `git commit` (or `git merge --continue`) concluding a merge that stopped (a conflict, or the
  block above, after which git itself suggests `git commit`); pre-merge-commit does not run there. It acts
  only while MERGE_HEAD exists, so ordinary commits cost nothing.
- post-merge: after every merge, fast-forwards included (they create no commit, so nothing above runs);
  it cannot undo the merge, so it warns with the fix.
`--hook pre-push` installs the check before a push instead. What no local hook can stop: `--no-verify`, a
hook never installed in a clone, a push to the server from elsewhere. `kopt check --base origin/main` in CI
is the gate; the hooks are early warnings.

The pattern is pre-commit's (`pre_commit/commands/install_uninstall.py`): the installed script is a tiny template
(templates/hook.sh.tmpl) that re-execs `kopt hook run` with the absolute interpreter kopt is installed in,
so it works from a virtualenv that is not on PATH and all logic stays here, testable. A marker line
identifies kopt's script; a foreign hook is kept as `<hook>.legacy` and run first (its failure fails the
hook); install refuses when core.hooksPath is set (git would never run our file); GIT_* variables that git
sets for hooks are removed before kopt runs git itself.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kopt.errors import KoptError
from kopt.git import hooks_dir, hooks_path_setting, no_git_env, open_repo
from kopt.records import Progress, no_progress

HOOKS = ("pre-merge-commit", "commit-msg", "post-merge", "pre-push")
# What `kopt hook install --hook NAME` installs: "merge" is the set that covers every way a merge ends.
HOOK_SETS = {"merge": ("pre-merge-commit", "commit-msg", "post-merge"), **{h: (h,) for h in HOOKS}}
BLOCKING = {"pre-merge-commit": "merge", "commit-msg": "commit", "pre-push": "push"}  # hook -> the git command
MODES = ("check", "optimize")
MARKER = "kopt-hook-5e1f0a7c"  # in templates/hook.sh.tmpl; change both together
TEMPLATE = "hook.sh.tmpl"
ZERO_SHA = "0" * 40
Say = Callable[[str], None]


def _check_name(hook: str, mode: str = "check") -> None:
    if hook not in HOOKS:
        raise KoptError(f"unknown hook {hook!r}", f"use one of {', '.join(HOOKS)}")
    if mode not in MODES:
        raise KoptError(f"unknown --mode {mode!r}", "use check (block stale kernels) or optimize (re-record them)")


def _repo(cwd: Path | None):
    return open_repo(cwd)


def is_kopt_hook(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return MARKER.encode() in f.read(4096)
    except OSError:
        return False


def render_hook(hook: str, mode: str, python: str) -> str:
    from kopt.resources import read_template

    text = read_template(TEMPLATE)
    if MARKER not in text:
        raise KoptError(f"templates/{TEMPLATE} has lost its marker line", "reinstall kopt")
    git_cmd = BLOCKING.get(hook, "merge")
    # commit-msg matters only for the commit that concludes a merge: ordinary commits exit in the shell.
    guard = ""
    if hook == "commit-msg":
        # Only the commit that concludes a stopped merge: not an ordinary commit (no MERGE_HEAD), and not the
        # commit `git merge`/`git pull` makes itself (GIT_REFLOG_ACTION is theirs), which pre-merge-commit checked.
        guard = ('[ -f "$(git rev-parse --git-path MERGE_HEAD)" ] || exit 0\n    '
                 'case "$GIT_REFLOG_ACTION" in merge*|pull*) exit 0 ;; esac\n')
    elif hook == "post-merge":  # a merge that touched no Python, kernel or report file cannot stale a kernel
        guard = ("changed=$(git diff --name-only ORIG_HEAD HEAD 2>/dev/null) && ! printf '%s\\n' \"$changed\" | "
                 "grep -qE '[.](py|cpp|cu)$|(^|/)report[.]json$' && exit 0\n")
    if guard:  # a hook kopt moved aside (<hook>.legacy) must still run every time
        guard = f'if [ ! -e "$0.legacy" ]; then\n    {guard}fi\n'
    return (text.replace("@PYTHON@", shlex.quote(python)).replace("@HOOK@", hook)
            .replace("@MODE@", mode).replace("@GITCMD@", git_cmd).replace("@GUARD@\n", guard))


@dataclass(frozen=True)
class InstallResult:
    path: Path
    legacy: Path | None  # where the foreign hook that was there now lives
    updated: bool  # kopt's hook was already there and was rewritten


def install(hook: str = "pre-merge-commit", mode: str = "check", cwd: Path | None = None,
            python: str | None = None) -> InstallResult:
    """Write the hook script; move a foreign hook aside to `<hook>.legacy` (run first by `kopt hook run`)."""
    _check_name(hook, mode)
    with no_git_env():
        repo = _repo(cwd)
        hooks_path = hooks_path_setting(repo)
    if hooks_path:
        raise KoptError(
            f"core.hooksPath is set ({hooks_path}), so git would never run a hook in .git/hooks",
            "unset it with `git config --unset-all core.hooksPath` (check --global too), or call "
            f"`{python or sys.executable} -m kopt hook run --hook {hook}` from a hook in {hooks_path}",
        )
    directory = hooks_dir(repo)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / hook
    legacy = directory / f"{hook}.legacy"
    updated = False
    if path.exists() or path.is_symlink():
        if is_kopt_hook(path):
            updated = True
        elif legacy.exists():
            raise KoptError(f"both {path} and {legacy} exist and neither is kopt's",
                            f"merge them into {legacy} by hand and delete {path}, then install again")
        else:
            path.rename(legacy)
    # sys.executable unresolved: a venv's bin/python symlink is what makes the venv's packages visible.
    text = render_hook(hook, mode, python or sys.executable)
    tmp = directory / f".{hook}.kopt-tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    tmp.replace(path)
    return InstallResult(path=path, legacy=legacy if legacy.exists() else None, updated=updated)


@dataclass(frozen=True)
class UninstallResult:
    path: Path
    removed: bool
    restored: Path | None  # the foreign hook put back in place


def uninstall(hook: str = "pre-merge-commit", cwd: Path | None = None) -> UninstallResult:
    """Remove kopt's hook and put back what was there before (the .legacy file)."""
    _check_name(hook)
    with no_git_env():
        repo = _repo(cwd)
    directory = hooks_dir(repo)
    path = directory / hook
    legacy = directory / f"{hook}.legacy"
    if not path.exists():
        return UninstallResult(path=path, removed=False, restored=None)
    if not is_kopt_hook(path):
        raise KoptError(f"{path} is not kopt's hook; leaving it alone", "delete it by hand if you want it gone")
    path.unlink()
    restored = None
    if legacy.exists():
        legacy.rename(path)
        restored = path
    return UninstallResult(path=path, removed=True, restored=restored)


# ---- running -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HookOutcome:
    exit_code: int
    report: object | None  # kopt.check.CheckReport; None when the legacy hook failed first
    legacy_rc: int | None  # None: no legacy hook
    refreshed: tuple[str, ...] = ()  # --mode optimize: kernel dirs re-recorded (now to be committed)
    messages: tuple[str, ...] = ()
    warn_only: bool = False  # post-merge: the merge is done; failures are a warning with the fix


def run_legacy(hook: str, args: list[str], stdin: bytes, cwd: Path) -> int | None:
    """Run `<hook>.legacy` with git's own arguments and stdin, in git's environment; None if there is none."""
    with no_git_env():
        repo = _repo(cwd)
    legacy = hooks_dir(repo) / f"{hook}.legacy"
    if not legacy.exists():
        return None
    if not os.access(legacy, os.X_OK):
        return None  # git itself ignores a hook that is not executable
    return subprocess.run([str(legacy), *args], input=stdin, cwd=str(cwd)).returncode


def _changed_for_hook(repo, hook: str, stdin: bytes) -> tuple[set[Path] | None, str]:
    """What this merge, commit or push changes; None means "check every kernel" (unknown history)."""
    from kopt.git import changed_between, command_error, last_merge_range

    if hook in ("pre-merge-commit", "commit-msg"):
        # The merge result is in the index and the work tree; HEAD is the branch being merged into.
        return changed_between(repo, "HEAD", "INDEX"), "changed by this merge"
    if hook == "post-merge":
        span = last_merge_range(repo)
        if span is None:
            return None, "every kernel (the merge's starting point is unknown)"
        return changed_between(repo, span[0], span[1]), "brought by this merge"
    changed: set[Path] = set()
    for line in stdin.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        _local_ref, local_sha, _remote_ref, remote_sha = parts
        if local_sha == ZERO_SHA:
            continue  # deleting a remote branch pushes no code
        if remote_sha == ZERO_SHA:
            return None, "every kernel (a new remote branch)"
        try:
            changed |= changed_between(repo, remote_sha, local_sha)
        except command_error():
            return None, "every kernel (the remote commit is not here)"
    return changed, "changed by this push"


def run(hook: str, mode: str, args: list[str], stdin: bytes, cwd: Path | None = None,
        progress: Progress = no_progress, say: Say = lambda s: None) -> HookOutcome:
    """What the installed hook does: the legacy hook first, then `kopt check` on what the merge changes.

    post-merge never blocks (the merge is done): its outcome carries exit code 0 and `warn_only`.
    """
    from kopt.check import CheckSettings, Verdict, run_check
    from kopt.git import merge_in_progress, work_tree

    _check_name(hook, mode)
    cwd = (cwd or Path.cwd()).resolve()
    with no_git_env():
        repo = _repo(cwd)
        if hook == "commit-msg" and not merge_in_progress(repo):
            return HookOutcome(exit_code=0, report=None, legacy_rc=run_legacy(hook, args, stdin, cwd))
    legacy_rc = run_legacy(hook, args, stdin, cwd)
    if legacy_rc and hook != "post-merge":
        return HookOutcome(exit_code=legacy_rc, report=None, legacy_rc=legacy_rc,
                           messages=(f"{hook}.legacy (the hook kopt found installed) failed with exit code "
                                     f"{legacy_rc}",))
    with no_git_env():
        root = work_tree(repo)
        changed, label = _changed_for_hook(repo, hook, stdin)
    # Timing on a hook's schedule would make every merge wait; correctness is what a merge must not break.
    settings = CheckSettings(timing=False)
    report = run_check(None, settings=settings, cwd=root, progress=progress, changed=changed,
                       changed_label=label)
    if hook == "post-merge":
        return HookOutcome(exit_code=0, report=report, legacy_rc=legacy_rc, warn_only=True)
    if mode == "check" or not report.failed:
        return HookOutcome(exit_code=report.exit_code, report=report, legacy_rc=legacy_rc)
    refreshed, messages = [], []
    for r in report.failed:
        if not r.stale or r.verdict is Verdict.BROKEN:
            continue
        say(f"re-optimizing {r.kernel_dir} with its recorded sampler and model")
        try:
            reoptimize(root / r.kernel_dir, progress=progress, warn=say)
            refreshed.append(r.kernel_dir)
        except KoptError as e:
            messages.append(f"{r.kernel_dir}: kopt optimize failed: {e}")
    if refreshed:
        messages.append(f"re-recorded {', '.join(refreshed)}: review, `git add` them, then `git commit` to "
                        "finish the merge")
    return HookOutcome(exit_code=1, report=report, legacy_rc=legacy_rc, refreshed=tuple(refreshed),
                       messages=tuple(messages))


def reoptimize(kernel_dir: Path, progress: Progress = no_progress, warn: Say = lambda s: None) -> Path:
    """`kopt optimize ... --force` for one kernel with the sampler and model it was recorded with: new samples
    for the new reference (the recorded pool was written for the old one). A kernel recorded from a replayed
    pool has no sampler to ask; the error says which command to run instead."""
    from kopt.check import read_report
    from kopt.pipeline import OptimizeOptions, RunOptions, optimize

    record = read_report(kernel_dir)
    if record.sampler in ("", "replay"):
        raise KoptError(f"{kernel_dir} was recorded from a replayed pool, so there is no model to sample from",
                        f"run {record.rerecord_command(record.task.target, str(kernel_dir))} with your sampler")
    task = record.load_reference(kernel_dir)
    p = record.params
    run = RunOptions(sampler=record.sampler, model=record.model or None, base_url=p.get("base_url"),
                     k=int(p.get("k") or 16), temperature=float(p.get("temperature") or 0.25),
                     max_tokens=int(p.get("max_tokens") or 2048), seed=int(p.get("seed") or 0),
                     target=record.target or "auto", surprisal=str(p.get("surprisal") or "mean"))
    opts = OptimizeOptions(run=run, select=record.strategy or "surprisal-top-m", top_m=int(p.get("top_m") or 3),
                           out=kernel_dir, force=True)
    optimize(task, opts, progress=progress, warn=warn)
    return kernel_dir


def read_stdin(hook: str) -> bytes:
    """pre-push gets its refs on stdin; the other hooks get nothing (never block on a terminal)."""
    if hook != "pre-push" or sys.stdin is None or sys.stdin.isatty():
        return b""
    return sys.stdin.buffer.read()
