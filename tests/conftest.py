"""Shared fixtures. Every test gets its own KOPT_HOME, so no test reads or writes the user's cache; builds go to
one session-wide KOPT_BUILD_DIR (content-addressed, so identical kernels compile once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# ../shared/kernelbench beside the repo (CI has it too).
KERNELBENCH = REPO.parent / "shared" / "kernelbench" / "level1"


@pytest.fixture(scope="session", autouse=True)
def kopt_build_dir(tmp_path_factory):
    """One KOPT_BUILD_DIR for the whole session (os.environ, so subprocesses inherit it): builds are keyed by
    the extension's content, so a kernel compiled by one module (e.g. the examples' gelu/swish) is reused by
    every other, whatever each test's KOPT_HOME."""
    path = tmp_path_factory.mktemp("kopt-build")
    old = os.environ.get("KOPT_BUILD_DIR")
    os.environ["KOPT_BUILD_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("KOPT_BUILD_DIR", None)
    else:
        os.environ["KOPT_BUILD_DIR"] = old


@pytest.fixture(autouse=True)
def kopt_home(tmp_path_factory, monkeypatch) -> Path:
    home = tmp_path_factory.mktemp("kopt-home")
    monkeypatch.setenv("KOPT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def shared_kopt_home(tmp_path_factory) -> Path:
    """A KOPT_HOME shared by a module's tests, for build caches that are expensive to recreate."""
    return tmp_path_factory.mktemp("kopt-home-shared")


@pytest.fixture
def kernelbench() -> Path:
    if not KERNELBENCH.is_dir():
        pytest.skip("../shared/kernelbench/level1 is not beside the repo")
    return KERNELBENCH


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


os.environ.setdefault("MAX_JOBS", "2")
