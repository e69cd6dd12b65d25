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

Compile errors are sentences kopt writes; compiler text is quoted only from diagnostics located in the lines
of main.cpp / cuda.cu that came from the candidate, with quoted words the candidate did not write masked, so an
#include or .incbin of another file cannot carry that file's content into a report.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kopt.records import EvalResult, Status

STORE_VERSION = "v2"  # today's build dirs (the old layout) are never read
MAX_SO_BYTES = 1 << 30
_NAME = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)?")  # file names inside a store entry


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


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _uncurse(path: Path) -> None:
    """Make a read-only tree of kopt's writable again (so it can be removed)."""
    for root, _dirs, files in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(root, 0o755)
        for name in files:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), 0o644, follow_symlinks=False)


def remove_tree(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
        return
    _uncurse(path)
    shutil.rmtree(path, ignore_errors=True)


class Store:
    """$KOPT_BUILD_DIR/v2: entries/<key>/ (read-only files + manifest.json), locks/, staging/, .mac-key."""

    def __init__(self, root: Path):
        self.root = root
        for sub in ("entries", "pch", "locks", "staging"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._secret = self._mac_key()

    def _mac_key(self) -> bytes:
        path = self.root / ".mac-key"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(32))
        except FileExistsError:
            pass
        data = path.read_bytes()
        if len(data) != 32:  # a half-written key: another process is writing it right now
            time.sleep(0.2)
            data = path.read_bytes()
        return data

    def _mac(self, doc: dict) -> str:
        body = json.dumps({k: v for k, v in doc.items() if k != "mac"}, sort_keys=True).encode()
        return hmac.new(self._secret, body, hashlib.sha256).hexdigest()

    @contextlib.contextmanager
    def locked(self, key: str):
        with open(self.root / "locks" / f"{key}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def staging(self) -> Path:
        path = self.root / "staging" / uuid.uuid4().hex
        path.mkdir(mode=0o755)
        return path

    def lookup(self, key: str, section: str = "entries") -> tuple[dict | None, str | None]:
        """(manifest, None) for a verified entry; (None, why) when one exists but fails; (None, None) if absent."""
        entry = self.root / section / key
        if not entry.exists() and not entry.is_symlink():
            return None, None
        try:
            if entry.is_symlink() or not entry.is_dir():
                raise ValueError("not a directory")
            doc = json.loads((entry / "manifest.json").read_text())
            if not isinstance(doc, dict) or doc.get("key") != key or not hmac.compare_digest(
                    str(doc.get("mac", "")), self._mac(doc)):
                raise ValueError("manifest not written by kopt")
            for name, digest in doc["files"].items():
                if not _NAME.fullmatch(name) or sha256_file(entry / name) != digest:
                    raise ValueError(f"{name} differs from its manifest")
            return doc, None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            return None, str(e)

    def discard(self, key: str, section: str = "entries") -> None:
        remove_tree(self.root / section / key)

    def install(self, key: str, name: str, built: Path, files: list[str], compile_only: bool,
                section: str = "entries") -> dict:
        """Copy `files` out of a finished staging dir into entries/<key>, read-only, in one rename."""
        tmp = self.root / "staging" / f"install-{uuid.uuid4().hex}"
        tmp.mkdir(mode=0o755)
        try:
            digests = {}
            for fname in files:
                src = built / fname
                if not _NAME.fullmatch(fname):
                    raise OSError(f"{fname}: not a name kopt writes")
                (tmp / fname).parent.mkdir(parents=True, exist_ok=True)
                st = os.lstat(src)
                if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SO_BYTES:
                    raise OSError(f"{fname} is not a regular file of a sane size")
                h = hashlib.sha256()
                fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as fin, open(tmp / fname, "xb") as fout:
                    for block in iter(lambda: fin.read(1 << 20), b""):
                        h.update(block)
                        fout.write(block)
                digests[fname] = h.hexdigest()
                os.chmod(tmp / fname, 0o444)
            doc = {"version": STORE_VERSION, "key": key, "name": name, "files": digests,
                   "compile_only": compile_only}
            doc["mac"] = self._mac(doc)
            (tmp / "manifest.json").write_text(json.dumps(doc, sort_keys=True))
            os.chmod(tmp / "manifest.json", 0o444)
            final = self.root / section / key
            try:
                os.rename(tmp, final)
            except OSError:  # another process installed it first: use theirs if it verifies
                remove_tree(tmp)
                theirs, why = self.lookup(key, section)
                if theirs is None:
                    raise OSError(f"the store entry exists and fails verification ({why})") from None
                return theirs
            for sub in sorted({os.path.dirname(f) for f in files if "/" in f}):
                os.chmod(final / sub, 0o555)
            os.chmod(final, 0o555)
            return doc
        except BaseException:
            remove_tree(tmp)
            raise


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


__all__ = ["BuildResult", "Builder", "Extension", "STORE_VERSION", "Store", "sha256_file"]


# ---- capture: the candidate's import, recorded ------------------------------------------------------------

MAX_CAPTURE_BYTES = 1 << 20  # the sandbox keeps 1 MiB of stdout: a bigger document is malformed anyway
MAX_CALLS = 8
MAX_ITEMS = 256  # flags per option, functions per call, source strings per call
MAX_ITEM_CHARS = 4096
CAPTURE_KEYS = {"version", "calls", "model", "error", "error_type", "line"}
CALL_KEYS = {"kind", "cpp", "cuda", "functions", "options"}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*")


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


def _run_child(b: Builder, args: list[str], *, work: Path, timeout_s: float, toolchain: bool,
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


def run_capture(b: Builder, source: str) -> tuple[list[dict] | None, tuple[Status, str] | None]:
    """Import the candidate in a sandboxed capture child; its load_inline calls, or a verdict."""
    work = b.work / f"capture-{uuid.uuid4().hex}"
    work.mkdir(parents=True)
    try:
        (work / "candidate.py").write_text(source)
        timeout = float(b.settings.run_timeout_s)
        res = _run_child(b, ["capture", str(work / "candidate.py")], work=work, timeout_s=timeout,
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
        res = _run_child(b, ["compile", str(staging / "spec.json")], work=staging, timeout_s=timeout,
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


# ---- the precompiled header: built by kopt's parent into its store, verified, read-only to every child ------

_PCH_LOCK = threading.Lock()
_PCH: dict[str, tuple] = {}  # store pch key -> the verified .gch's (ino, size, mtime, ctime)


def _torch_header() -> Path:
    import torch.utils.cpp_extension as cx

    return Path(cx.__file__).resolve().parent.parent / "include" / "torch" / "extension.h"


def _stat_sig(path: Path) -> tuple:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _pch_cmd(b: Builder, header: Path, out: Path) -> list[str]:
    """torch's own PCH command (cpp_extension._check_and_build_extension_h_precompiler_headers) with kopt's
    flags, writing to kopt's staging dir instead of torch's include dir."""
    import sysconfig

    import torch.utils.cpp_extension as cx

    include = _torch_header().parent.parent
    return [cx.get_cxx_compiler(), "-x", "c++-header", str(header), "-o", str(out), "-I", str(include),
            "-I", sysconfig.get_path("include"), "-I", str(include / "torch" / "csrc" / "api" / "include"),
            *b.target.CFLAGS, "-DTORCH_API_INCLUDE_EXTENSION_H", "-std=c++20", "-fPIC"]


def ensure_pch(b: Builder, wait_s: float = 90.0) -> Path | None:
    """The store's PCH entry, v2/pch/<key>/torch/extension.h(.gch): compiled here (trusted, kopt's flags,
    torch's headers only), installed like a build (read-only, MAC'd manifest), verified by hash once per process
    and by stat before every compile. None: no PCH (builds are only slower), also when another process holds
    its lock longer than `wait_s` (it is building it)."""
    if not getattr(b.target, "USE_PCH", False):
        return None
    header = _torch_header()
    key = _sha(json.dumps({"cmd": _pch_cmd(b, Path("H"), Path("O")), "header": header.read_text(),
                           "toolchain": b.target.toolchain()}, sort_keys=True))
    entry = b.store.root / "pch" / key
    gch = entry / "torch" / "extension.h.gch"
    with _PCH_LOCK:
        with contextlib.suppress(OSError):
            if _PCH.get(key) == _stat_sig(gch):
                return entry
        _PCH.pop(key, None)
        try:
            with open(b.store.root / "locks" / f"pch-{key}.lock", "a") as lock:
                deadline = time.monotonic() + wait_s
                while True:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            return None
                        time.sleep(0.5)
                sig = _stat_sig(gch) if gch.exists() else None
                doc, why = b.store.lookup(key, "pch")
                if why is not None:
                    b.store.discard(key, "pch")
                if doc is None:
                    _build_pch(b, header, key)
                    sig = _stat_sig(gch)
                elif sig != _stat_sig(gch):
                    return None  # changed while it was being hashed
                _PCH[key] = sig
                return entry
        except Exception:  # noqa: BLE001 - without a PCH builds are only slower
            return None


def _build_pch(b: Builder, header: Path, key: str) -> None:
    import subprocess

    staging = b.store.staging()
    try:
        (staging / "torch").mkdir()
        copy = staging / "torch" / "extension.h"
        copy.write_text(header.read_text())
        subprocess.run(_pch_cmd(b, copy, staging / "torch" / "extension.h.gch"), check=True,
                       capture_output=True, timeout=float(b.settings.compile_timeout_s) * 3)
        b.store.install(key, "pch", staging, ["torch/extension.h", "torch/extension.h.gch"], False, "pch")
    finally:
        remove_tree(staging)


def pch_include_paths(b: Builder, staging: Path) -> list[str]:
    """The store's PCH dir first on the include path (gcc uses a .gch found next to the header it resolves, and
    -I dirs come before torch's -isystem ones); without one, a dir whose torch/extension.h has no .gch beside
    it, so torch's own (unverified) one is never used."""
    entry = ensure_pch(b)
    if entry is not None:
        return [str(entry)]
    shadow = staging / "no-pch"
    (shadow / "torch").mkdir(parents=True, exist_ok=True)
    (shadow / "torch" / "extension.h").write_text(_torch_header().read_text())
    return [str(shadow)]
