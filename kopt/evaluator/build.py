"""kopt's build stage: capture -> flags -> compile -> content-addressed read-only store -> symbol check.

No candidate process ever writes a build. The candidate's Python runs once, sandboxed, only to record what it
passes to load_inline (kopt_child/capture.py); kopt parses that document strictly, judges every flag with the
flag policy (flags.py), writes the sources into a fresh staging dir and compiles them in another sandboxed
child that runs no candidate code (kopt_child/compile.py). kopt then copies the result into its store,
$KOPT_BUILD_DIR/v2/entries/<key> (default $KOPT_HOME/build), where <key> is a hash kopt computes of the
sources, functions, kept flags, toolchain, host ISA and CUDA arch: atomically (one rename), read-only, with a
manifest of sha256s that kopt writes and MACs with a key only kopt's process reads. Every later use re-hashes
(Builder.verify before each spawn; an entry found on disk is checked against its manifest and rebuilt when it
differs), and hashes a child reports are never used. Identical extensions compile once: in a process by key,
across processes by a lock per key and the atomic install. A killed compile leaves only its staging dir,
which is removed. Finally the parent reads the .so's undefined symbols and instructions (symbols.py).

The store is build_store.py's, the capture child capture_stage.py's, the precompiled header pch.py's.

Compile errors are sentences kopt writes; compiler text is quoted only from diagnostics located in the lines
of main.cpp / cuda.cu that came from the candidate, with quoted words the candidate did not write masked, so an
#include or .incbin of another file cannot carry that file's content into a report.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kopt.evaluator.build_store import STORE_VERSION, Store, remove_tree, sha256_file
from kopt.evaluator.capture_stage import run_capture, run_child
from kopt.evaluator.pch import pch_include_paths
from kopt.records import EvalResult, Status

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*")  # a C++ function name


@dataclass(frozen=True)
class Extension:
    name: str  # the module name kopt built it as (kopt_<key[:16]>)
    key: str  # capture.extension_key of the call: what the run child looks it up by
    so_path: str  # in the store; the object file when compile_only
    sha256: str  # computed by kopt's parent when it installed the file
    compile_only: bool = False
    store_key: str = ""


@dataclass(frozen=True)
class BuildResult:
    """The compile stage alone: `failure` is the verdict when it failed, else None."""

    failure: EvalResult | None
    extensions: tuple[Extension, ...] = ()
    compile_s: float = 0.0
    warnings: tuple[str, ...] = ()
    library: tuple[str, ...] = ()  # library-compute evidence (symbols.py), when the settings allow it
    labels: tuple[str, ...] = ()  # e.g. "cuBLAS (cublasSgemm_v2)"
    capture_s: float = 0.0


@dataclass(frozen=True)
class _Plan:
    """One extension as kopt will build it: everything the store key covers."""

    call_key: str
    cpp: tuple[str, ...]
    cuda: tuple[str, ...]
    functions: tuple[str, ...] | None
    cflags: tuple[str, ...]
    cuda_cflags: tuple[str, ...]
    ldflags: tuple[str, ...]
    with_cuda: bool
    with_pytorch_error_handling: bool
    no_implicit_headers: bool
    compile_only: bool
    env: tuple[tuple[str, str], ...] = field(default=())


def _sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _ext_from(doc: dict, store: Store, key: str, call_key: str) -> Extension:
    files = doc["files"]
    main = f"{doc['name']}.so" if not doc.get("compile_only") else (
        "cuda.cuda.o" if "cuda.cuda.o" in files else "main.o")
    return Extension(name=doc["name"], key=call_key, so_path=str(store.root / "entries" / key / main),
                     sha256=files[main], compile_only=bool(doc.get("compile_only")), store_key=key)


class Builder:
    """See the module docstring. `base(**kw)` makes an EvalResult stamped with the source's sha/target/device."""

    def __init__(self, *, target: str, settings, base: Callable[..., EvalResult]) -> None:
        from kopt.config import build_dir, kopt_home
        from kopt.evaluator.targets import get_target

        self.target_name = target
        self.target = get_target(target)
        self.settings = settings
        self.base = base
        self.store = Store(build_dir() / STORE_VERSION)
        self.work = kopt_home() / "build-work"
        self.work.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._done: dict[str, tuple[Extension | None, str | None]] = {}  # store key -> (ext, compile error)
        self._symbols: dict[str, object] = {}
        self._results: dict[str, BuildResult] = {}
        self.logs: dict[str, str] = {}  # store key -> the compiler's raw output of a failed build (diagnostics only)

    # ---- public ------------------------------------------------------------------------------------------

    def build(self, source: str) -> BuildResult:
        """static gate -> capture -> flags -> compile -> store -> symbols, each verdict kopt's own."""
        sha = _sha(source)
        with self._lock:
            if sha in self._results:
                return self._results[sha]
        result = self._build(source)
        if result.failure is None or result.failure.status is not Status.TIMEOUT:
            with self._lock:
                self._results[sha] = result
        return result

    def verify(self, build: BuildResult) -> str | None:
        """Re-hash every file kopt built for `build`; a reason when any differs from what kopt recorded."""
        for ext in build.extensions:
            try:
                digest = sha256_file(ext.so_path)
            except OSError as e:
                return f"the built extension {ext.name} cannot be read any more ({e.strerror or e})"
            if digest != ext.sha256:
                return f"the built extension {ext.name} changed on disk since kopt built it (sha256 differs)"
        return None

    def child_table(self, build: BuildResult) -> list[dict]:
        return [{"key": e.key, "name": e.name, "so": e.so_path} for e in build.extensions if not e.compile_only]

    def readonly_paths(self, build: BuildResult) -> tuple[str, ...]:
        """The store entries a run child needs (bind them read-only)."""
        return tuple(dict.fromkeys(str(Path(e.so_path).parent) for e in build.extensions))

    # ---- the stages --------------------------------------------------------------------------------------

    def _fail(self, source: str, status: Status, reason: str, warnings: list[str], **kw) -> BuildResult:
        failure = self.base(source, status=status, reason=reason[:600], warnings=tuple(warnings), **kw)
        return BuildResult(failure=failure, warnings=tuple(warnings), compile_s=kw.get("compile_s") or 0.0)

    def _build(self, source: str) -> BuildResult:
        from kopt.evaluator.static import check_source

        warnings: list[str] = []
        report = check_source(source, self.target_name)
        warnings += list(report.warnings)
        if not report.ok:
            return self._fail(source, Status.REJECTED, "; ".join(report.rejections), warnings)
        t0 = time.monotonic()
        calls, failure = run_capture(self, source)
        capture_s = time.monotonic() - t0
        if failure is not None:
            status, reason = failure
            return self._fail(source, status, reason, warnings)
        plans, rejections = [], []
        for call in calls:
            plan, why = plan_call(self, call, warnings)
            if why:
                rejections += why
            else:
                plans.append(plan)
        if rejections:
            return self._fail(source, Status.REJECTED, "; ".join(dict.fromkeys(rejections)), warnings)
        t1 = time.monotonic()
        exts: list[Extension] = []
        for plan in dict.fromkeys(plans):
            ext, error = self._compile(plan, warnings)
            if ext is None:
                compile_s = time.monotonic() - t1
                status = Status.TIMEOUT if error.startswith("compile killed") else Status.COMPILE_ERROR
                return self._fail(source, status, error, warnings, compile_s=compile_s)
            exts.append(ext)
        compile_s = time.monotonic() - t1
        library, labels, rejected = [], [], []
        for ext in exts:
            rep = self._symbols_of(ext)
            rejected += rep.rejections
            library += rep.library
            labels += rep.labels
        if rejected:
            return self._fail(source, Status.REJECTED, "; ".join(dict.fromkeys(rejected)), warnings,
                              compile_s=compile_s)
        if library and not getattr(self.settings, "allow_library", False):
            return self._fail(source, Status.REJECTED, "library compute: the extension calls torch's own "
                              "compute instead of computing itself: " + "; ".join(dict.fromkeys(library)),
                              warnings, compile_s=compile_s)
        return BuildResult(failure=None, extensions=tuple(exts), compile_s=compile_s,
                           warnings=tuple(dict.fromkeys(warnings)), library=tuple(dict.fromkeys(library)),
                           labels=tuple(dict.fromkeys(labels)), capture_s=capture_s)

    def _symbols_of(self, ext: Extension):
        from kopt.evaluator.symbols import check_binary

        with self._lock:
            if ext.store_key in self._symbols:
                return self._symbols[ext.store_key]
        entry = Path(ext.so_path).parent
        paths = [ext.so_path] if not ext.compile_only else sorted(str(p) for p in entry.glob("*.o"))
        rep = check_binary(paths, dynamic=not ext.compile_only)
        with self._lock:
            self._symbols[ext.store_key] = rep
        return rep

    def _compile(self, plan: _Plan, warnings: list[str]) -> tuple[Extension | None, str]:
        """One extension, once: memory, then the store (verified), else a sandboxed compile + install."""
        key = store_key(self, plan)
        with self._lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._done:
                    ext, err = self._done[key]
                    return (ext if ext is None else Extension(ext.name, plan.call_key, ext.so_path, ext.sha256,
                                                              ext.compile_only, ext.store_key)), err
            with self.store.locked(key):
                doc, why = self.store.lookup(key)
                if why is not None:
                    warnings.append("a stored build failed kopt's verification and was rebuilt "
                                    f"(its {why})")
                    self.store.discard(key)
                if doc is None:
                    doc, err = compile_and_install(self, plan, key)
                    if doc is None:
                        if not err.startswith("compile killed"):
                            with self._lock:
                                self._done[key] = (None, err)
                        return None, err
            ext = _ext_from(doc, self.store, key, plan.call_key)
            with self._lock:
                self._done[key] = (ext, "")
            return ext, ""


