"""`kopt hook` (being written)."""

import typer

app = typer.Typer(help="hook commands", no_args_is_help=True)
