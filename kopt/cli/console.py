"""rich output for the CLI: the error line, progress bars that the core drives through a callback."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _width(stream) -> int | None:
    """A terminal's own width; when stdout is a file or a pipe (CI logs, `| less`), $COLUMNS or 200 rather than
    rich's 80, so tables are not cut or wrapped mid-path."""
    try:
        if stream.isatty():
            return None
    except (AttributeError, ValueError):
        pass
    cols = os.environ.get("COLUMNS", "")
    return int(cols) if cols.isdigit() and int(cols) > 0 else 200


console = Console(width=_width(sys.stdout))
err_console = Console(stderr=True, width=_width(sys.stderr))

# Reasons written for kopt's own threat-model table ("...; hack §1 row 13)") keep their plain words only.
_JARGON_TAIL = re.compile(r"[;,]\s*hack §\d+ row \d+(?=\))")  # "(precision loss; hack §1 row 13)"
_JARGON_ALONE = re.compile(r"\s*\(hack §\d+ row \d+\)")  # "another name (hack §1 row 8)"


def plain(text: str) -> str:
    """A reason as a user reads it: without references to kopt's internal hack table."""
    return _JARGON_ALONE.sub("", _JARGON_TAIL.sub("", text or ""))


_warned: set[str] = set()  # warnings already on screen (printed above the progress bars)


def print_error(message: str, hint: str | None = None) -> None:
    """One red line and a hint. A message already shown as a warning above the bars is not repeated."""
    text = plain(message)
    if text in _warned:
        text = "stopped: see the warning above"
    err_console.print(f"[bold red]error:[/] {text}", highlight=False, soft_wrap=True)
    if hint:
        err_console.print(f"[dim]hint:[/] {plain(hint)}", highlight=False, soft_wrap=True)


def print_warning(message: str) -> None:
    text = plain(message)
    _warned.add(text)
    err_console.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress_bars(enabled: bool = True) -> Iterator:
    """Yield a `Progress` callback (stage, done, total) that draws one bar per stage on stderr."""
    if not enabled:
        yield lambda stage, done, total: None
        return
    bars = Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )
    ids: dict[str, int] = {}

    def report(stage: str, done: int, total: int) -> None:
        if stage not in ids:
            ids[stage] = bars.add_task(stage, total=total or None)
        bars.update(ids[stage], completed=done, total=total or None)

    with bars:
        yield report


@contextlib.contextmanager
def json_stdout(enabled: bool) -> Iterator:
    """With --json, stdout carries the JSON document and nothing else: while the work runs, file descriptor 1
    points at stderr, so whatever a library prints there (Ray's node messages from its own threads, a
    compiler's chatter) cannot break a `kopt ... --json | jq` pipeline. Yields write(text) for the document."""
    if not enabled:
        yield lambda text: print(text)
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield lambda text: os.write(saved, (text + "\n").encode())
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
