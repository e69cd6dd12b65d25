"""`kopt init TARGET`: write a standalone KernelBench-format task file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from kopt.cli import options


def register(app: typer.Typer) -> None:
    app.command("init")(init)


def init(
    target: str = typer.Argument(..., help="path.py (its Model) or path.py:ClassName."),
    inputs: options.InputList = options.Inputs,
    init_args: Optional[str] = options.InitArgs,
    sets: options.InputList = options.Sets,
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the task file (default: <name>_task.py)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a standalone task file (Model, get_inputs, get_init_inputs) from your module."""
    from kopt.cli.console import console
    from kopt.scaffold import init_task

    path, probe = init_task(target, inputs, init_args, sets, out, force=force)
    console.print(f"wrote [bold]{path}[/]; the reference ran in {probe.forward_ms:.1f} ms")
    for i, (shape, dtype) in enumerate(probe.outputs):
        console.print(f"  output {i}: shape {shape}, dtype {dtype}")
    console.print(f"next: kopt optimize {path}")
