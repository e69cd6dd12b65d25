"""`kopt hook`: installed into real repos, fired by real `git merge` runs, with kopt's venv not on PATH."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from check_helpers import REF, env_for, git, make_repo

from kopt.errors import KoptError
from kopt.githook import MARKER, install, uninstall

FOREIGN = "#!/bin/sh\necho legacy-ran >> \"$(git rev-parse --git-dir)/legacy.log\"\nexit ${LEGACY_RC:-0}\n"


@pytest.fixture
def setup(tmp_path, shared_kopt_home, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    env = env_for(home, shared_kopt_home)
    repo = make_repo(tmp_path, env)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("HOME", str(home))
    return repo, env, home


def hook_install(repo: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    # The CLI, run the way a user would, from the venv's interpreter (not via PATH).
    return subprocess.run([sys.executable, "-m", "kopt", "hook", "install", *args], cwd=repo, env=env,
                          capture_output=True, text=True)


def branch(repo: Path, env: dict, name: str, edit) -> None:
    """Commit `edit` on a new branch, and an unrelated commit on main, so the merge is a true merge."""
    git(repo, "checkout", "-q", "-b", name, env=env)
    edit(repo)
    git(repo, "add", "-A", env=env)
    git(repo, "commit", "-q", "-m", f"{name} change", env=env)
    git(repo, "checkout", "-q", "main", env=env)
    (repo / "NOTES.md").write_text("main moved on\n")
    git(repo, "add", "NOTES.md", env=env)
    git(repo, "commit", "-q", "-m", "main change", env=env)


def merge(repo: Path, env: dict, name: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    res = git(repo, "merge", "--no-edit", name, env=env, check=False)
    return res, time.perf_counter() - t0


def head(repo: Path, env: dict) -> str:
    return git(repo, "rev-parse", "HEAD", env=env).stdout.strip()


def test_install_keeps_foreign_hook_and_uninstall_restores_it(setup):
    repo, env, _ = setup
    hook = repo / ".git" / "hooks" / "pre-merge-commit"
    hook.write_text(FOREIGN)
    hook.chmod(0o755)
    res = hook_install(repo, env)
    assert res.returncode == 0, res.stderr
    text = hook.read_text()
    assert MARKER in text and f"KOPT_PYTHON={sys.executable}\n" in text
    assert '"$KOPT_PYTHON" -m kopt hook run --hook pre-merge-commit --mode check' in text
    assert os.access(hook, os.X_OK)
    assert (repo / ".git" / "hooks" / "pre-merge-commit.legacy").read_text() == FOREIGN
    again = install(cwd=repo, mode="optimize")  # re-install updates kopt's script, keeps the legacy one
    assert again.updated and "--mode optimize" in hook.read_text()
    assert (repo / ".git" / "hooks" / "pre-merge-commit.legacy").read_text() == FOREIGN
    out = uninstall(cwd=repo)
    assert out.removed and out.restored == hook
    assert hook.read_text() == FOREIGN and not (repo / ".git" / "hooks" / "pre-merge-commit.legacy").exists()
    with pytest.raises(KoptError, match="not kopt's hook"):
        uninstall(cwd=repo)


def test_refuses_when_core_hooks_path_is_set(setup):
    repo, env, _ = setup
    git(repo, "config", "core.hooksPath", ".githooks", env=env)
    res = hook_install(repo, env)
    assert res.returncode == 1
    assert "core.hooksPath" in res.stderr and "git config --unset-all core.hooksPath" in res.stderr
    assert not (repo / ".git" / "hooks" / "pre-merge-commit").exists()


def test_unrelated_merge_passes_quickly_and_chains_the_legacy_hook(setup, tmp_path):
    repo, env, home = setup
    hook = repo / ".git" / "hooks" / "pre-merge-commit"
    hook.write_text(FOREIGN)
    hook.chmod(0o755)
    assert hook_install(repo, env).returncode == 0
    assert ".venv" not in env["PATH"] and str(Path(sys.executable).parent) not in env["PATH"]
    branch(repo, env, "docs", lambda r: (r / "README.md").write_text("better docs\n"))
    before = head(repo, env)
    res, wall_s = merge(repo, env, "docs")
    assert res.returncode == 0, res.stdout + res.stderr
    assert head(repo, env) != before and len(git(repo, "log", "-1", "--format=%P", env=env).stdout.split()) == 2
    assert (repo / ".git" / "legacy.log").read_text() == "legacy-ran\n"
    assert wall_s < 5.0, f"a no-op hook run took {wall_s:.2f} s"
    # Nothing written outside the temp dirs: the (temp) HOME stays empty, the work tree clean.
    assert list(home.iterdir()) == []
    assert git(repo, "status", "--porcelain", env=env).stdout == ""


def test_failing_legacy_hook_blocks_the_merge(setup):
    repo, env, _ = setup
    hook = repo / ".git" / "hooks" / "pre-merge-commit"
    hook.write_text(FOREIGN)
    hook.chmod(0o755)
    assert hook_install(repo, env).returncode == 0
    branch(repo, env, "docs", lambda r: (r / "README.md").write_text("better docs\n"))
    before = head(repo, env)
    res, _ = merge(repo, {**env, "LEGACY_RC": "3"}, "docs")
    assert res.returncode != 0 and head(repo, env) == before
    assert "pre-merge-commit.legacy" in res.stderr and "exit code 3" in res.stderr


def test_merge_that_edits_the_reference_is_blocked_as_stale(setup):
    repo, env, home = setup
    assert hook_install(repo, env).returncode == 0
    branch(repo, env, "ref", lambda r: (r / "models" / "affine.py").write_text(REF.replace("x * 2.0 + 1.0", "x * 3.0 + 1.0")))
    before = head(repo, env)
    res, wall_s = merge(repo, env, "ref")
    assert res.returncode != 0, res.stdout + res.stderr
    assert head(repo, env) == before and (repo / ".git" / "MERGE_HEAD").exists()
    assert "stale" in res.stderr and "kopt optimize models/affine.py" in res.stderr and "--force" in res.stderr
    assert "blocked" in res.stderr
    assert list(home.iterdir()) == []


def test_merge_that_corrupts_the_kernel_is_blocked_as_incorrect(setup):
    repo, env, _ = setup
    assert hook_install(repo, env).returncode == 0

    def corrupt(r: Path) -> None:
        for name in ("model_new.py", "kernel.cpp"):
            f = r / "kernels" / "affine" / name
            f.write_text(f.read_text().replace("* 2.0f + 1.0f", "* 2.0f + 1.5f"))

    branch(repo, env, "tweak", corrupt)
    before = head(repo, env)
    res, _ = merge(repo, env, "tweak")
    assert res.returncode != 0 and head(repo, env) == before
    assert "incorrect" in res.stderr, res.stderr


def stale_ref(r: Path) -> None:
    (r / "models" / "affine.py").write_text(REF.replace("x * 2.0 + 1.0", "x * 3.0 + 1.0"))


def test_git_commit_that_concludes_a_blocked_merge_is_blocked_too(setup):
    repo, env, _ = setup
    assert hook_install(repo, env).returncode == 0
    assert (repo / ".git" / "hooks" / "commit-msg").exists() and (repo / ".git" / "hooks" / "post-merge").exists()
    branch(repo, env, "ref", stale_ref)
    before = head(repo, env)
    res, _ = merge(repo, env, "ref")
    assert res.returncode != 0 and (repo / ".git" / "MERGE_HEAD").exists()
    # git's own hint after a failed pre-merge-commit is `git commit`: that must not walk past the check.
    res = git(repo, "commit", "--no-edit", env=env, check=False)
    assert res.returncode != 0, res.stdout + res.stderr
    assert head(repo, env) == before and (repo / ".git" / "MERGE_HEAD").exists()
    assert "kopt commit-msg hook: blocked" in res.stderr and "stale" in res.stderr
    assert "git commit --no-verify" in res.stderr
    # An ordinary commit (no merge under way) is not checked and costs nothing.
    git(repo, "merge", "--abort", env=env)
    (repo / "NOTES.md").write_text("more notes\n")
    git(repo, "add", "NOTES.md", env=env)
    t0 = time.perf_counter()
    res = git(repo, "commit", "-q", "-m", "notes", env=env, check=False)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert time.perf_counter() - t0 < 2.0


def test_fast_forward_that_brings_a_stale_kernel_warns_with_the_fix(setup):
    repo, env, _ = setup
    assert hook_install(repo, env).returncode == 0
    git(repo, "checkout", "-q", "-b", "ref", env=env)
    stale_ref(repo)
    git(repo, "commit", "-qam", "reference change", env=env)
    git(repo, "checkout", "-q", "main", env=env)
    res, _ = merge(repo, env, "ref")
    assert res.returncode == 0  # a fast-forward runs no blocking hook: post-merge can only warn
    assert "Fast-forward" in res.stdout
    assert head(repo, env) == git(repo, "rev-parse", "ref", env=env).stdout.strip()
    assert "warning:" in res.stderr and "stale" in res.stderr and "fast-forward" in res.stderr
    assert "kopt optimize models/affine.py" in res.stderr and "--sampler replay" not in res.stderr


def test_fast_forward_of_unrelated_changes_is_silent(setup):
    repo, env, _ = setup
    assert hook_install(repo, env).returncode == 0
    git(repo, "checkout", "-q", "-b", "docs", env=env)
    (repo / "README.md").write_text("better docs\n")
    git(repo, "commit", "-qam", "docs", env=env)
    git(repo, "checkout", "-q", "main", env=env)
    res, _ = merge(repo, env, "docs")
    assert res.returncode == 0 and res.stderr == "", res.stderr
