"""`kopt_child capture CANDIDATE.py`: import a candidate only to record what it asks torch to build.

The build stage never compiles inside a candidate's process (its Python could rewrite the flags, the sources
or the build dir on the way to the compiler). Here torch.utils.cpp_extension.load_inline and load are replaced
by a recorder before the candidate is imported; each call is recorded (sources, functions, every keyword) and
answered with a placeholder module so the import completes. The one JSON document this prints on the saved
stdout is a claim: kopt's parent parses it strictly (capture_stage.parse_capture) and decides everything else itself.

`record_call` and `extension_key` are shared with the run child (extensions.py), so the parent and the child
name an extension by the same function of the same call.

Hermetic: standard library, torch and this package only.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

# Keywords of load_inline / load that take lists of strings (flags, paths, sources).
LIST_OPTIONS = ("extra_cflags", "extra_cuda_cflags", "extra_sycl_cflags", "extra_ldflags", "extra_include_paths",
                "sycl_sources")
# Keywords whose value is a bool (or None), recorded as given.
BOOL_OPTIONS = ("with_cuda", "with_sycl", "with_pytorch_error_handling", "no_implicit_headers", "verbose",
                "is_python_module", "is_standalone", "keep_intermediates", "use_pch")
# Keywords that do not change what is built (kopt names and places the build itself): not part of the key.
UNKEYED = ("verbose", "build_directory", "keep_intermediates", "use_pch", "is_python_module")
CUDA_SUFFIXES = (".cu", ".cuh")
MAX_FILE_BYTES = 4 << 20  # a `load` source file larger than this is recorded as unreadable


def _strings(value) -> list:
    """A str -> [str]; a list/tuple -> its items (non-strings kept as their repr, so the parent can reject)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v if isinstance(v, str) else repr(v) for v in value]
    return [repr(value)]


def _functions(value):
    """None, or the function names (a dict's docstrings are dropped: kopt binds each name to itself)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [k if isinstance(k, str) else repr(k) for k in value]
    return _strings(value)


def _read_source(path) -> tuple[str, str]:
    name = os.path.basename(str(path))
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            return name, ""
        return name, data.decode("utf-8", errors="replace")
    except OSError:
        return name, ""


def record_call(kind: str, arguments: dict) -> dict:
    """One load_inline/load call as plain JSON data: {"kind", "cpp", "cuda", "functions", "options"}.

    `arguments` are the call's bound arguments by name (inspect.signature(real).bind(...).arguments)."""
    a = dict(arguments)
    a.update(a.pop("kwargs", None) or {})
    if kind == "load":
        cpp, cuda = [], []
        for path in _strings(a.get("sources")):
            name, text = _read_source(path)
            (cuda if name.endswith(CUDA_SUFFIXES) else cpp).append(text)
        functions = None
        a["no_implicit_headers"] = True  # load() compiles its files as written: no implicit include
    else:
        cpp, cuda = _strings(a.get("cpp_sources")), _strings(a.get("cuda_sources"))
        functions = _functions(a.get("functions"))
    options: dict = {}
    for opt in LIST_OPTIONS:
        if a.get(opt) is not None:
            options[opt] = _strings(a[opt])
    for opt in BOOL_OPTIONS:
        if opt in a and a[opt] is not None:
            options[opt] = bool(a[opt])
    if a.get("build_directory") is not None:
        options["build_directory"] = str(a["build_directory"])
    return {"kind": kind, "cpp": cpp, "cuda": cuda, "functions": functions, "options": options}


def extension_key(call: dict, target_info: dict | None = None) -> str:
    """The name kopt gives one extension call: sha256 of what it builds (sources, functions, the keywords that
    change the build, as the candidate wrote them), never of its name. `target_info` (JSON data) is mixed in when
    given. The parent computes it on captured calls and the run child on live ones: the same function of the
    same call, so an extension built from other sources than the ones captured is unknown at run time."""
    options = {k: v for k, v in call.get("options", {}).items() if k not in UNKEYED}
    blob = json.dumps({"kind": call.get("kind"), "cpp": call.get("cpp"), "cuda": call.get("cuda"),
                       "functions": call.get("functions"), "options": options, "target": target_info},
                      sort_keys=True, ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class _Placeholder:
    """What load_inline returns while capturing: attributes exist, calling them is an error (the extension is
    built after the import, by kopt)."""

    def __init__(self, name: str):
        self.__name__ = name

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def unavailable(*args, **kwargs):
            raise RuntimeError("kopt builds extensions after the import: an extension function cannot be called "
                               "while the module is being imported")

        return unavailable


def _install(calls: list) -> None:
    import inspect

    import torch.utils.cpp_extension as cx

    for kind in ("load_inline", "load"):
        real = getattr(cx, kind)
        sig = inspect.signature(real)

        def recorder(*args, _kind=kind, _sig=sig, **kwargs):
            bound = _sig.bind(*args, **kwargs)  # a wrong call raises TypeError, as torch would
            calls.append(record_call(_kind, bound.arguments))
            return _Placeholder(str(bound.arguments.get("name", "extension")))

        recorder.__signature__ = sig
        setattr(cx, kind, recorder)


def _error_line(exc: BaseException, path: str) -> int | None:
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def capture(path: str) -> dict:
    """Import the candidate at `path` with the recorders installed; the capture document."""
    import importlib.util

    calls: list = []
    doc = {"version": 1, "calls": calls, "model": False, "error": None, "error_type": None, "line": None}
    try:
        _install(calls)
    except Exception:  # noqa: BLE001 - torch itself failed to import: nothing of the candidate ran
        doc["error"] = "setup"
        return doc
    try:
        spec = importlib.util.spec_from_file_location("kopt_candidate", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["kopt_candidate"] = module
        spec.loader.exec_module(module)
    except SyntaxError as e:
        doc.update(error="syntax", line=e.lineno if isinstance(e.lineno, int) else None)
        return doc
    except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt included: all are the candidate's
        doc.update(error="import", error_type=type(e).__name__[:64], line=_error_line(e, path))
        return doc
    import torch

    cls = getattr(module, "ModelNew", None)
    try:
        doc["model"] = isinstance(cls, type) and issubclass(cls, torch.nn.Module)
    except Exception:  # noqa: BLE001 - a metaclass that raises in issubclass
        doc["model"] = False
    return doc


def main(argv: list[str]) -> int:
    out = os.dup(1)  # the document goes here; the candidate's prints go to stderr
    os.dup2(2, 1)
    doc = capture(argv[0])
    try:
        data = json.dumps(doc, ensure_ascii=True, allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError):
        data = json.dumps({"version": 1, "calls": [], "model": False, "error": "unencodable", "error_type": None,
                           "line": None}).encode()
    view = memoryview(data)
    while view:
        n = os.write(out, view)
        view = view[n:]
    os.close(out)
    sys.stderr.flush()
    os._exit(0)  # no atexit handler or finaliser of the candidate's runs after the document


if __name__ == "__main__":
    main(sys.argv[1:])