__all__ = ["BuildResult", "Builder", "Extension"]


# ---- flags and the build plan -----------------------------------------------------------------------------

def _merge(*groups) -> tuple[str, ...]:
    return tuple(dict.fromkeys(f for g in groups for f in g))


def _cuda_usable() -> bool:
    import torch

    return bool(torch.version.cuda) and torch.cuda.is_available()


def plan_call(b: Builder, call: dict, warnings: list[str]) -> tuple[_Plan | None, list[str]]:
    """Judge every option of one captured call with the flag policy; the plan, or the rejections."""
    from kopt.evaluator.flags import classify
    from kopt.evaluator.kopt_child.capture import extension_key

    rejections: list[str] = []
    kept: dict[str, list[str]] = {"extra_cflags": [], "extra_cuda_cflags": [], "extra_ldflags": []}
    opts = call["options"]
    for opt, value in opts.items():
        if opt in ("with_cuda", "with_pytorch_error_handling", "no_implicit_headers"):
            continue  # honoured below
        verdict = classify(opt, value, target=b.target_name,
                           allow_fast_math=bool(getattr(b.settings, "allow_fast_math", False)))
        warnings += verdict.warnings
        rejections += verdict.rejections
        if opt in kept:
            kept[opt] += verdict.kept
    for fn in call["functions"] or ():
        if not _IDENT.fullmatch(fn):
            rejections.append(f"load_inline functions: {fn[:80]!r} is not a C++ function name (kopt's bindings "
                              "would carry it into the build as code)")
    if call["cuda"] and b.target_name == "cpu":
        rejections.append("load_inline got cuda_sources but the target is cpu: write C++ (OpenMP) for --target cpu")
    if opts.get("with_cuda") and b.target_name == "cpu":
        warnings.append("load_inline with_cuda=True dropped: the cpu target builds no CUDA")
    if rejections:
        return None, rejections
    with_cuda = bool(call["cuda"]) or (bool(opts.get("with_cuda")) and b.target_name == "cuda")
    t = b.target
    return _Plan(
        call_key=extension_key(call), cpp=tuple(call["cpp"]), cuda=tuple(call["cuda"]),
        functions=None if call["functions"] is None else tuple(call["functions"]),
        cflags=_merge(t.CFLAGS, kept["extra_cflags"]), cuda_cflags=_merge(t.CUDA_CFLAGS, kept["extra_cuda_cflags"]),
        ldflags=_merge(t.LDFLAGS, kept["extra_ldflags"]), with_cuda=with_cuda,
        with_pytorch_error_handling=bool(opts.get("with_pytorch_error_handling", True)),
        no_implicit_headers=bool(opts.get("no_implicit_headers", False)),
        compile_only=with_cuda and not _cuda_usable(), env=tuple(sorted(t.build_env().items()))), []


