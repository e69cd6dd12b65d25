"""`kopt optimize TARGET`: sample K kernels, keep the correct ones, time the most surprising m, write the winner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from kopt.cli import options


def register(app: typer.Typer) -> None:
    app.command("optimize")(optimize)


@options.with_settings("optimize")
def optimize(
    task_file: str = typer.Argument(..., metavar="TARGET", help="path.py (its Model) or path.py:ClassName."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default kernels/<task name>)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
    inputs: options.InputList = options.Inputs,
    init_args: Optional[str] = options.InitArgs,
    sets: options.InputList = options.Sets,
    as_json: bool = options.Json,
    values: Optional[dict] = None,
) -> int:
    """Find a faster kernel for TARGET and write it to kernels/<task>/."""
    from kopt.cli.console import console, json_stdout, print_warning, progress_bars
    from kopt.pipeline import OptimizeOptions
    from kopt.pipeline import optimize as run_optimize
    from kopt.task import load_task

    task = load_task(task_file, inputs=inputs, init_args=init_args, sets=sets)
    opts = OptimizeOptions.from_settings(values or {}, out=out, force=force)
    with json_stdout(as_json) as emit, progress_bars(enabled=not as_json) as progress:
        result = run_optimize(task, opts, progress=progress, warn=print_warning)
        if as_json:
            emit(json.dumps(result.report, indent=2))
    if not as_json:
        render(console, result.report)
    return result.exit_code


def render(console, report: dict) -> None:
    from kopt.cli.summary import render_optimize

    render_optimize(console, report)
