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
    from kopt.cli.console import console, print_warning, progress_bars
    from kopt.pipeline import OptimizeOptions
    from kopt.pipeline import optimize as run_optimize
    from kopt.task import load_task

    task = load_task(task_file, inputs=inputs, init_args=init_args, sets=sets)
    opts = OptimizeOptions.from_settings(values or {}, out=out, force=force)
    with progress_bars(enabled=not as_json) as progress:
        result = run_optimize(task, opts, progress=progress, warn=print_warning)
    if as_json:
        print(json.dumps(result.report, indent=2))
    else:
        render(console, result.report)
    return result.exit_code


def render(console, report: dict) -> None:
    from rich.table import Table

    w = report["winner"]
    table = Table(title=f"{report['task']['name']}: best candidates ({report['strategy']})", show_lines=False)
    for col in ("sample", "status", "surprisal", "runtime ms", "speedup", ""):
        table.add_column(col, justify="right" if col not in ("status", "") else "left")
    rows = [c for c in report["candidates"] if c["runtime_ms"] is not None]
    rows.sort(key=lambda c: c["runtime_ms"])
    for c in rows[:8]:
        mark = "winner" if c["index"] == w["index"] else ""
        surprisal = f"{c['surprisal']:.3f}" if c["surprisal"] is not None else "-"
        table.add_row(str(c["index"]), c["status"], surprisal, f"{c['runtime_ms']:.4g}",
                      f"{c['speedup']:.2f}x" if c["speedup"] else "-", mark)
    console.print(table)
    counts: dict[str, int] = {}
    for c in report["candidates"]:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    console.print("pool: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1])))
    ev = report.get("evaluation") or {}
    if ev:
        console.print(f"evaluation ({ev.get('mode')}): {ev.get('unique')} unique candidates, {ev.get('compiled')} "
                      f"compiled, {ev.get('checked')} checked, {ev.get('timed')} timed, {ev.get('skipped')} skipped"
                      + (f" ({ev['why']})" if ev.get("why") else ""))
    ref = w.get("reference_runtime_ms")
    console.print(
        f"winner: sample {w['index']}, {w['runtime_ms']:.4g} ms vs reference {ref:.4g} ms -> "
        f"[bold]{w['speedup']:.2f}x[/] (timed {len(report['timed'])} of "
        f"{sum(1 for c in report['candidates'] if c['status'] == 'correct' and c['duplicate_of'] is None)} correct)"
    )
    vs_compile = w.get("speedup_vs_compile")
    if vs_compile is not None:
        verdict = "beats" if vs_compile > 1.0 else "does not beat"
        console.print(f"vs torch.compile: {vs_compile:.2f}x: the winner {verdict} torch.compile")
    else:
        console.print("vs torch.compile: not measured (speedups are against eager PyTorch)")
    console.print(f"wrote {report['out_dir']}/ (model_new.py, report.json, README.md)")
