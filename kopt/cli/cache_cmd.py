"""`kopt cache info` and `kopt cache clear`."""

from __future__ import annotations

import json

import typer

from kopt.cli import options
from kopt.cli.help import App

app = App(help="Inspect or clear kopt's cache of samples and verdicts.", no_args_is_help=True)


@app.command("info")
def info(as_json: bool = options.Json) -> None:
    """Size, entries per kind, and the hits and misses of the last run."""
    from kopt.cache import Cache
    from kopt.cli.console import console

    with Cache() as cache:
        data = cache.info()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    console.print(f"cache: {data['directory']} ({data['size_bytes'] / 2**20:.1f} MiB)")
    for kind, n in sorted(data["entries"].items()):
        console.print(f"  {kind:<8} {n} entries")
    last = data["last_run"]
    if last:
        console.print(f"last run ({last['command']}): hits {last['hits']}, misses {last['misses']}")


@app.command("clear")
def clear(yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation.")) -> None:
    """Delete every cached sample and verdict (samples cost model time: this cannot be undone)."""
    from kopt.cache import Cache
    from kopt.cli.console import console

    if not yes and not typer.confirm("Delete every cached sample and verdict?"):
        raise typer.Exit(1)
    with Cache() as cache:
        n = cache.clear()
    console.print(f"removed {n} entries")