def store_key(b: Builder, plan: _Plan) -> str:
    """What the store entry is named by: everything that changes the binary, hashed by kopt."""
    from kopt.evaluator.targets import cpu

    fields = {k: v for k, v in plan.__dict__.items() if k != "call_key"}
    blob = json.dumps({"store": STORE_VERSION, "target": b.target_name, "plan": fields,
                       "toolchain": b.target.toolchain(), "host_isa": cpu.host_isa()}, sort_keys=True, default=list)
    return _sha(blob)


# ---- compile (sandboxed, no candidate code) and install ---------------------------------------------------

_DIAG = (re.compile(r"^(?P<path>[^\s:]+?):(?P<line>\d+):(?:\d+:)? (?:fatal )?error: (?P<msg>.*)$"),
         re.compile(r"^(?P<path>\S+?)\((?P<line>\d+)\): (?:catastrophic )?error: (?P<msg>.*)$"))
_QUOTED = re.compile(r"'[^'\n]*'|‘[^’\n]*’|\"[^\"\n]*\"|`[^'`\n]*'")


def _mask(msg: str, tokens: set[str]) -> str:
    """Keep a quoted span or a number only when the candidate wrote every word of it."""
    def span(m: re.Match) -> str:
        q = m.group(0)
        return q if all(w in tokens for w in re.findall(r"\w+", q[1:-1])) else q[0] + "…" + q[-1]

    msg = _QUOTED.sub(span, msg)
    return re.sub(r"\b\d{2,}\b", lambda m: m.group(0) if m.group(0) in tokens else "…", msg)


