"""Every git operation kopt performs (through GitPython, imported here only).

`kopt check --base`, the git hooks and their installer ask git three kinds of question: where the repository
is, which files a range of history changed, and where hooks and merge state live. GIT_* variables that git
exports to hooks (GIT_DIR, GIT_INDEX_FILE, ...) would point kopt's own git calls at the hook's context, so
callers inside a hook wrap their calls in `no_git_env()`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from kopt.errors import KoptError

# GIT_* variables that configure how git reaches the outside, not which repository it acts on.
_KEEP_GIT_ENV = {"GIT_EXEC_PATH", "GIT_SSH", "GIT_SSH_COMMAND", "GIT_SSL_CAINFO", "GIT_SSL_NO_VERIFY",
                 "GIT_ASKPASS", "GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM",
                 "GIT_ALLOW_PROTOCOL", "GIT_HTTP_PROXY_AUTHMETHOD"}


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


def open_repo(cwd: Path | None = None):
    """The repository holding `cwd`; KoptError outside one."""
    import git

    try:
        return git.Repo(cwd or Path.cwd(), search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise KoptError(f"{cwd or Path.cwd()} is not inside a git repository", "run this inside your repository") from None


def repo_root(start: Path) -> Path | None:
    """The work tree holding `start`, or None outside git."""
    try:
        repo = open_repo(start)
    except KoptError:
        return None
    return Path(repo.working_tree_dir) if repo.working_tree_dir else None


def work_tree(repo) -> Path:
    return Path(repo.working_tree_dir)


def hooks_dir(repo) -> Path:
    """<git common dir>/hooks: shared by all worktrees, as git itself uses it."""
    return Path(repo.common_dir) / "hooks"


def hooks_path_setting(repo) -> str | None:
    import git

    try:
        value = repo.git.config("--get", "core.hooksPath")
    except git.GitCommandError:
        return None
    return value.strip() or None


def merge_in_progress(repo) -> bool:
    """A merge was started and not concluded (MERGE_HEAD exists): the next `git commit` concludes it."""
    return (Path(repo.git_dir) / "MERGE_HEAD").exists()


def last_merge_range(repo) -> tuple[str, str] | None:
    """(ORIG_HEAD, HEAD) after `git merge`/`git pull`: what the merge brought; None when unknown."""
    import git

    try:
        return repo.git.rev_parse("ORIG_HEAD").strip(), repo.git.rev_parse("HEAD").strip()
    except git.GitCommandError:
        return None


def changed_between(repo, old: str, new: str | None) -> set[Path]:
    """Files that differ between commit `old` and `new` (a commit, "INDEX" for the index, None for the tree)."""
    top = work_tree(repo)
    if new == "INDEX":
        out = repo.git.diff("--cached", "--name-only", "--no-renames", old)
    elif new is None:
        out = repo.git.diff("--name-only", "--no-renames", old)
    else:
        out = repo.git.diff("--name-only", "--no-renames", old, new)
    return {(top / line).resolve() for line in out.splitlines() if line.strip()}


def changed_since_merge_base(root: Path, base: str) -> tuple[set[Path], str]:
    """Files that differ between the merge base of BASE and HEAD, and the working tree (committed and
    uncommitted changes both count). Returns absolute paths and a description of the range."""
    import git

    try:
        repo = git.Repo(root, search_parent_directories=True)
        bases = repo.merge_base(base, "HEAD")
    except git.GitCommandError as e:
        raise KoptError(f"cannot find the merge base of {base!r} and HEAD: {e.stderr.strip() or e}",
                        "name a branch or commit that exists here, e.g. --base origin/main (after git fetch)") from None
    except git.BadName:
        raise KoptError(f"unknown git revision {base!r}", "e.g. --base origin/main") from None
    if not bases:
        raise KoptError(f"{base!r} and HEAD share no history", "name a branch this one was made from")
    mb = bases[0]
    return changed_between(repo, mb.hexsha, None), f"changed since {mb.hexsha[:10]} (merge base of {base} and HEAD)"


def command_error():
    """GitPython's error for a failed git command (for callers that catch it without importing git)."""
    import git

    return git.GitCommandError
