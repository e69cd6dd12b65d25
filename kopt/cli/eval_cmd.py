"""`kopt eval TARGET CANDIDATE.py`: judge one candidate kernel against a task and time it if correct."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from kopt.cli import options


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_)


def eval_(
    target: str = typer.Argument(..., help="The task: path.py (its Model) or path.py:ClassName."),
    candidate: Path = typer.Argument(..., help="A Python file defining ModelNew (kernel via load_inline)."),
    where: str | None = options.Target,
    as_json: bool = options.Json,
    atol: float | None = typer.Option(None, "--atol", help="Absolute tolerance (default per dtype: fp32 1e-4, half 1e-2)."),
    rtol: float | None = typer.Option(None, "--rtol", help="Relative tolerance (default per dtype: fp32 1e-4, half 1e-2)."),
    timeout: float | None = typer.Option(None, "--timeout", help="Seconds allowed per check/time process (default 120)."),
    jobs: int | None = typer.Option(None, "--jobs", help="Parallel compiles/checks (default 2)."),
    inputs: options.InputList = options.Inputs,
    init_args: str | None = options.InitArgs,
    sets: options.InputList = options.Sets,
) -> int:
    """Compile, check and time one candidate. Exit 0 when it is correct, 1 otherwise."""
    from kopt.cli.console import console, plain, progress_bars
    from kopt.errors import KoptError
    from kopt.evaluator import EvalSettings, Evaluator, resolve_target
    from kopt.task import load_task

    if not candidate.is_file():
        raise KoptError(f"{candidate}: no such file", "pass the candidate's path: a .py file defining ModelNew")
    source = candidate.read_text(encoding="utf-8")
    task = load_task(target, inputs, init_args, sets)
    kw = {k: v for k, v in {"atol": atol, "rtol": rtol, "run_timeout_s": timeout, "jobs": jobs}.items() if v is not None}
    settings = EvalSettings(target=resolve_target(where or "auto"), **kw)
    with progress_bars(enabled=not as_json) as progress, Evaluator(task, settings, progress=progress) as ev:
        result = ev.evaluate([source])[0]
        fingerprint = ev.fingerprint()
    if as_json:
        out = result.to_json()
        out["task"] = {"name": task.name, "target": task.target, "path": task.path, "hash": task.hash,
                       "sets": dict(task.sets)}
        out["isolation"] = fingerprint["isolation"]
        typer.echo(json.dumps(out, indent=2))
    else:
        from rich.table import Table

        table = Table(show_header=True, header_style="bold")
        for col in ("status", "reason", "runtime", "reference", "speedup"):
            table.add_column(col)
        def ms(v):
            return f"{v:.4g} ms" if v is not None else "-"

        color = "green" if result.correct else "red"
        table.add_row(f"[{color}]{result.status.value}[/]", plain(result.reason) or "-", ms(result.runtime_ms),
                      ms(result.reference_runtime_ms), f"{result.speedup:.3g}x" if result.speedup else "-")
        console.print(table)
        for w in result.warnings:
            console.print(f"[yellow]warning:[/] {plain(w)}", highlight=False)
        console.print(f"[dim]{fingerprint['device']}, {settings.target}, isolation {fingerprint['isolation']}[/]")
    raise typer.Exit(0 if result.correct else 1)
