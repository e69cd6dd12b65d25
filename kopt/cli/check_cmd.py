"""`kopt check [PATHS]`: do the committed kernels still match their references? Exit 0 when all pass, 1 if not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from kopt.cli import options


def register(app: typer.Typer) -> None:
    app.command("check")(check)


def check(
    paths: Optional[List[Path]] = typer.Argument(None, help="Kernel dirs, or folders holding several (default: kernels/*/ at the repo root)."),
    base: Optional[str] = typer.Option(None, "--base", help="Check only kernels whose reference or files changed since the merge base of REF and HEAD, e.g. origin/main."),
    check_all: bool = typer.Option(False, "--all", help="Re-check correctness of every kernel on this machine, not only stale or edited ones."),
    tolerance: float = typer.Option(0.10, "--tolerance", help="Allowed slowdown against the recorded speedup when re-timing on the recorded device (0.10 = 10%)."),
    no_timing: bool = typer.Option(False, "--no-timing", help="Never re-time (correctness only)."),
    no_cache: bool = options.NoCache,
    as_json: bool = options.Json,
) -> int:
    """Check that each kernel in kernels/ still matches its PyTorch reference (stale, correct, not slower)."""
    from kopt.check import CheckSettings, run_check

    if not 0 <= tolerance < 1:
        from kopt.errors import KoptError

        raise KoptError(f"--tolerance {tolerance} is outside [0, 1)", "e.g. --tolerance 0.10 for 10%")
    settings = CheckSettings(tolerance=tolerance, timing=not no_timing, check_all=check_all, use_cache=not no_cache)
    progress_cm = _progress(enabled=not as_json)
    with progress_cm as progress:
        report = run_check(paths or None, base=base, settings=settings, progress=progress)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        from kopt.cli.console import console

        render(console, report)
    return report.exit_code


def _progress(enabled: bool):
    import contextlib

    if not enabled:
        return contextlib.nullcontext(lambda stage, done, total: None)
    from kopt.cli.console import progress_bars

    return progress_bars(enabled=True)


def render(console, report) -> None:
    """One row per checked kernel; then, for each failure, the command that fixes it; then what was skipped."""
    from rich.table import Table

    from kopt.cli.console import plain

    colors = {"pass": "green", "stale": "yellow", "slower": "yellow"}
    if report.results:
        table = Table(title=f"kopt check: {report.selected_by}", title_justify="left")
        # Paths never wrap mid-name (a reader copies them); the reason wraps between words.
        for col in ("kernel", "reference", "verdict", "correctness"):
            table.add_column(col, no_wrap=True)
        table.add_column("why", overflow="fold", ratio=1)
        for r in report.results:
            color = colors.get(r.verdict.value, "red")
            why = plain(r.reason) or ("unchanged since recorded" if r.correctness == "recorded" else "")
            table.add_row(r.kernel_dir, r.reference, f"[{color}]{r.verdict.value}[/]", r.correctness, why)
        console.print(table)
    for note in report.notes:
        console.print(note)
    for r in report.results:
        for s in r.skipped:
            console.print(f"[dim]skipped for {r.kernel_dir}: {s}[/]", highlight=False)
    if report.failed:
        console.print("[bold]to fix:[/]")
        for r in report.failed:
            if r.fix:
                console.print(f"  {r.kernel_dir}: [bold]{r.fix}[/]", highlight=False, soft_wrap=True)
    passed = len(report.results) - len(report.failed)
    extra = f", {len(report.not_selected)} unchanged and not checked" if report.not_selected else ""
    console.print(f"{len(report.results)} checked: {passed} passed, {len(report.failed)} failed{extra} "
                  f"({report.elapsed_s:.2f} s)", highlight=False)
