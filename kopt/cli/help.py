"""How `kopt ... --help` shows a command: one convention for every subcommand.

- usage lines name arguments as the docs do (`kopt optimize [OPTIONS] TARGET`, `kopt check [OPTIONS] [PATHS]...`),
  not as typer 0.29 does (`{target}`, `[paths]...`);
- a flag (`--json`, `--force`) shows no value type: it takes no value, so `<bool>` would mislead;
- a default is shown one way, in the help sentence as "(default X)": a help text that already names its
  default keeps it, every other non-empty default is appended; typer's own `[default: ...]` is turned off.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


def _usage_name(arg: TyperArgument) -> str:
    name = (arg.metavar or arg.name or "").upper()
    if arg.nargs != 1:
        name += "..."
    return name if arg.required else f"[{name}]" if arg.nargs == 1 else f"[{name[:-3]}]..."


def _default_text(value: Any) -> str | None:
    if value is None or value is False or value == [] or value == () or value == "":
        return None
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def tidy_param(param: Any) -> None:
    """Apply the conventions above to one parameter (idempotent: help is rendered more than once)."""
    if getattr(param, "_kopt_tidy", False):
        return
    param._kopt_tidy = True
    if isinstance(param, TyperArgument):
        if param.metavar is None and param.name:
            param.metavar = param.name.upper()
        return
    if not isinstance(param, TyperOption):
        return
    if param.is_flag:
        param.metavar = ""  # typer prints the metavar in place of the type
    param.show_default = False
    shown = _default_text(param.default) if not param.is_flag else None
    help_text = param.help or ""
    if shown is not None and "default" not in help_text.lower():
        param.help = f"{help_text.rstrip().removesuffix('.')} (default {shown}).".strip()


class KoptCommand(TyperCommand):
    def get_params(self, ctx):  # noqa: D102 - the click API
        params = super().get_params(ctx)
        for p in params:
            tidy_param(p)
        return params

    def collect_usage_pieces(self, ctx) -> list[str]:  # noqa: D102
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                pieces.append(_usage_name(p))
        return pieces


class KoptGroup(TyperGroup):
    def get_params(self, ctx):  # noqa: D102
        params = super().get_params(ctx)
        for p in params:
            tidy_param(p)
        return params


class App(typer.Typer):
    """typer.Typer whose commands and groups follow the conventions above."""

    def __init__(self, **kw: Any) -> None:
        kw.setdefault("cls", KoptGroup)
        super().__init__(**kw)

    def command(self, *args: Any, **kw: Any):  # noqa: D102
        kw.setdefault("cls", KoptCommand)
        return super().command(*args, **kw)
