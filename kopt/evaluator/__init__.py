"""kopt's evaluator: static gate -> compile -> correctness -> timing, each untrusted step in its own sandboxed
process (docs/design.md "The evaluator"; hacking-and-sandbox.md §4-5).

Candidate code never runs in kopt's process and never sees reference outputs: the reference child writes
them to a file that kopt reads back and deletes before any candidate process starts; candidate children ship
raw outputs and timings, and judge.py decides here.

Builds are build.py's (Builder): captured in a sandbox, compiled in another that runs no candidate code, kept
in a content-addressed store under config.build_dir() and re-hashed before every session. Check and time run
as child sessions (session.py, calls.py over kopt_child.harness): everything a candidate's process says is a
claim; verdicts, sentences, hashes and timings are decided here.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import sys
import threading
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
VERDICT_VERSION = "5"
SPARE_IDLE_S = 3600.0  # how long a spare session may wait for its candidate
SESSION_STARTUP_S = 60.0  # a child session's start-up allowance (process, torch import, extension load)
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
    threads: int | None = None  # CPU threads for candidate AND reference (fixed); None -> all cores but one
    min_calls: int = 100  # timing: >= min_calls calls or >= min_time_s, whichever first (§3 "Statistics")
    min_time_s: float = 1.0
    max_rss_mb: int = 16384
    compile_baseline: bool = True  # also time the reference under torch.compile (speedup_vs_compile)

    def key(self) -> str:
        """A stable string of the settings that change verdicts (everything but `jobs`)."""
        d = dataclasses.asdict(self)
        d.pop("jobs")
        d["threads"] = self.resolved_threads()
        return json.dumps(d, sort_keys=True)

    def resolved_threads(self) -> int:
        # One core stays free for kopt's own process: a child using every core shares one with the parent's
        # reader and watchdog threads, and a parallel region one of whose threads is descheduled stalls for
        # a scheduler tick inside the timed call (3-9 ms on a 2-vCPU VM, on a 0.5 ms reference call).
        from kopt.config import usable_cores

        return int(self.threads) if self.threads else max(1, usable_cores() - 1)


from kopt.evaluator.build import BuildResult  # noqa: E402 - re-exported: the compile stage's result


def resolve_target(target: str, *, compile_only: bool = False) -> str:
    """ "auto" -> "cuda" if torch sees a GPU, else "cpu". "cuda" on a machine without a CUDA device is a
    ConfigError unless only compiling (Evaluator.build): checking or timing there cannot mean anything."""
    if target == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if target not in ("cpu", "cuda"):
        raise ConfigError(f"unknown target {target!r}", "use --target auto, cuda or cpu")
    if target == "cuda" and not compile_only and not _cuda_device():
        raise ConfigError("no CUDA device here", "use --target cpu")
    return target


def _cuda_device() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def machine_fingerprint(target: str) -> dict[str, str]:
    """What Evaluator.fingerprint() reports, without building an Evaluator: device, toolchain, isolation.

    Cheap (no reference run, no compile), so caches can key verdicts on it before deciding whether anything
    needs evaluating at all.
    """
    from kopt.evaluator.sandbox import detect_isolation
    from kopt.evaluator.targets import get_target

    target = resolve_target(target, compile_only=True)
    t = get_target(target)
    return {
        "evaluator": VERDICT_VERSION,
        "target": target,
        "device": t.device_name(),
        "toolchain": json.dumps(t.toolchain(), sort_keys=True),
        "isolation": detect_isolation(),
    }


def _static_check(source: str, target: str):
    from kopt.evaluator.static import check_source  # never skipped: a missing gate is an error, not a pass

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

        target = resolve_target(settings.target, compile_only=True)  # build() works without a device
        if settings.trials < 5:
            raise ConfigError(f"trials={settings.trials} is too few", "use at least 5 correctness trials")
        self.task = task
        self.settings = dataclasses.replace(settings, target=target)
        self.progress = progress
        self.target = get_target(target)
        self.isolation = detect_isolation()
        self.home = kopt_home()
        self.build_dir = build_dir()  # shared, content-addressed (build.py's store lives under it)
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
        self._ref_check_s = 0.0
        self._ref_oracle: list = []
        self._ref_fan_in: list = []
        self._bandwidth = None  # floor.Bandwidth, False when it could not be measured; measured once, lazily
        self._compiled_time: dict | None = None
        self._spares: list = []
        self._spawner: cf.ThreadPoolExecutor | None = None
        self._compile_note = ""
        from kopt.evaluator.build import Builder

        self.builder = Builder(target=target, settings=self.settings, base=self._base)
        self._closed = False

    # ---- public API ---------------------------------------------------------------------------------

    def check(self, sources: Sequence[str], on_result: OnResult | None = None) -> list[EvalResult]:
        """Static gate -> compile (parallel, settings.jobs) -> correctness (fresh process each). No timing."""
        self._require_device()
        n = len(sources)
        results: list[EvalResult | None] = [None] * n
        counts = {"compile": 0, "check": 0}
        self.progress("compile", 0, n)
        self.progress("check", 0, n)

        def bump(stage: str) -> None:
            with self._lock:
                counts[stage] += 1
                self.progress(stage, counts[stage], n)

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

    def evaluate(self, sources: Sequence[str], on_result: OnResult | None = None) -> list[EvalResult]:
        """check, then time every correct one. on_result fires once per candidate with its final verdict."""
        checked = self.check(sources, on_result=lambda i, r: on_result(i, r) if on_result and not r.correct else None)
        timed = self.time(sources, checked)
        if on_result:
            for i, r in enumerate(timed):
                if checked[i].correct:
                    on_result(i, r)
        return timed

    def prepare(self) -> None:
        """Run the reference first (cheap): a task whose reference fails raises TaskError with the real cause
        before any candidate is compiled."""
        self._require_device()
        self._ensure_reference()

    def _require_device(self) -> None:
        if self.settings.target == "cuda" and not _cuda_device():
            raise ConfigError("no CUDA device here", "use --target cpu")

    def build(self, sources: Sequence[str]) -> list[BuildResult]:
        """The static gate and compile stage alone (e.g. CUDA candidates on a machine without a GPU)."""
        with cf.ThreadPoolExecutor(max_workers=max(1, self.settings.jobs)) as pool:
            return list(pool.map(self._build, sources))

    def fingerprint(self) -> dict[str, str]:
        return machine_fingerprint(self.settings.target)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close_spares()
            if self._spawner is not None:
                self._spawner.shutdown(wait=False)
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

    # ---- reference ----------------------------------------------------------------------------------

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
        self.ref_dir.mkdir(parents=True, exist_ok=True)
        res, result = self._spawn("kopt.evaluator.reference", "build", spec, self.ref_dir,
                                  max(self.settings.run_timeout_s, 60.0) * 2, readable=[self.task_dir])
        ref_file = self.ref_dir / "reference.pt"
        try:
            if not result or not result.get("ok"):
                why = (result or {}).get("error") or res.describe()
                raise TaskError(f"running the reference {self.task.target} failed: {why}",
                                "run `kopt init` on it or shrink it with --set NAME=VALUE")
            loaded = torch.load(ref_file, weights_only=True)  # the trusted reference child's file
            outputs, oracle = loaded["outputs"], loaded.get("oracle") or []
            fan_in = loaded.get("fan_in") or []
            inputs = torch.load(self.ref_dir / "inputs.pt", weights_only=True)["trials"]
        finally:
            # Reference outputs live only in kopt's memory: never on disk while a candidate runs (hack #17).
            with contextlib.suppress(FileNotFoundError):
                ref_file.unlink()
        with self._lock:
            self._ref_outputs, self._ref_inputs = outputs, inputs
            # The float64 oracle rule holds only at kopt's own tolerances (a user who loosened them chose).
            loosened = self.settings.atol is not None or self.settings.rtol is not None
            self._ref_oracle = [None if loosened else o for o in oracle] + [None] * (len(outputs) - len(oracle))
            self._ref_fan_in = list(fan_in) + [None] * (len(outputs) - len(fan_in))
            self._ref_tags = list(result.get("tags", []))
            self._ref_check_s = float(result.get("check_s", 0.0))
            self._ref_warnings = list(result.get("warnings", []))

    # ---- compile ----------------------------------------------------------------------------------

    def _build(self, source: str) -> BuildResult:
        """The build stage (build.py): static gate, capture, flags, sandboxed compile, content-addressed store."""
        return self.builder.build(source)

    @staticmethod
    def _binary_sha(build: BuildResult) -> str | None:
        if not build.extensions:
            return None
        if len(build.extensions) == 1:
            return build.extensions[0].sha256
        return _sha("".join(sorted(e.sha256 for e in build.extensions)))

    # ---- child sessions (kopt_child.harness over session.py) ----------------------------------------

    def _trials(self):
        from kopt.evaluator.calls import Trial

        return [Trial(model=i, inputs=list(t["inputs"]), outputs=self._ref_outputs[i],
                      tag=self._ref_tags[i] if i < len(self._ref_tags) else "")
                for i, t in enumerate(self._ref_inputs)]

    def _model_specs(self) -> tuple:
        from kopt.evaluator.session import ModelSpec

        specs = []
        for t in self._ref_inputs:
            init = t["init"]
            args, kwargs = ((), dict(init)) if isinstance(init, dict) else (tuple(init), {})
            specs.append(ModelSpec(args=args, kwargs=kwargs, seed=int(t["seed"]),
                                   state=tuple(sorted(t.get("state_dict", {}).items()))))
        return tuple(specs)

    def _max_reveal_bytes(self) -> int:
        """What one revealed call may carry: 4x the largest reference call's outputs and inputs, + 1 MiB."""
        from kopt.evaluator.session import tensor_bytes

        big = 0
        for t, outs in zip(self._ref_inputs, self._ref_outputs):
            n = sum(len(tensor_bytes(x)) for x in list(t["inputs"]) + list(outs) if hasattr(x, "dtype"))
            big = max(big, n)
        return 4 * big + (1 << 20)

    def _run_timeout(self, timing: bool = False) -> float:
        """A session's budget from the reference's own measured check time, with a floor (never a flat 120 s):
        start-up (process + torch import) + max(10 s, 50 x the reference's check calls) (+ the timing loop),
        capped by --timeout."""
        work = max(10.0, 50.0 * self._ref_check_s)
        if timing:
            work += 4 * self.settings.min_time_s + 0.2 * max(self.settings.min_calls, 20) + 50.0 * self._ref_check_s
        return min(self.settings.run_timeout_s, SESSION_STARTUP_S + work) if not timing else SESSION_STARTUP_S + work

    def _session(self, source: str | None, build: BuildResult | None, work: Path, timing: bool = False,
                 compiled: bool = False):
        """One child session: the candidate's ModelNew (source) or the trusted reference's Model (None). Check
        and time sessions of a candidate get the same argv, environment and init message."""
        from kopt.evaluator.session import Session, SessionFailure, SessionSpec

        # Timing sessions are started fresh and nothing is spawned while they run: a spare importing torch
        # beside a timed call takes a core from it and stretches kopt's intervals (2 cores: all of them).
        spare = self._take_spare() if source is not None and not timing else None
        if spare is not None:
            work = spare.work  # the spare's own dir, bound into it at spawn
        work.mkdir(parents=True, exist_ok=True)
        readable: list[Path] = []
        if source is None:
            module, cls, what = str(self.task_dir / "task.py"), "Model", f"the reference {self.task.target}"
            readable.append(self.task_dir)
            if self.task.search_path and Path(self.task.search_path).is_dir():
                readable.append(Path(self.task.search_path))
            table: tuple = ()
        else:
            (work / "candidate.py").write_text(source)
            module, cls, what = str(work / "candidate.py"), "ModelNew", "the candidate"
            # Each .so is copied into the session's own dir and its copy re-hashed there: the child sees no
            # build store at all, and only kopt's harness runs in it before the copies are loaded.
            (work / "ext").mkdir(exist_ok=True)
            rows = []
            for row, ext in zip(self.builder.child_table(build), [e for e in build.extensions if not e.compile_only]):
                copy = work / "ext" / f"{ext.name}.so"
                shutil.copyfile(ext.so_path, copy)
                if hashlib.sha256(copy.read_bytes()).hexdigest() != ext.sha256:
                    if spare is not None:
                        spare.close()
                    raise SessionFailure(Status.REJECTED, "the compiled extension changed since it was built")
                rows.append(dict(row, so=str(copy)))
            table = tuple(rows)
        spec = SessionSpec(module=module, cls=cls, models=self._model_specs(), extensions=table, ext_by_key=True,
                           threads=self.settings.resolved_threads(), device=self._device(),
                           search_path=self.task.search_path if source is None else None, what=what,
                           compile=compiled)
        env = self._session_env()
        writable: list[Path] = []
        timeout = self._run_timeout(timing)
        if source is None:  # the trusted reference is not held to a candidate's budget (a loaded machine)
            timeout = max(timeout, 2 * self.settings.run_timeout_s)
        if spare is not None:
            return spare.assign(spec, timeout)
        if compiled:  # trusted reference only: Inductor needs the compiler and its own cache, never a candidate's
            cache = self.build_dir.parent / (self.build_dir.name + "-inductor")
            cache.mkdir(parents=True, exist_ok=True)
            writable.append(cache)
            env["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
            timeout += self.settings.compile_timeout_s
        return Session(spec, work=work, readable=readable, timeout_s=timeout, writable=writable, toolchain=compiled,
                       max_rss_mb=self.settings.max_rss_mb, env=env, gpu=self.settings.target == "cuda",
                       cpu_budget_s=self._run_timeout(True) + (self.settings.compile_timeout_s if compiled else 0))

    def _close_spares(self) -> None:
        with self._lock:
            spares, self._spares = self._spares, []
        for spare in spares:
            spare.close()

    def _session_env(self) -> dict[str, str]:
        env = {"OMP_NUM_THREADS": str(self.settings.resolved_threads())}
        env.update(self.target.build_env())
        return env

    def _spawn_spare(self):
        from kopt.evaluator.session import Session

        work = self.root / "work" / f"session-{uuid.uuid4().hex[:10]}"
        return Session(None, work=work, timeout_s=SPARE_IDLE_S + self._run_timeout(True),
                       max_rss_mb=self.settings.max_rss_mb, env=self._session_env(), gpu=False,
                       cpu_budget_s=self._run_timeout(True), threads=self.settings.resolved_threads(),
                       remove_work=True)

    def _take_spare(self):
        """A candidate session started ahead of need (process start and torch import off the critical path):
        every candidate still gets a fresh process of its own, with the same argv, environment and mounts.
        CPU only (a GPU device runs one child at a time)."""
        if self.settings.target != "cpu" or self._closed:
            return None
        # Spawned from one long-lived thread: the sandbox kills a child when the thread that started it exits
        # (bwrap --die-with-parent is per thread), and check()'s pool threads end before time() runs.
        with self._lock:
            if self._spawner is None:
                self._spawner = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kopt-spawner")
            spare = self._spares.pop(0) if self._spares else None
            while len(self._spares) < max(1, self.settings.jobs):
                self._spares.append(self._spawner.submit(self._spawn_spare).result())
        return spare or self._spawner.submit(self._spawn_spare).result()

    def _time_compiled_reference(self, eager: dict) -> dict | None:
        """The reference under torch.compile (default mode), timed once per evaluator like eager; its compile
        time (the first call) is reported apart and never inside a timed call. None (with a note, once) when it
        does not compile here."""
        from kopt.evaluator.calls import per_call_ms, timed_run
        from kopt.evaluator.session import SessionFailure
        from kopt.evaluator.targets import median_iqr

        if not self.settings.compile_baseline:
            return None
        if self._compiled_time is not None or self._compile_note:
            return self._compiled_time
        work = self.root / "work" / f"reference-compile-{uuid.uuid4().hex[:6]}"
        try:
            with self._session(None, None, work, timing=True, compiled=True) as s:
                s.start()
                run = timed_run(s, self._trials(), self._timed_trials(), min_calls=self.settings.min_calls,
                                min_time_s=self.settings.min_time_s, max_bytes=self._max_reveal_bytes(), reveal=False)
        except SessionFailure as f:
            self._compile_note = f"torch.compile baseline: the reference did not compile here ({f.reason}); eager only"
            return None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        med, iqr = median_iqr(per_call_ms(run, eager["overhead_ns"]))
        self._compiled_time = {"median_ms": med, "iqr_ms": iqr, "compile_s": run.warmup[0].interval_ns / 1e9}
        return self._compiled_time

    def _verify(self, build: BuildResult) -> str | None:
        """Re-hash every .so before a session (hashes a child reports are never used)."""
        return self.builder.verify(build)

    # ---- correctness --------------------------------------------------------------------------------

    def _check_one(self, i: int, source: str, build: BuildResult) -> EvalResult:
        from kopt.evaluator.calls import check_run
        from kopt.evaluator.session import SessionFailure

        base = dict(binary_sha256=self._binary_sha(build), compile_s=build.compile_s,
                    warnings=tuple(build.warnings) + tuple(self._ref_warnings), trials_total=len(self._ref_outputs))
        why = self._verify(build)
        if why:
            return self._base(source, status=Status.REJECTED, reason=why, **base)
        work = self.root / "work" / f"{i}-{_sha(source)[:12]}-check-{uuid.uuid4().hex[:6]}"
        try:
            try:
                with self._session(source, build, work) as s:
                    s.start()
                    revealed = check_run(s, self._trials(), self._max_reveal_bytes())
            except SessionFailure as f:
                return self._base(source, status=f.status, reason=f.reason, transient=f.transient, **base)
            except Exception as e:  # noqa: BLE001 - one candidate never ends a batch
                return self._base(source, status=Status.CRASHED, **base,
                                  reason=f"kopt could not finish the check session ({type(e).__name__})")
            status, reason, passed, notes = self._judge_check(revealed)
            base["warnings"] = base["warnings"] + tuple(notes)
            return self._base(source, status=status, reason=reason, trials_passed=passed, **base)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _judge_call(self, r, refs, label: str, oracle=None, fan_in=None) -> tuple[Status, str] | None:
        """One revealed call: the extension ran, outputs match `refs` (and the float64 `oracle` when there
        is one), no alias, inputs unchanged."""
        from kopt.evaluator import judge

        if r.record.ext_calls == 0:
            return (Status.REJECTED, f"{label}: forward never called its compiled extension "
                    "(the work is done by torch, not the kernel)")
        why = judge.compare_all(r.outs, refs, self.settings.atol, self.settings.rtol, oracle=oracle,
                                fan_in=fan_in if oracle is not None else None)
        if why:
            return Status.INCORRECT, f"{label}: {why}"
        if r.record.alias:
            return Status.INCORRECT, f"{label}: an output aliases an input tensor"
        sent = [x for x in r.inputs if hasattr(x, "dtype")]
        why = judge.same_inputs(r.after, sent)
        if why:
            return Status.INCORRECT, f"{label}: {why}"
        return None

    def _oracle(self, trial: int):
        return self._ref_oracle[trial] if trial < len(self._ref_oracle) else None

    def _fan_in(self, trial: int):
        """Trial `trial`'s per-output fan-in; later trials of one shape reuse the first's (oracle.run_oracle)."""
        own = self._ref_fan_in[trial] if trial < len(self._ref_fan_in) else None
        if own and any(f is not None for f in own):
            return own
        first = self._ref_fan_in[0] if self._ref_fan_in else None
        same = (trial < len(self._ref_outputs) and self._ref_outputs and
                [tuple(o.shape) for o in self._ref_outputs[trial]] == [tuple(o.shape) for o in self._ref_outputs[0]])
        return first if same else own

    def _judge_check(self, revealed) -> tuple[Status, str, int, list[str]]:
        from kopt.evaluator import judge

        notes: list[str] = []
        refs = self._ref_outputs
        first: dict[int, list] = {}
        passed: set[int] = set()
        for r in revealed:
            tag = self._ref_tags[r.trial] if r.trial < len(self._ref_tags) else ""
            label = f"trial {r.trial} ({tag})" if tag else f"trial {r.trial}"
            if r.kind == "ghost":
                if judge.compare_all(r.outs, refs[r.trial], self.settings.atol, self.settings.rtol) is None:
                    return (Status.REJECTED, "decoy: the output stays correct when the extension's results are "
                            "replaced by NaN, so torch does the work", len(passed), notes)
                continue
            if r.pass_no:
                label += " (second pass, the same buffers refilled)"
            bad = self._judge_call(r, refs[r.trial], label, self._oracle(r.trial), self._fan_in(r.trial))
            if bad:
                return bad[0], bad[1], len(passed), notes
            if r.pass_no == 0:
                first[r.trial] = r.outs
            elif not judge.bitwise_equal(first.get(r.trial), r.outs) and not notes:
                notes.append("nondeterministic: two runs on the same input differ bitwise (both pass)")
            if r.pass_no:
                passed.add(r.trial)
        ops = max((r.record.lib_ops for r in revealed if r.kind == "check"), default=0)
        if ops:
            notes.append(f"library compute: forward ran {ops} torch op(s) per call besides its extension")
        return Status.CORRECT, "", len(passed), notes

    # ---- timing -------------------------------------------------------------------------------------

    def _timed_trials(self) -> list[int]:
        # Timed calls are fresh draws around the first trial's inputs, all on that trial's model: one instance
        # sees every timed call, so a kernel that goes stale after N calls on an instance (N larger than the
        # check run's calls per instance) is stale inside the revealed calls. Each trial has its own model.
        return [next(i for i, tag in enumerate(self._ref_tags) if not tag.startswith("shape variant"))]

    def _time_reference(self, fresh: bool = False, extra: Sequence = ()) -> dict:
        """The trusted reference timed through the same harness and protocol as every candidate; `extra`
        (trial, inputs) calls run after its timed loop give the expected outputs of a candidate's revealed
        calls, computed on exactly those inputs."""
        from kopt.evaluator.calls import cores_used, overhead_ns, per_call_ms, timed_run
        from kopt.evaluator.session import SessionFailure
        from kopt.evaluator.targets import median_iqr

        if self._ref_time is not None and not fresh and not extra:
            return self._ref_time
        work = self.root / "work" / f"reference-time-{uuid.uuid4().hex[:6]}"
        try:
            with self._session(None, None, work, timing=True) as s:
                s.start()
                run = timed_run(s, self._trials(), self._timed_trials(), min_calls=self.settings.min_calls,
                                min_time_s=self.settings.min_time_s, max_bytes=self._max_reveal_bytes(),
                                extra=list(extra), reveal=False)
        except SessionFailure as f:
            raise TaskError(f"timing the reference {self.task.target} failed: {f.reason}",
                            "raise --timeout or shrink the task with --set NAME=VALUE") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        overhead = overhead_ns(run)
        med, iqr = median_iqr(per_call_ms(run, overhead))
        self._ref_time = {"median_ms": med, "iqr_ms": iqr, "overhead_ns": overhead, "cores": cores_used(run),
                          "run": run, "extra_order": [r.outs for r in run.extra]}
        return self._ref_time

    def time(self, sources: Sequence[str], results: Sequence[EvalResult],
             on_result: OnResult | None = None) -> list[EvalResult]:
        """Time the given correct candidates one at a time, nothing else running; others pass through.

        A/B/A: the reference is timed again right after each candidate (the same run computes the expected
        outputs of the candidate's revealed calls), and the speedup is against the mean of the two reference
        rounds around it, so load that comes and goes on the machine cannot favour one side."""
        if len(sources) != len(results):
            raise ValueError("time() needs one result per source")
        self._require_device()
        self._ensure_reference()
        self._close_spares()  # an idle or half-started spare must not share the machine with timed calls
        out = list(results)
        todo = [i for i, r in enumerate(results) if r.correct]
        self.progress("time", 0, len(todo))
        if todo:
            before = self._time_reference()
            compiled = self._time_compiled_reference(before)
        from kopt.evaluator.baseline import baseline_changes, baseline_snapshot

        for done, i in enumerate(todo, 1):
            # A clean baseline before each reference round: a candidate that leaves processes, shared memory
            # or edited trusted files behind could slow the reference timed after it and so raise its own speedup.
            clean = baseline_snapshot(watch=[str(self.task_dir)])
            run, failed = self._time_candidate(sources[i], results[i], before)
            left = baseline_changes(clean)
            extra = [(r.trial, r.inputs) for r in run.revealed if r.kind == "timed"] if run else []
            after = self._time_reference(fresh=True, extra=extra)
            timed = failed or self._judge_timed(results[i], run, before, after)
            if left and timed.correct:
                timed = timed.replace(status=Status.REJECTED, runtime_ms=None, speedup=None, reason=(
                    "timing: it left state behind that could slow the reference timed after it: " + "; ".join(left))[:600])
            if timed.runtime_ms and compiled:
                timed = timed.replace(compile_reference_runtime_ms=compiled["median_ms"],
                                      speedup_vs_compile=compiled["median_ms"] / timed.runtime_ms)
            elif timed.runtime_ms and self._compile_note:
                timed = timed.replace(warnings=tuple(timed.warnings) + (self._compile_note,))
            before = after
            out[i] = timed
            self.progress("time", done, len(todo))
            if on_result:
                on_result(i, out[i])
        return out

    def _speed_of_light(self, call, runtime_ms: float) -> str | None:
        """A flag (never a verdict) when a time is under what this machine needs to move the call's bytes
        (floor.py: the measured copy bandwidth): either noise, or work done outside the timed call."""
        from kopt.evaluator import floor

        if call is None:
            return None
        try:
            if self._bandwidth is None:
                self._bandwidth = floor.bandwidth(self._device(), self.settings.resolved_threads()) or False
            if not self._bandwidth:
                return None
            limit = floor.floor_ms(floor.bytes_moved(list(call.inputs), list(call.outs)), self._bandwidth)
            why = floor.implausible(runtime_ms, limit)
        except Exception:  # noqa: BLE001 - no floor means no flag, never a lost verdict
            return None
        return f"speed of light: {why}" if why else None

    def _time_candidate(self, source: str, result: EvalResult, ref: dict):
        """(the timed run, None) or (None, the verdict when the session failed)."""
        from kopt.evaluator.calls import timed_run
        from kopt.evaluator.session import SessionFailure

        build = self._build(source)
        if build.failure is not None:
            return None, build.failure
        why = self._verify(build)
        if why:
            return None, result.replace(status=Status.REJECTED, reason=f"timing: {why}")
        work = self.root / "work" / f"{_sha(source)[:12]}-time-{uuid.uuid4().hex[:6]}"
        try:
            with self._session(source, build, work, timing=True) as s:
                s.start()
                run = timed_run(s, self._trials(), self._timed_trials(), min_calls=self.settings.min_calls,
                                min_time_s=self.settings.min_time_s, max_bytes=self._max_reveal_bytes())
            return run, None
        except SessionFailure as f:
            return None, result.replace(status=f.status, reason=f"timing: {f.reason}", transient=f.transient)
        except Exception as e:  # noqa: BLE001 - one candidate never ends a batch
            return None, result.replace(status=Status.CRASHED,
                                        reason=f"timing: kopt could not finish the session ({type(e).__name__})")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _judge_timed(self, result: EvalResult, run, before: dict, after: dict) -> EvalResult:
        from kopt.evaluator.calls import clock_disagrees, cores_used, flush_skipped, overhead_ns, per_call_ms
        from kopt.evaluator.targets import median_iqr

        timed = [r for r in run.revealed if r.kind == "timed"]
        expected = after["extra_order"]
        if len(expected) != len(timed):
            return result.replace(status=Status.CRASHED, reason="timing: the reference did not re-run the revealed calls")
        for r in run.revealed:
            if r.kind != "check":
                continue
            tag = self._ref_tags[r.trial] if r.trial < len(self._ref_tags) else ""
            bad = self._judge_call(r, self._ref_outputs[r.trial], f"check call on trial {r.trial} ({tag}) during timing",
                                   self._oracle(r.trial), self._fan_in(r.trial))
            if bad:
                return result.replace(status=bad[0], reason=bad[1])
        for r, refs in zip(timed, expected):
            bad = self._judge_call(r, refs, f"timed call {r.call} (revealed after timing)")
            if bad:
                return result.replace(status=bad[0], reason=bad[1])
        if not run.calls:
            return result.replace(status=Status.CRASHED, reason="timing: no timed calls")
        skipped = flush_skipped(run, [before["run"], after["run"]])
        if skipped:
            return result.replace(status=Status.REJECTED, reason=f"timing: {skipped}")
        # One overhead for the whole A/B/A triple, from both reference rounds' calls: a per-round estimate
        # moves by the IPC noise of a few calls (0.5-0.9 ms between rounds on a 2-vCPU VM), which on a ~1 ms call
        # decided the ranking; subtracted alike from the reference and the candidate, what is left cancels.
        overhead = overhead_ns(before["run"], after["run"])
        # The runtime below comes from kopt's own intervals (the child's clock refines each call by +-5% at
        # most), so a child whose clock disagrees gains nothing: say so, never reject. Rejecting here threw away
        # honest kernels whenever the machine was loaded enough to stretch kopt's intervals.
        clock_note = clock_disagrees(run, overhead)
        threads = self.settings.resolved_threads()
        cores, ref_cores = cores_used(run), max(before["cores"], after["cores"])
        if cores > max(threads, ref_cores) * 1.5 + 0.5:
            return result.replace(status=Status.REJECTED, reason=(
                f"timing: the candidate's process used {cores:.1f} cores during timing with --threads {threads} "
                f"(the reference used {ref_cores:.1f}); its CPU time is read by kopt"))
        med, iqr = median_iqr(per_call_ms(run, overhead))
        notes: tuple[str, ...] = (f"timing: {clock_note}",) if clock_note else ()
        if not med > 0 and clock_note:  # the child's clock is all there is, and it disagrees with kopt's
            return result.replace(status=Status.REJECTED, reason=f"timing: {clock_note}; the speed cannot be credited")
        if not med > 0:
            # Below kopt's clock resolution (the harness's overhead noise is larger than the call): the child's
            # own time, bounded by kopt's raw interval of each call, with a note saying so.
            med, iqr = median_iqr([min(c.child_ns, c.interval_ns) / 1e6 for c in run.calls])
            notes = notes + ("timing: the call is below kopt's clock resolution here (harness overhead "
                     f"{overhead / 1e6:.3f} ms): timed by the child's clock, bounded by kopt's interval",)
        if not med > 0:  # nothing measurable at all: never credited with a time
            return result.replace(status=Status.REJECTED, reason=(
                f"timing: kopt's clock saw no time per call beyond the harness's own overhead "
                f"({overhead / 1e6:.3f} ms, measured on the reference): the speed cannot be credited"))
        ref_ms = statistics.fmean(median_iqr(per_call_ms(r["run"], overhead))[0] for r in (before, after))
        slow_note = self._speed_of_light(timed[0] if timed else None, med)
        if slow_note:
            notes = notes + (slow_note,)
        return result.replace(runtime_ms=med, runtime_iqr_ms=iqr, reference_runtime_ms=ref_ms,
                              speedup=ref_ms / med if med > 0 else None, timed_calls=len(run.calls),
                              warnings=tuple(result.warnings) + notes)


__all__ = ["BuildResult", "EvalSettings", "Evaluator", "resolve_target"]
