"""`kopt cache` (being written)."""

import typer

app = typer.Typer(help="cache commands", no_args_is_help=True)
