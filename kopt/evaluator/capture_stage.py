"""The capture stage: the candidate's Python imported once, in a sandboxed child that compiles nothing, only
to record what it passes to load_inline (kopt_child/capture.py). What the child prints is a claim:
`parse_capture` accepts exactly the document kopt's capture mode writes (size cap, no NaN or Infinity, no
duplicate keys, exact keys and types) and every verdict is a sentence kopt writes.

`b` below is the build.Builder whose settings and work dir the child runs with.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from kopt.evaluator.build_store import remove_tree
from kopt.records import Status

MAX_CAPTURE_BYTES = 1 << 20  # the sandbox keeps 1 MiB of stdout: a bigger document is malformed anyway
MAX_CALLS = 8
MAX_ITEMS = 256  # flags per option, functions per call, source strings per call
MAX_ITEM_CHARS = 4096
CAPTURE_KEYS = {"version", "calls", "model", "error", "error_type", "line"}
CALL_KEYS = {"kind", "cpp", "cuda", "functions", "options"}


class CaptureError(ValueError):
    """The capture document is not exactly what kopt's capture mode writes."""


def _strs(value, what: str, *, limit: int = MAX_ITEM_CHARS, count: int = MAX_ITEMS) -> list[str]:
    if not isinstance(value, list) or len(value) > count or not all(
            isinstance(v, str) and len(v) <= limit for v in value):
        raise CaptureError(f"{what} is not a list of at most {count} strings")
    return value


def parse_capture(data: bytes | str) -> dict:
    """The capture document, checked strictly: size cap, no NaN/Infinity, no duplicate keys, exact keys/types."""
    from kopt.evaluator.kopt_child.capture import BOOL_OPTIONS, LIST_OPTIONS

    raw = data.encode("utf-8", errors="replace") if isinstance(data, str) else data
    if len(raw) > MAX_CAPTURE_BYTES:
        raise CaptureError("the capture document is too large")

    def no_constant(c: str):
        raise CaptureError(f"non-finite number {c}")

    def pairs(items):
        out = dict(items)
        if len(out) != len(items):
            raise CaptureError("duplicate keys")
        return out

    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=no_constant, object_pairs_hook=pairs)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CaptureError(f"not one JSON document ({type(e).__name__})") from None
    if not isinstance(doc, dict) or set(doc) != CAPTURE_KEYS or doc["version"] != 1:
        raise CaptureError("unexpected keys")
    if not isinstance(doc["model"], bool) or doc["error"] not in (None, "setup", "syntax", "import", "unencodable"):
        raise CaptureError("bad model/error")
    et, line = doc["error_type"], doc["line"]
    if not (et is None or (isinstance(et, str) and len(et) <= 64)):
        raise CaptureError("bad error_type")
    if not (line is None or (type(line) is int and 0 <= line <= 10**7)):
        raise CaptureError("bad line")
    calls = doc["calls"]
    if not isinstance(calls, list) or len(calls) > MAX_CALLS:
        raise CaptureError("bad calls")
    for call in calls:
        if not isinstance(call, dict) or set(call) != CALL_KEYS or call["kind"] not in ("load_inline", "load"):
            raise CaptureError("bad call")
        _strs(call["cpp"], "cpp", limit=MAX_CAPTURE_BYTES)
        _strs(call["cuda"], "cuda", limit=MAX_CAPTURE_BYTES)
        if call["functions"] is not None:
            _strs(call["functions"], "functions", limit=256)
        opts = call["options"]
        if not isinstance(opts, dict):
            raise CaptureError("bad options")
        for k, v in opts.items():
            if k in LIST_OPTIONS:
                _strs(v, k)
            elif k in BOOL_OPTIONS:
                if not isinstance(v, bool):
                    raise CaptureError(f"{k} is not a bool")
            elif k == "build_directory":
                if not isinstance(v, str) or len(v) > MAX_ITEM_CHARS:
                    raise CaptureError("bad build_directory")
            else:
                raise CaptureError(f"unknown option {k}")
    return doc


def run_child(b, args: list[str], *, work: Path, timeout_s: float, toolchain: bool,
               env: dict[str, str], readonly: tuple[str, ...] = ()):
    """Start `kopt_child <args>` in the sandbox (compile role: the toolchain visible, nothing of kopt's)."""
    import sys

    from kopt.evaluator import sandbox

    cpu_s = int(timeout_s * (2 + int(os.environ.get("MAX_JOBS", "2")))) + 30
    if hasattr(sandbox, "Mounts") and hasattr(sandbox, "python_cmd"):
        limits = sandbox.Limits(cpu_s=cpu_s, rss_mb=b.settings.max_rss_mb)
        return sandbox.run_sandboxed(sandbox.python_cmd(args), timeout_s=timeout_s, work_dir=work, env=env,
                                     mounts=sandbox.Mounts(readonly=readonly, toolchain=toolchain),
                                     limits=limits)
    boot = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            "from kopt_child.__main__ import main; main()")
    return sandbox.run_sandboxed([sys.executable, "-I", "-c", boot, *args], timeout_s=timeout_s, work_dir=work,
                                 env=env, limits=sandbox.Limits(cpu_s=cpu_s), max_rss_mb=b.settings.max_rss_mb)


def _exception_name(name: str | None) -> str:
    import builtins

    obj = getattr(builtins, name or "", None)
    return name if isinstance(obj, type) and issubclass(obj, BaseException) else "an exception"


def run_capture(b, source: str) -> tuple[list[dict] | None, tuple[Status, str] | None]:
    """Import the candidate in a sandboxed capture child; its load_inline calls, or a verdict."""
    work = b.work / f"capture-{uuid.uuid4().hex}"
    work.mkdir(parents=True)
    try:
        (work / "candidate.py").write_text(source)
        timeout = float(b.settings.run_timeout_s)
        res = run_child(b, ["capture", str(work / "candidate.py")], work=work, timeout_s=timeout,
                         toolchain=False, env={"OMP_NUM_THREADS": "1"})
    finally:
        remove_tree(work)
    if res.killed == "timeout":
        return None, (Status.TIMEOUT, f"importing the candidate took longer than {timeout:.0f} s")
    if res.killed:
        return None, (Status.CRASHED, f"importing the candidate: {res.describe()}")
    try:
        doc = parse_capture(res.stdout)
    except CaptureError:
        return None, (Status.CRASHED, f"importing the candidate ended without a capture ({res.describe()})")
    where = f" at line {doc['line']}" if doc["line"] else ""
    if doc["error"] == "syntax":
        return None, (Status.COMPILE_ERROR, f"Python syntax error{where}")
    if doc["error"] == "import":
        return None, (Status.RUNTIME_ERROR, f"importing the candidate raised {_exception_name(doc['error_type'])}"
                                            f"{where}")
    if doc["error"]:
        return None, (Status.CRASHED, "importing the candidate failed in kopt's capture process")
    if not doc["model"]:
        return None, (Status.COMPILE_ERROR, "the candidate defines no class ModelNew(nn.Module)")
    if not doc["calls"]:
        return None, (Status.REJECTED, "the candidate never called load_inline: no kernel of its own")
    return doc["calls"], None
