"""`kopt hook install|uninstall|run`: a git hook that blocks merges (or pushes) bringing in stale kernels.

The pattern is pre-commit's (`pre_commit/commands/install_uninstall.py`): the installed script is a tiny template
(templates/hook.sh.tmpl) that re-execs `kopt hook run` with the absolute interpreter kopt is installed in,
so it works from a virtualenv that is not on PATH and all logic stays here, testable. A marker line
identifies kopt's script; a foreign hook is kept as `<hook>.legacy` and run first (its failure fails the
hook); install refuses when core.hooksPath is set (git would never run our file); GIT_* variables that git
sets for hooks are removed before kopt runs git itself.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from kopt.errors import KoptError
from kopt.records import Progress, no_progress

HOOKS = ("pre-merge-commit", "pre-push")
MODES = ("check", "optimize")
MARKER = "kopt-hook-5e1f0a7c"  # in templates/hook.sh.tmpl; change both together
TEMPLATE = "hook.sh.tmpl"
ZERO_SHA = "0" * 40
# GIT_* variables that configure how git reaches the outside, not which repository it acts on; the rest
# (GIT_DIR, GIT_INDEX_FILE, GIT_WORK_TREE, ...) would point kopt's own git calls at the hook's context.
_KEEP_GIT_ENV = {"GIT_EXEC_PATH", "GIT_SSH", "GIT_SSH_COMMAND", "GIT_SSL_CAINFO", "GIT_SSL_NO_VERIFY",
                 "GIT_ASKPASS", "GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM",
                 "GIT_ALLOW_PROTOCOL", "GIT_HTTP_PROXY_AUTHMETHOD"}

Say = Callable[[str], None]


def _check_name(hook: str, mode: str = "check") -> None:
    if hook not in HOOKS:
        raise KoptError(f"unknown hook {hook!r}", f"use one of {', '.join(HOOKS)}")
    if mode not in MODES:
        raise KoptError(f"unknown --mode {mode!r}", "use check (block stale kernels) or optimize (re-record them)")


@contextlib.contextmanager
def no_git_env() -> Iterator[None]:
    """Remove the GIT_* variables git exports to hooks while kopt runs git, then put them back."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("GIT_") and k not in _KEEP_GIT_ENV}
    for k in saved:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(saved)


def _repo(cwd: Path | None):
    import git

    try:
        return git.Repo(cwd or Path.cwd(), search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise KoptError(f"{cwd or Path.cwd()} is not inside a git repository", "run this inside your repository") from None


def hooks_dir(repo) -> Path:
    """<git common dir>/hooks: shared by all worktrees, as git itself uses it."""
    return Path(repo.common_dir) / "hooks"


def _hooks_path_setting(repo) -> str | None:
    import git

    try:
        value = repo.git.config("--get", "core.hooksPath")
    except git.GitCommandError:
        return None
    return value.strip() or None


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
    git_cmd = "merge" if hook == "pre-merge-commit" else "push"
    return (text.replace("@PYTHON@", shlex.quote(python)).replace("@HOOK@", hook)
            .replace("@MODE@", mode).replace("@GITCMD@", git_cmd))


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
        hooks_path = _hooks_path_setting(repo)
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
    """What this merge or push changes; None means "check every kernel" (a new branch, unknown history)."""
    import git

    from kopt.check import changed_between

    if hook == "pre-merge-commit":
        # The merge result is in the index and the work tree; HEAD is the branch being merged into.
        return changed_between(repo, "HEAD", "INDEX"), "changed by this merge"
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
        except git.GitCommandError:
            return None, "every kernel (the remote commit is not here)"
    return changed, "changed by this push"


def run(hook: str, mode: str, args: list[str], stdin: bytes, cwd: Path | None = None,
        progress: Progress = no_progress, say: Say = lambda s: None) -> HookOutcome:
    """What the installed hook does: the legacy hook first, then `kopt check` on what the merge changes."""
    from kopt.check import CheckSettings, Verdict, run_check

    _check_name(hook, mode)
    cwd = (cwd or Path.cwd()).resolve()
    legacy_rc = run_legacy(hook, args, stdin, cwd)
    if legacy_rc:
        return HookOutcome(exit_code=legacy_rc, report=None, legacy_rc=legacy_rc,
                           messages=(f"{hook}.legacy (the hook kopt found installed) failed with exit code "
                                     f"{legacy_rc}",))
    with no_git_env():
        repo = _repo(cwd)
        root = Path(repo.working_tree_dir)
        changed, label = _changed_for_hook(repo, hook, stdin)
    # Timing on a hook's schedule would make every merge wait; correctness is what a merge must not break.
    settings = CheckSettings(timing=False)
    report = run_check(None, settings=settings, cwd=root, progress=progress, changed=changed,
                       changed_label=label)
    if mode == "check" or not report.failed:
        return HookOutcome(exit_code=report.exit_code, report=report, legacy_rc=legacy_rc)
    refreshed, messages = [], []
    for r in report.failed:
        if not r.stale or r.verdict is Verdict.BROKEN:
            continue
        say(f"re-optimizing {r.kernel_dir} from its recorded samples")
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
    """`kopt optimize ... --force` for one kernel, replaying the pool recorded beside it (no LLM needed).

    Samples come from the kernel's samples.jsonl and verdicts from the cache, so an unchanged reference
    costs nothing; a changed one re-checks the pool against it.
    """
    from kopt.check import load_reference, read_report
    from kopt.pipeline import OptimizeOptions, RunOptions, optimize

    report = read_report(kernel_dir)
    samples = kernel_dir / "samples.jsonl"
    if not samples.is_file():
        raise KoptError(f"{kernel_dir} has no samples.jsonl to replay",
                        f"run kopt optimize {report['task'].get('target')} --force with your sampler")
    task = load_reference(kernel_dir, report)
    p = report.get("params") or {}
    copy = kernel_dir.parent / f".{kernel_dir.name}.samples.jsonl"  # the output dir is replaced while replaying
    copy.write_bytes(samples.read_bytes())
    try:
        run = RunOptions(sampler="replay", samples=copy, k=int(p.get("k") or sum(1 for _ in samples.open())),
                         temperature=float(p.get("temperature") or 0.25), max_tokens=int(p.get("max_tokens") or 2048),
                         seed=int(p.get("seed") or 0), target=str(report.get("target") or "auto"),
                         surprisal=str(p.get("surprisal") or "mean"))
        opts = OptimizeOptions(run=run, select=str(report.get("strategy") or "surprisal-top-m"),
                               top_m=int(p.get("top_m") or 3), out=kernel_dir, force=True)
        optimize(task, opts, progress=progress, warn=warn)
    finally:
        copy.unlink(missing_ok=True)
    return kernel_dir


def read_stdin(hook: str) -> bytes:
    """pre-push gets its refs on stdin; pre-merge-commit gets nothing (never block on a terminal)."""
    if hook != "pre-push" or sys.stdin is None or sys.stdin.isatty():
        return b""
    return sys.stdin.buffer.read()
