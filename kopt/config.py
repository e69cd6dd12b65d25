"""Where kopt keeps things, and the user's defaults.

Precedence, lowest first: built-in defaults < `[tool.kopt]` in ./pyproject.toml < ./kopt.toml < flags.
A config file holds the same names as the long flags, with dashes or underscores (every setting declared
in kopt/settings.py; one a command does not take is ignored by it):

    # kopt.toml
    k = 32
    target = "cpu"
    base-url = "http://127.0.0.1:8000/v1"

Environment: $KOPT_HOME (default ~/.cache/kopt) holds caches and run dirs; $KOPT_BUILD_DIR (default
$KOPT_HOME/build) holds compiled extensions. Builds there are content-addressed (one dir per extension:
sources, functions, flags, toolchain, arch; see kopt.evaluator.worker.extension_name) and locked per dir, so
several KOPT_HOMEs, and concurrent kopt processes, can share one KOPT_BUILD_DIR.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from kopt.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def kopt_home() -> Path:
    """Caches and build dirs: $KOPT_HOME, else the user cache dir (XDG)."""
    env = os.environ.get("KOPT_HOME")
    if env:
        home = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = Path(base) / "kopt"
    home.mkdir(parents=True, exist_ok=True)
    return home


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask; a container's cpuset narrows it below cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def build_dir() -> Path:
    """Where extension builds live: $KOPT_BUILD_DIR, else kopt_home()/build (see the module docstring). kopt's
    build store is its `v2/` subdir (kopt.evaluator.build: entries written only by kopt's own process)."""
    env = os.environ.get("KOPT_BUILD_DIR")
    path = Path(env).expanduser().resolve() if env else kopt_home() / "build"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}", "fix the file or delete it") from None


def load_config(cwd: Path | None = None) -> dict[str, Any]:
    """The user's defaults from ./kopt.toml and ./pyproject.toml [tool.kopt], keys normalised to snake_case."""
    cwd = cwd or Path.cwd()
    merged: dict[str, Any] = {}
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file():
        tool = _read_toml(pyproject).get("tool", {}).get("kopt", {})
        if not isinstance(tool, dict):
            raise ConfigError(f"[tool.kopt] in {pyproject} must be a table", "write it as [tool.kopt]")
        merged.update(tool)
    own = cwd / "kopt.toml"
    if own.is_file():
        merged.update(_read_toml(own))
    return {k.replace("-", "_"): v for k, v in merged.items()}


def settings_for(command: str, flags: dict[str, Any], cwd: Path | None = None) -> dict[str, Any]:
    """One command's settings (kopt/settings.py): declared default < config file < flag, validated."""
    from kopt import settings

    return settings.resolve(command, flags, load_config(cwd))


def resolve(flags: dict[str, Any], config: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Merge: a flag the user gave (not None) wins over the config file, which wins over the default.

    Unknown config keys are an error, so a typo in kopt.toml does not silently do nothing.
    """
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) in kopt.toml/[tool.kopt]: {', '.join(unknown)}",
            f"known settings: {', '.join(sorted(defaults))}",
        )
    out = dict(defaults)
    out.update({k: v for k, v in config.items() if k in defaults})
    out.update({k: v for k, v in flags.items() if v is not None})
    return out