def compile_reason(log: str, plan: _Plan, build: Path) -> str:
    """kopt's sentence for a failed compile, quoting only errors located in the candidate's own lines."""
    tokens = set(re.findall(r"\w+", "\n".join(plan.cpp + plan.cuda)))
    layout = {  # file -> (lines kopt put before the candidate's, the candidate's line count, label)
        str(build / "main.cpp"): (0 if plan.no_implicit_headers else 1, "\n".join(plan.cpp).count("\n") + 1, "C++"),
        str(build / "cuda.cu"): (0 if plan.no_implicit_headers else 3, "\n".join(plan.cuda).count("\n") + 1, "CUDA"),
    }
    picked: list[str] = []
    for raw in log.splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", raw.strip())
        for rx in _DIAG:
            m = rx.match(line)
            if not m:
                continue
            where = layout.get(os.path.normpath(os.path.join(build, m.group("path"))))
            if where is None:
                break
            n = int(m.group("line")) - where[0]
            if 1 <= n <= where[1]:
                text = f"{where[2]} source line {n}: error: {_mask(m.group('msg'), tokens)}"
                if text not in picked:
                    picked.append(text)
            break
    if picked:
        return "compile error: " + " | ".join(picked[:2])
    return ("the extension did not compile, and no error was located in the submitted sources (kopt quotes the "
            "compiler only for those lines)")


def compile_and_install(b: Builder, plan: _Plan, key: str) -> tuple[dict | None, str]:
    """Compile `plan` in a fresh staging dir (sandboxed compile child), then install it into the store."""
    name = f"kopt_{key[:16]}"
    staging = b.store.staging()
    try:
        build = staging / "build"
        build.mkdir()
        spec = {"name": name, "cpp": list(plan.cpp), "cuda": list(plan.cuda),
                "functions": None if plan.functions is None else list(plan.functions),
                "cflags": list(plan.cflags), "cuda_cflags": list(plan.cuda_cflags), "ldflags": list(plan.ldflags),
                "include_paths": pch_include_paths(b, staging), "with_cuda": plan.with_cuda,
                "with_pytorch_error_handling": plan.with_pytorch_error_handling,
                "no_implicit_headers": plan.no_implicit_headers, "compile_only": plan.compile_only,
                "build_dir": str(build)}
        (staging / "spec.json").write_text(json.dumps(spec))
        env = {"MAX_JOBS": os.environ.get("MAX_JOBS", "2"), "OMP_NUM_THREADS": "1", **dict(plan.env)}
        timeout = float(b.settings.compile_timeout_s)
        res = run_child(b, ["compile", str(staging / "spec.json")], work=staging, timeout_s=timeout,
                         toolchain=True, env=env, readonly=tuple(p for p in spec["include_paths"]
                                                                 if not p.startswith(str(staging))))
        if res.killed == "timeout":
            return None, f"compile killed after {timeout:.0f} s (compile timeout)"
        try:
            out = json.loads(res.stdout, parse_constant=lambda c: None)
            ok, only, log = bool(out["ok"]), bool(out["compile_only"]), str(out["log"])
        except (ValueError, KeyError, TypeError, RecursionError):
            return None, f"the compiler process ended without a result ({res.describe()})"
        if not ok:
            b.logs[key] = log
            return None, compile_reason(log, plan, build)
        if only and not plan.compile_only:
            return None, "the extension compiled but did not link"
        files = [f"{name}.so"] if not only else [f for f in ("main.o", "cuda.cuda.o") if (build / f).exists()]
        return b.store.install(key, name, build, files, only), ""
    except OSError as e:
        return None, f"kopt could not install the build ({e.strerror or e})"
    finally:
        remove_tree(staging)


