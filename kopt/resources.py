"""The only reader of templates/ (prompts, the task file template, the git hook script).

In a source checkout the templates live in <repo>/templates; in a wheel hatch maps them to kopt/templates.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def templates_dir() -> Path:
    packaged = _HERE / "templates"
    if packaged.is_dir():
        return packaged
    return _HERE.parent / "templates"


def read_template(name: str) -> str:
    path = templates_dir() / name
    return path.read_text(encoding="utf-8")
