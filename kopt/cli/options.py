"""Option declarations shared by several commands, so each flag has one spelling and one help text."""

from __future__ import annotations

from typing import Any, Callable, List, Optional

import typer

Inputs = typer.Option(None, "--input", help='Forward argument, repeatable, in order: a tensor "float32[512,1024]" (randn; or :rand, :ones, :zeros), "int64[32]:randint(0,100)", "float32[]" (0-d), or a scalar: 0.5, int:3, bool:true.')
InitArgs = typer.Option(None, "--init-args", help="Constructor arguments as JSON: '[1024, 1e-6]' or '{\"dim\": 1024}'.")
Sets = typer.Option(None, "--set", help="Override a module-level constant of the task file: NAME=VALUE (repeatable).")
Target = typer.Option(None, "--target", help="Where kernels run: auto (cuda if present, else cpu), cuda or cpu.")
Json = typer.Option(False, "--json", help="Print one JSON object instead of tables.")

InputList = Optional[List[str]]

NoCache = typer.Option(False, "--no-cache", help="Ignore the cache: sample and evaluate everything again.")


def with_settings(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per setting it takes (kopt/settings.py), generated from the declarations.

    The decorated function declares only its own parameters plus `values`; it receives every setting
    resolved (declared default < kopt.toml / [tool.kopt] < flag) and validated in `values`.
    """
    import inspect
    import typing
    from pathlib import Path

    from kopt import settings as S

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        declared = S.for_command(command)
        hints = typing.get_type_hints(fn)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(fn).parameters.values() if p.name != "values"]
        generated = [
            inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY,
                              default=typer.Option(None, s.option, help=_with_default(s, command), show_default=False),
                              annotation=Optional[Path if s.path else s.type])
            for s in declared
        ]

        def command_fn(**kw: Any) -> Any:
            from kopt.config import settings_for

            given = {s.name: kw.pop(s.name) for s in declared}
            given = {k: (str(v) if isinstance(v, Path) else v) for k, v in given.items()}
            return fn(**kw, values=settings_for(command, given))

        params = own + generated
        command_fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command_fn.__annotations__ = {p.name: p.annotation for p in params}
        command_fn.__name__, command_fn.__doc__ = fn.__name__, fn.__doc__
        command_fn.__module__, command_fn.__qualname__ = fn.__module__, fn.__qualname__
        return command_fn

    return deco


def _with_default(s: Any, command: str) -> str:
    """The declared help with its default, written once as "(default X)" unless the help already names it."""
    default = s.per_command.get(command, s.default) if s.per_command else s.default
    if default in (None, "", False) or "default" in s.help.lower():
        return s.help
    return f"{s.help.rstrip().removesuffix('.')} (default {default})."
