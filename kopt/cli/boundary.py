"""The one place where an exception becomes an exit code and a message (pre-commit's `error_handler.py`).

| what happened                        | exit | what the user sees                                           |
|--------------------------------------|------|--------------------------------------------------------------|
| a usage mistake (unknown option, ...) | 2    | typer's own short usage message                              |
| a KoptError (something to act on)    | 1    | one line and a hint                                          |
| Ctrl-C                               | 130  | "interrupted; rerun the same command to resume"              |
| anything else (a bug in kopt)        | 3    | one line naming $KOPT_HOME/kopt.log (traceback and versions) |

With `--json` on the command line every one of these is a JSON object on stdout, `{"error": ..., "hint": ...}`,
and the exit code is the same. typer >= 0.29 vendors click as `typer._click`, whose exception classes are not
the `click` package's: they are imported from typer so that the boundary catches what the parser raises.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import traceback
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CRASH, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
INTERRUPTED = "interrupted; finished samples and verdicts are cached: rerun the same command to resume"
LOG_NAME = "kopt.log"


def _exception_classes() -> tuple[type, type, type, type]:
    """(UsageError, ClickException, Exit, Abort) of the click that typer's parser uses."""
    try:
        from typer import exceptions as tx
        from typer._click import exceptions as cx

        return cx.UsageError, cx.ClickException, tx.Exit, tx.Abort
    except ImportError:  # typer before 0.29 parses with the click package itself
        from click import exceptions as cx

        return cx.UsageError, cx.ClickException, cx.Exit, cx.Abort


def wants_json(argv: list[str]) -> bool:
    """`--json` anywhere before a `--` (typer itself may not have parsed it when the error came)."""
    for a in argv:
        if a == "--":
            return False
        if a == "--json":
            return True
    return False


def log_path() -> Path:
    """$KOPT_HOME/kopt.log, or the temp dir when KOPT_HOME cannot be created (the crash may be about it)."""
    try:
        from kopt.config import kopt_home

        return kopt_home() / LOG_NAME
    except Exception:  # noqa: BLE001 - the log must be written whatever broke
        import tempfile

        return Path(tempfile.gettempdir()) / LOG_NAME


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("kopt", "torch", "typer", "rich", "GitPython", "diskcache", "transformers", "vllm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_crash_log(exc: BaseException, argv: list[str]) -> Path:
    """Append the traceback, the command line and the versions to the log; return its path."""
    path = log_path()
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    lines = [f"==== {stamp} kopt {' '.join(argv)}"]
    lines += [f"{k}: {v}" for k, v in _versions().items()]
    lines.append("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
    try:
        with path.open("a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n\n")
    except OSError:
        sys.stderr.write("\n".join(lines) + "\n")  # nowhere to write: the traceback goes to the terminal
    return path


def _emit_json(error: str, hint: str | None, **extra: Any) -> None:
    sys.stdout.write(json.dumps({"error": error, "hint": hint, **extra}) + "\n")
    sys.stdout.flush()


def _usage_message(e) -> tuple[str, str | None]:
    """typer's own message and the `--help` it suggests, as two strings."""
    ctx = getattr(e, "ctx", None)
    hint = f"{ctx.command_path} --help" if ctx is not None else "kopt --help"
    return e.format_message(), hint


def run(app, argv: list[str] | None = None) -> int:
    """Run the typer app and turn whatever it raises into an exit code; never lets a traceback reach the user."""
    from kopt.errors import KoptError

    args = list(sys.argv[1:] if argv is None else argv)
    as_json = wants_json(args)
    usage_error, click_exception, exit_, abort = _exception_classes()
    try:
        rv = app(args=args, prog_name="kopt", standalone_mode=False)
    except KoptError as e:
        return _report(EXIT_ERROR, e.message, e.hint, as_json)
    except exit_ as e:
        code = int(e.exit_code or 0)
        return _report(code, INTERRUPTED, None, as_json) if code == EXIT_INTERRUPTED else code
    except usage_error as e:
        if as_json:
            message, hint = _usage_message(e)
            _emit_json(message, hint)
        else:
            e.show()
        return EXIT_USAGE
    except (abort, KeyboardInterrupt):
        # click turns Ctrl-C into Abort; the progress bars' context managers have stopped on the way out.
        return _report(EXIT_INTERRUPTED, INTERRUPTED, None, as_json)
    except click_exception as e:  # e.g. FileError: shown as typer shows it
        if as_json:
            _emit_json(e.format_message(), None)
        else:
            e.show()
        return int(e.exit_code or EXIT_ERROR)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_ERROR)
    except BrokenPipeError:
        # `kopt ... | head`: the reader left; nothing more can be said on stdout.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        except OSError:
            pass
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - the boundary: everything else is a kopt bug
        path = write_crash_log(e, args)
        first = (str(e).strip().splitlines() or [""])[0]
        return _report(EXIT_CRASH, f"kopt crashed ({type(e).__name__}: {first}); this is a bug in kopt",
                       f"the traceback and versions are in {path}; please attach it to a bug report", as_json,
                       log=str(path))
    if rv == EXIT_INTERRUPTED:
        # typer turns a KeyboardInterrupt inside a command into Exit(130) and, outside standalone mode,
        # returns the code: no kopt command returns 130 itself, so this is Ctrl-C.
        return _report(EXIT_INTERRUPTED, INTERRUPTED, None, as_json)
    return rv if isinstance(rv, int) else EXIT_OK


def _report(code: int, message: str, hint: str | None, as_json: bool, **extra: Any) -> int:
    if as_json:
        _emit_json(message, hint, **extra)
    else:
        from kopt.cli.console import print_error

        print_error(message, hint)
    return code
