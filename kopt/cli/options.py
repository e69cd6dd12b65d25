"""Option declarations shared by several commands, so each flag has one spelling and one help text."""

from __future__ import annotations

from typing import List, Optional

import typer

Inputs = typer.Option(None, "--input", help='Forward argument, repeatable, in order: "float32[512,1024]" or "int64[32]:randint(0,100)".')
InitArgs = typer.Option(None, "--init-args", help="Constructor arguments as JSON: '[1024, 1e-6]' or '{\"dim\": 1024}'.")
Sets = typer.Option(None, "--set", help="Override a module-level constant of the task file: NAME=VALUE (repeatable).")
Target = typer.Option(None, "--target", help="Where kernels run: auto (cuda if present, else cpu), cuda or cpu.")
Json = typer.Option(False, "--json", help="Print one JSON object instead of tables.")

InputList = Optional[List[str]]
