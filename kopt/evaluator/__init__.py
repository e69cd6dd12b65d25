"""kopt's evaluator: static gate -> compile -> correctness -> timing, each untrusted step in its own sandboxed
process (docs/design.md "The evaluator"; hacking-and-sandbox.md §4-5).

Candidate code never runs in kopt's process and never sees reference outputs: the reference child writes
them to a file that kopt reads back and deletes before any candidate process starts; candidate children ship
raw outputs and timings, and judge.py decides here.

Builds live in config.build_dir() ($KOPT_BUILD_DIR, default $KOPT_HOME/build), one dir per extension named by
worker.extension_name (sources, functions, flags, toolchain, arch): candidates with byte-identical kernels
compile once, and several KOPT_HOMEs can share the dir. One fcntl lock per build dir keeps a process from
writing into a dir another is building.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kopt.errors import ConfigError, TaskError
from kopt.records import EvalResult, Progress, Status, no_progress
from kopt.task import Task

OnResult = Callable[[int, EvalResult], None]
# Bumped whenever a change could turn an old verdict wrong (checks added, timing changed): cached verdicts
# are keyed on it, so an upgrade re-evaluates instead of trusting what an older evaluator said.
VERDICT_VERSION = "4"
_KOPT_ROOT = str(Path(__file__).resolve().parent.parent.parent)  # PYTHONPATH for children


@dataclass(frozen=True)
class EvalSettings:
    target: str = "cpu"  # "cpu" | "cuda"; resolve "auto" with resolve_target("auto")
    atol: float | None = None  # None -> per output dtype: fp32 1e-4, fp16/bf16 1e-2 (KernelBench PR #80)
    rtol: float | None = None
    trials: int = 5  # correctness trials, distinct seeds (KernelBench uses 5)
    compile_timeout_s: float = 300.0  # §4: separate compile and run budgets
    run_timeout_s: float = 120.0  # budget per check/time process (`--timeout`)
    jobs: int = 2  # parallel compiles / checks
    threads: int | None = None  # CPU threads for candidate AND reference (fixed); None -> os.cpu_count()
    min_calls: int = 100  # timing: >= min_calls calls or >= min_time_s, whichever first (§3 "Statistics")
    min_time_s: float = 1.0
    max_rss_mb: int = 16384

    def key(self) -> str:
        """A stable string of the settings that change verdicts (everything but `jobs`)."""
        d = dataclasses.asdict(self)
        d.pop("jobs")
        d["threads"] = self.resolved_threads()
        return json.dumps(d, sort_keys=True)

    def resolved_threads(self) -> int:
        return int(self.threads or os.cpu_count() or 1)


@dataclass(frozen=True)
class BuildResult:
    """The compile stage alone: `failure` is the verdict when it failed, else None."""

    failure: EvalResult | None
    extensions: tuple[tuple[str, str, str], ...] = ()  # (name, .so path, sha256)
    compile_s: float = 0.0
    warnings: tuple[str, ...] = ()


def resolve_target(target: str) -> str:
    """ "auto" -> "cuda" if torch sees a GPU, else "cpu"."""
    if target == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if target not in ("cpu", "cuda"):
        raise ConfigError(f"unknown target {target!r}", "use --target auto, cuda or cpu")
    return target


def machine_fingerprint(target: str) -> dict[str, str]:
    """What Evaluator.fingerprint() reports, without building an Evaluator: device, toolchain, isolation.

    Cheap (no reference run, no compile), so caches can key verdicts on it before deciding whether anything
    needs evaluating at all.
    """
    from kopt.evaluator.sandbox import detect_isolation
    from kopt.evaluator.targets import get_target

    target = resolve_target(target)
    t = get_target(target)
    return {
        "evaluator": VERDICT_VERSION,
        "target": target,
        "device": t.device_name(),
        "toolchain": json.dumps(t.toolchain(), sort_keys=True),
        "isolation": detect_isolation(),
    }


def _static_check(source: str, target: str):
    try:  # the static gate is another engineer's module; run without it until it lands
        from kopt.evaluator.static import check_source
    except ImportError:
        return None
    return check_source(source, target)


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


class Evaluator:
    """Evaluate candidate sources against one task. See the module docstring and docs/design.md."""

    def __init__(self, task: Task, settings: EvalSettings = EvalSettings(), progress: Progress = no_progress):
        from kopt.config import build_dir, kopt_home
        from kopt.evaluator.sandbox import detect_isolation
        from kopt.evaluator.targets import get_target

        target = resolve_target(settings.target)
        if settings.trials < 5:
            raise ConfigError(f"trials={settings.trials} is too few", "use at least 5 correctness trials")
        self.task = task
        self.settings = dataclasses.replace(settings, target=target)
        self.progress = progress
        self.target = get_target(target)
        self.isolation = detect_isolation()
        self.home = kopt_home()
        self.build_dir = build_dir()  # shared, content-addressed: one dir per extension (worker.extension_name)
        self.root = self.home / "eval" / f"{task.hash[:12]}-{uuid.uuid4().hex[:8]}"
        self.ref_dir = self.root / "reference"
        self.task_dir = self.root / "task"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._ref_lock = threading.Lock()
        self._ref_outputs: list[list] | None = None
        self._ref_inputs: list[dict] | None = None
        self._ref_tags: list[str] = []
        self._ref_warnings: list[str] = []
        self._ref_time: dict | None = None
        self._built: dict[str, BuildResult] = {}
        self._pch_ok: bool | None = None
        self._closed = False

    # ---- public API ---------------------------------------------------------------------------------

    def check(self, sources: Sequence[str], on_result: OnResult | None = None) -> list[EvalResult]:
        """Static gate -> compile (parallel, settings.jobs) -> correctness (fresh process each). No timing."""
        n = len(sources)
        results: list[EvalResult | None] = [None] * n
        counts = {"compile": 0, "check": 0}
        self.progress("compile", 0, n)
        self.progress("check", 0, n)

        def bump(stage: str) -> None:
            with self._lock:
                counts[stage] += 1
                self.progress(stage, counts[stage], n)

        self._warm_pch()
        with cf.ThreadPoolExecutor(max_workers=max(1, self.settings.jobs)) as pool:
            ref_future = pool.submit(self._ensure_reference)

            def one(i: int) -> EvalResult:
                build = self._build(sources[i])
                bump("compile")
                if build.failure is not None:
                    bump("check")
                    return build.failure
                ref_future.result()  # correctness needs the reference outputs in memory (and off disk)
                res = self._check_one(i, sources[i], build)
                bump("check")
                return res

            futures = {pool.submit(one, i): i for i in range(n)}
            try:
                for fut in cf.as_completed(futures):
                    i = futures[fut]
                    results[i] = fut.result()
                    if on_result:
                        on_result(i, results[i])
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
        return [r for r in results if r is not None]

    def time(self, sources: Sequence[str], results: Sequence[EvalResult],
             on_result: OnResult | None = None) -> list[EvalResult]:
        """Time the given correct candidates one at a time, nothing else running; others pass through."""
        if len(sources) != len(results):
            raise ValueError("time() needs one result per source")
        self._ensure_reference()
        out = list(results)
        todo = [i for i, r in enumerate(results) if r.correct]
        self.progress("time", 0, len(todo))
        if todo:
            self._warm_pch()
            before = self._time_reference()
        for done, i in enumerate(todo, 1):
            timed = self._time_one(sources[i], results[i], before)
            # A/B/A: the reference is timed again right after each candidate, and the candidate's speedup is
            # against the mean of the two reference rounds around it, so load that comes and goes on the
            # machine (another job, thermal state) cannot favour one side (docs/evaluator.md §3 "Baseline").
            after = self._time_reference(fresh=True)
            if timed.runtime_ms:
                ref_ms = (before["median_ms"] + after["median_ms"]) / 2
                timed = timed.replace(reference_runtime_ms=ref_ms, speedup=ref_ms / timed.runtime_ms)
            before = after
            out[i] = timed
            self.progress("time", done, len(todo))
            if on_result:
                on_result(i, out[i])
        return out

    def evaluate(self, sources: Sequence[str], on_result: OnResult | None = None) -> list[EvalResult]:
        """check, then time every correct one. on_result fires once per candidate with its final verdict."""
        checked = self.check(sources, on_result=lambda i, r: on_result(i, r) if on_result and not r.correct else None)
        timed = self.time(sources, checked)
        if on_result:
            for i, r in enumerate(timed):
                if checked[i].correct:
                    on_result(i, r)
        return timed

    def build(self, sources: Sequence[str]) -> list[BuildResult]:
        """The static gate and compile stage alone (e.g. CUDA candidates on a machine without a GPU)."""
        self._warm_pch()
        with cf.ThreadPoolExecutor(max_workers=max(1, self.settings.jobs)) as pool:
            return list(pool.map(self._build, sources))

    def fingerprint(self) -> dict[str, str]:
        return machine_fingerprint(self.settings.target)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ref_outputs = None
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- helpers ------------------------------------------------------------------------------------

    def _base(self, source: str, **kw) -> EvalResult:
        return EvalResult(source_sha256=_sha(source), target=self.settings.target,
                          device=self.target.device_name(), isolation=self.isolation,
                          toolchain=tuple(sorted(self.target.toolchain().items())), **kw)

    def _device(self) -> str:
        return "cuda" if self.settings.target == "cuda" else "cpu"

    def _env(self) -> dict[str, str]:
        threads = str(self.settings.resolved_threads())
        env = {"PYTHONPATH": _KOPT_ROOT, "OMP_NUM_THREADS": threads, "KOPT_HOME": str(self.home),
               "MAX_JOBS": os.environ.get("MAX_JOBS", "2")}
        env.update(self.target.build_env())
        return env

    def _limits(self, timeout_s: float, compile: bool = False):
        from kopt.evaluator.sandbox import Limits

        gpu = self.settings.target == "cuda" and not compile
        cores = max(1, self.settings.resolved_threads())
        return Limits(cpu_s=int(timeout_s * (cores + 2)) + 30,
                      as_mb=None if gpu else self.settings.max_rss_mb + 8192)

    def _readable(self) -> list[Path]:
        # The task's own directory may be under /tmp, which bwrap replaces with an empty tmpfs.
        paths = [self.task_dir, self.ref_dir]
        if self.task.search_path and Path(self.task.search_path).is_dir():
            paths.append(Path(self.task.search_path))
        return paths

    def _spawn(self, module: str, mode: str, spec: dict, work: Path, timeout_s: float, *, writable=(),
               readable=(), compile: bool = False):
        from kopt.evaluator.sandbox import run_sandboxed

        work.mkdir(parents=True, exist_ok=True)
        spec = dict(spec, out_dir=str(work))
        (work / "spec.json").write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", module, mode, str(work / "spec.json")]
        res = run_sandboxed(cmd, timeout_s=timeout_s, limits=self._limits(timeout_s, compile),
                            max_rss_mb=self.settings.max_rss_mb, env=self._env(), writable=writable,
                            readable=readable, work_dir=work,
                            gpu=self.settings.target == "cuda" and not compile)
        return res, _read_json(work / "result.json")

    def _warm_pch(self) -> None:
        """Build torch/extension.h.gch ONCE, trusted, under a lock, before parallel compiles (§ the brief:
        ~24 s plain vs ~10 s with the PCH). Sandboxed builds only read it (the torch dir is read-only there)."""
        if self._pch_ok is not None or not self.target.USE_PCH:
            return
        import torch.utils.cpp_extension as cx

        include = Path(cx.__file__).resolve().parent.parent / "include" / "torch"
        lock_path = include / "extension.h.kopt.lock"
        try:
            lock_file = open(lock_path, "w")
        except OSError:
            lock_file = open(self.home / "pch.lock", "w")
        try:
            with lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                cx._check_and_build_extension_h_precompiler_headers(list(self.target.CFLAGS), None)
            self._pch_ok = (include / "extension.h.gch").exists()
        except Exception:  # noqa: BLE001 - no PCH only means slower builds
            self._pch_ok = False

    # ---- reference ----------------------------------------------------------------------------------

    def _perturbed_source(self) -> tuple[str, str] | None:
        """The task with an odd batch_size (hack #14), when its file has a module-level int `batch_size`."""
        import ast

        from kopt.task import _apply_sets

        try:
            tree = ast.parse(self.task.source)
        except SyntaxError:
            return None
        for node in tree.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id == "batch_size" and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, int) and not isinstance(node.value.value, bool)):
                b = node.value.value
                new = max(1, b // 2 + 1)
                if new == b:
                    return None
                return _apply_sets(self.task.source, {"batch_size": new}, Path(self.task.path)), f"batch_size={new}"
        return None

    def _ensure_reference(self) -> None:
        with self._ref_lock:
            if self._ref_outputs is None:
                self._build_reference()

    def _build_reference(self) -> None:
        import torch

        self.task.write(self.task_dir)
        spec = {"task": str(self.task_dir / "task.py"), "search_path": self.task.search_path,
                "trials": self.settings.trials, "threads": self.settings.resolved_threads(),
                "target": self.settings.target, "device": self._device()}
        perturbed = self._perturbed_source()
        if perturbed:
            (self.task_dir / "task_perturbed.py").write_text(perturbed[0])
            spec["perturbed_task"] = str(self.task_dir / "task_perturbed.py")
            spec["perturbed_note"] = perturbed[1]
        self.ref_dir.mkdir(parents=True, exist_ok=True)
        res, result = self._spawn("kopt.evaluator.reference", "build", spec, self.ref_dir,
                                  max(self.settings.run_timeout_s, 60.0) * 2, readable=[self.task_dir])
        ref_file = self.ref_dir / "reference.pt"
        try:
            if not result or not result.get("ok"):
                why = (result or {}).get("error") or res.describe()
                raise TaskError(f"running the reference {self.task.target} failed: {why}",
                                "run `kopt init` on it or shrink it with --set NAME=VALUE")
            outputs = torch.load(ref_file, weights_only=True)["outputs"]
            inputs = torch.load(self.ref_dir / "inputs.pt", weights_only=True)["trials"]
        finally:
            # Reference outputs live only in kopt's memory: never on disk while a candidate runs (hack #17).
            with contextlib.suppress(FileNotFoundError):
                ref_file.unlink()
        with self._lock:
            self._ref_outputs, self._ref_inputs = outputs, inputs
            self._ref_tags = list(result.get("tags", []))
            self._ref_warnings = list(result.get("warnings", []))

    def _time_trials(self) -> list[int]:
        # Same-shape trials only (all but the perturbed one): >= 3 distinct input sets to rotate (§3).
        return [i for i, tag in enumerate(self._ref_tags) if not tag.startswith("perturbed")][: self.settings.trials]

    def _time_reference(self, fresh: bool = False) -> dict:
        if self._ref_time is not None and not fresh:
            return self._ref_time
        from kopt.evaluator.targets import median_iqr

        nonce = secrets.token_hex(8)
        spec = {"task": str(self.task_dir / "task.py"), "search_path": self.task.search_path,
                "inputs": str(self.ref_dir / "inputs.pt"), "time_trials": self._time_trials(),
                "threads": self.settings.resolved_threads(), "target": self.settings.target,
                "min_calls": self.settings.min_calls, "min_time_s": self.settings.min_time_s, "nonce": nonce,
                "device": self._device()}
        work = self.root / "reference-time"
        res, result = self._spawn("kopt.evaluator.reference", "time", spec, work, self.settings.run_timeout_s,
                                  readable=[self.task_dir, self.ref_dir])
        shutil.rmtree(work, ignore_errors=True)
        if not result or not result.get("ok"):
            why = (result or {}).get("error") or res.describe()
            raise TaskError(f"timing the reference {self.task.target} failed: {why}",
                            "raise --timeout or shrink the task with --set NAME=VALUE")
        med, iqr = median_iqr(result["times_ms"])
        self._ref_time = {"median_ms": med, "iqr_ms": iqr}
        return self._ref_time

    def _recheck_reference(self, calls: list[int], nonce: str) -> dict[int, list]:
        """The reference's outputs on timed calls `calls` of the timing run keyed by `nonce`: the trusted
        reference child regenerates their inputs (targets.call_inputs); the outputs live only in kopt's memory."""
        import torch

        spec = {"task": str(self.task_dir / "task.py"), "search_path": self.task.search_path,
                "inputs": str(self.ref_dir / "inputs.pt"), "time_trials": self._time_trials(), "calls": calls,
                "nonce": nonce, "threads": self.settings.resolved_threads(), "target": self.settings.target,
                "device": self._device()}
        work = self.root / "work" / f"recheck-{uuid.uuid4().hex[:8]}"
        try:
            res, result = self._spawn("kopt.evaluator.reference", "recheck", spec, work, self.settings.run_timeout_s,
                                      readable=[self.task_dir, self.ref_dir])
            if not result or not result.get("ok"):
                why = (result or {}).get("error") or res.describe()
                raise TaskError(f"re-checking timed calls with the reference {self.task.target} failed: {why}",
                                "raise --timeout or shrink the task with --set NAME=VALUE")
            outputs = torch.load(work / "recheck.pt", weights_only=True)["outputs"]
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return dict(zip(calls, outputs))

    # ---- compile ------------------------------------------------------------------------------------

    def _build(self, source: str) -> BuildResult:
        key = _sha(source)
        with self._lock:
            if key in self._built:
                return self._built[key]
        warnings: list[str] = []
        report = _static_check(source, self.settings.target)
        if report is not None:
            warnings += list(report.warnings)
            if not report.ok:
                failure = self._base(source, status=Status.REJECTED, reason="; ".join(report.rejections)[:600],
                                     warnings=tuple(warnings))
                return BuildResult(failure=failure, warnings=tuple(warnings))
        build_root = self.build_dir
        work = self.root / "work" / f"{key[:16]}-compile-{uuid.uuid4().hex[:6]}"
        work.mkdir(parents=True, exist_ok=True)
        (work / "candidate.py").write_text(source)
        spec = {"candidate": str(work / "candidate.py"), "target": self.settings.target,
                "build_root": str(build_root), "use_pch": bool(self._pch_ok),
                "threads": self.settings.resolved_threads()}
        t0 = time.monotonic()
        res, result = self._spawn("kopt.evaluator.worker", "compile", spec, work, self.settings.compile_timeout_s,
                                  writable=[build_root], compile=True)
        compile_s = time.monotonic() - t0
        building = (work / "building").read_text().split() if (work / "building").exists() else []
        shutil.rmtree(work, ignore_errors=True)
        if result:
            warnings += result.get("warnings", [])
        if res.killed == "timeout":
            self._drop_half_built(building)
            failure = self._base(source, status=Status.TIMEOUT, compile_s=compile_s, warnings=tuple(warnings),
                                 reason=f"compile killed after {self.settings.compile_timeout_s:.0f} s (compile timeout)")
            return BuildResult(failure=failure, compile_s=compile_s, warnings=tuple(warnings))
        if not result or not result.get("ok"):
            status, reason = self._failure(res, result)
            failure = self._base(source, status=status, reason=reason, compile_s=compile_s, warnings=tuple(warnings))
            return BuildResult(failure=failure, compile_s=compile_s, warnings=tuple(warnings))
        exts = tuple((e["name"], e["so"], e["sha256"]) for e in result.get("extensions", []))
        built = BuildResult(failure=None, extensions=exts, compile_s=compile_s, warnings=tuple(warnings))
        with self._lock:
            self._built[key] = built
        return built

    def _drop_half_built(self, names: list[str]) -> None:
        """A build killed mid-compile must not be reused: remove each dir it was building, under that dir's
        lock, unless it is complete by then (another process waiting on the lock may have finished it)."""
        from kopt.evaluator.worker import BUILT_MARK

        for name in dict.fromkeys(names):
            if not name.startswith("kopt_") or "/" in name or name in (".", ".."):
                continue
            lock_path = self.build_dir / f"{name}.lock"
            try:
                with open(lock_path, "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    if not (self.build_dir / name / BUILT_MARK).exists():
                        shutil.rmtree(self.build_dir / name, ignore_errors=True)
            except OSError:
                continue

    @staticmethod
    def _failure(res, result: dict | None) -> tuple[Status, str]:
        """Verdict mapping (the brief): timeout -> timeout; signal / no payload -> crashed; Python exception
        -> runtime_error; build failure -> compile_error."""
        if res.killed == "timeout":
            return Status.TIMEOUT, res.describe()
        if res.killed:
            return Status.CRASHED, res.describe()
        if result and result.get("error"):
            return Status(result["error"]), result.get("reason", "")
        return Status.CRASHED, res.describe()

    @staticmethod
    def _binary_sha(build: BuildResult) -> str | None:
        if not build.extensions:
            return None
        if len(build.extensions) == 1:
            return build.extensions[0][2]
        return _sha("".join(sorted(e[2] for e in build.extensions)))

    # ---- correctness --------------------------------------------------------------------------------

    def _run_spec(self, source: str, build: BuildResult, work: Path) -> dict:
        work.mkdir(parents=True, exist_ok=True)
        (work / "candidate.py").write_text(source)
        return {"candidate": str(work / "candidate.py"), "target": self.settings.target,
                "build_root": str(self.build_dir),
                "extensions": [{"name": n, "so": so, "sha256": h} for n, so, h in build.extensions],
                "inputs": str(self.ref_dir / "inputs.pt"), "threads": self.settings.resolved_threads(),
                "device": self._device()}

    def _check_one(self, i: int, source: str, build: BuildResult) -> EvalResult:
        import torch

        base = dict(binary_sha256=self._binary_sha(build), compile_s=build.compile_s,
                    warnings=tuple(build.warnings) + tuple(self._ref_warnings), trials_total=len(self._ref_outputs))
        work = self.root / "work" / f"{i}-{_sha(source)[:12]}-check-{uuid.uuid4().hex[:6]}"
        spec = self._run_spec(source, build, work)
        build_root = Path(spec["build_root"])
        res, result = self._spawn("kopt.evaluator.worker", "check", spec, work, self.settings.run_timeout_s,
                                  readable=[build_root, self.ref_dir])
        try:
            if not result or not result.get("ok"):
                status, reason = self._failure(res, result)
                return self._base(source, status=status, reason=reason, **base)
            try:
                payload = torch.load(work / "payload.pt", weights_only=True)
            except Exception as e:  # noqa: BLE001 - a tensor subclass or forged pickle does not load safely
                return self._base(source, status=Status.REJECTED, **base,
                                  reason=f"its outputs do not load as plain tensors ({type(e).__name__})")
            status, reason, passed, notes = self._judge_check(result, payload, build)
            base["warnings"] = base["warnings"] + tuple(notes)
            return self._base(source, status=status, reason=reason, trials_passed=passed, **base)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _judge_check(self, result: dict, payload: dict, build: BuildResult) -> tuple[Status, str, int, list[str]]:
        from kopt.evaluator import judge

        seen = {e.get("sha256") for e in result.get("extensions", [])}
        if seen != {e[2] for e in build.extensions}:
            return Status.REJECTED, "the checked extension is not the one that was compiled (.so hash differs)", 0, []
        notes: list[str] = []
        refs, sent = self._ref_outputs, self._ref_inputs
        trials, metas = payload.get("trials", []), result.get("trials", [])
        if len(trials) != len(refs) or len(metas) != len(refs):
            return Status.CRASHED, "the check process reported an incomplete result", 0, []
        passed = 0
        for t, (trial, meta) in enumerate(zip(trials, metas)):
            tag = self._ref_tags[t] if t < len(self._ref_tags) else ""
            label = f"trial {t} ({tag})" if tag else f"trial {t}"
            for r, (outs, m, calls) in enumerate(zip(trial["runs"], meta["meta"], meta["calls"])):
                if m.get("bad_type"):
                    return Status.REJECTED, f"{label}: {m['bad_type']} (lazy or subclassed outputs)", passed, notes
                if calls == 0:
                    return (Status.REJECTED, f"{label}: forward never called its compiled extension "
                            "(the work is done by torch, not the kernel)", passed, notes)
                why = judge.compare_all(outs, refs[t], self.settings.atol, self.settings.rtol)
                if why:
                    run = " (second pass, the same buffers refilled)" if r else ""
                    return Status.INCORRECT, f"{label}{run}: {why}", passed, notes
                if m.get("aliases_input"):
                    return Status.INCORRECT, f"{label}: an output aliases an input tensor", passed, notes
            why = judge.same_inputs(trial["inputs_after"], sent[t]["inputs"])
            if why:
                return Status.INCORRECT, f"{label}: {why}", passed, notes
            if not judge.bitwise_equal(trial["runs"][0], trial["runs"][1]) and "nondeterministic" not in " ".join(notes):
                notes.append("nondeterministic: two runs on the same input differ bitwise (both pass)")
            if trial.get("ghost") is not None and judge.compare_all(trial["ghost"], refs[t], self.settings.atol,
                                                                     self.settings.rtol) is None:
                return (Status.REJECTED, "decoy: the output stays correct when the extension's results are "
                        "replaced by NaN, so torch does the work", passed, notes)
            passed += 1
        return Status.CORRECT, "", passed, notes

    # ---- timing -------------------------------------------------------------------------------------

    def _time_one(self, source: str, result: EvalResult, ref: dict) -> EvalResult:
        import torch

        from kopt.evaluator import judge
        from kopt.evaluator.targets import median_iqr

        build = self._build(source)
        if build.failure is not None:
            return build.failure
        nonce = secrets.token_hex(8)
        work = self.root / "work" / f"{_sha(source)[:12]}-time-{uuid.uuid4().hex[:6]}"
        spec = self._run_spec(source, build, work)
        spec.update(time_trials=self._time_trials(), min_calls=self.settings.min_calls,
                    min_time_s=self.settings.min_time_s, nonce=nonce)
        res, out = self._spawn("kopt.evaluator.worker", "time", spec, work, self.settings.run_timeout_s,
                               readable=[Path(spec["build_root"]), self.ref_dir])
        try:
            if not out or not out.get("ok"):
                status, reason = self._failure(res, out)
                return result.replace(status=status, reason=f"timing: {reason}")
            if out.get("tampered"):
                return result.replace(status=Status.REJECTED, reason="timer tampering: " + "; ".join(out["tampered"]))
            seen = {e.get("sha256") for e in out.get("extensions", [])}
            if seen != {e[2] for e in build.extensions}:
                return result.replace(status=Status.REJECTED, reason="the timed extension is not the one checked")
            times = [float(x) for x in out.get("times_ms", [])]
            if not times:
                return result.replace(status=Status.CRASHED, reason="the timing process reported no calls")
            why = self._timer_cross_check(times, float(out.get("phase_ms", 0.0)), res.marks, nonce)
            if why:
                return result.replace(status=Status.REJECTED, reason=f"timer tampering: {why}")
            try:
                payload = torch.load(work / "payload.pt", weights_only=True)
            except Exception as e:  # noqa: BLE001
                return result.replace(status=Status.REJECTED, reason=f"timed outputs do not load as plain tensors ({type(e).__name__})")
            kept = payload.get("kept", [])
            try:
                calls = [int(k["call"]) for k in kept]
            except (KeyError, TypeError, ValueError):
                calls = []
            if not calls or len(set(calls)) != len(calls) or not all(0 <= c < len(times) for c in calls):
                return result.replace(status=Status.REJECTED, reason="timing: the re-check sample is malformed")
            refs = self._recheck_reference(calls, nonce)
            for call, entry in zip(calls, kept):
                why = judge.compare_all(entry.get("outputs"), refs[call], self.settings.atol, self.settings.rtol)
                if why:
                    return result.replace(status=Status.INCORRECT,
                                          reason=f"timed call {call} (re-checked after timing): {why}")
            med, iqr = median_iqr(times)
            speedup = ref["median_ms"] / med if med > 0 else None
            return result.replace(runtime_ms=med, runtime_iqr_ms=iqr, reference_runtime_ms=ref["median_ms"],
                                  speedup=speedup, timed_calls=len(times))
        finally:
            shutil.rmtree(work, ignore_errors=True)

    @staticmethod
    def _timer_cross_check(times: list[float], phase_ms: float, marks, nonce: str) -> str | None:
        """Hack #8: the candidate's process reports its times; kopt's own clock brackets the phase (KOPT-MARK
        lines stamped on arrival). The reported phase must match kopt's window, and the calls fit in it."""
        starts = [t for t, line in marks if line == f"KOPT-MARK {nonce} start"]
        ends = [t for t, line in marks if line == f"KOPT-MARK {nonce} end"]
        if not starts or not ends:
            return "the timing phase markers are missing"
        window_ms = (ends[0] - starts[0]) * 1e3
        if sum(times) > phase_ms * 1.01 + 1.0:
            return f"the calls add up to {sum(times):.1f} ms, more than the {phase_ms:.1f} ms phase they ran in"
        if phase_ms < 0.5 * window_ms - 50.0:
            return f"the reported phase is {phase_ms:.1f} ms but kopt's clock saw {window_ms:.1f} ms"
        return None


__all__ = ["BuildResult", "EvalSettings", "Evaluator", "resolve_target"]
