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
VERDICT_VERSION = "6"
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
    device: str | None = None  # cuda: the one GPU the children see (CUDA_VISIBLE_DEVICES); None: the environment's

    def key(self) -> str:
        """A stable string of the settings that change verdicts (everything but `jobs` and which of several
        identical devices ran it: the device's kind is in the machine fingerprint)."""
        d = dataclasses.asdict(self)
        d.pop("jobs")
        d.pop("device")
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


def machine_fingerprint(target: str, device_name: str | None = None) -> dict[str, str]:
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
        "device": device_name or t.device_name(),  # a chosen GPU's kind (executors/devices.py), else this one
        "toolchain": json.dumps(t.toolchain(), sort_keys=True),
        "isolation": detect_isolation(),
    }


def device_env(settings: EvalSettings) -> dict[str, str]:
    """What pins a child to its one GPU: nvidia-smi's numbering, the device named by its UUID."""
    if settings.target != "cuda" or not settings.device:
        return {}
    return {"CUDA_VISIBLE_DEVICES": settings.device, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


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

    def __init__(self, task: Task, settings: EvalSettings = EvalSettings(), progress: Progress = no_progress, *,
                 device_name: str | None = None, builder=None):
        """`device_name`: the kind of the device `settings.device` selects (executors/devices.py); `builder`:
        a Builder shared with the evaluators of the other devices (one compile per candidate)."""
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
        self.device_name = device_name or self.target.device_name()
        self.isolation = detect_isolation()
        self.home = kopt_home()
        self.build_dir = build_dir()  # shared, content-addressed (build.py's store lives under it)
        self.root = self.home / "eval" / f"{task.hash[:12]}-{uuid.uuid4().hex[:8]}"
        self.ref_dir = self.root / "reference"
        self.task_dir = self.root / "task"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._ref_lock = threading.Lock()
        self._ref = None  # reference_data.ReferenceData, loaded once (the reference child's outputs, in memory)
        from kopt.evaluator.build import Builder
        from kopt.evaluator.launch import Launcher

        self.builder = builder or Builder(target=target, settings=self.settings, base=self._base)
        self.launcher = Launcher(task=task, task_dir=self.task_dir, root=self.root, build_dir=self.build_dir,
                                 settings=self.settings, target=self.target, builder=self.builder)
        from kopt.evaluator.timing import Timer

        self.timer = Timer(task=task, task_dir=self.task_dir, root=self.root, settings=self.settings,
                           launcher=self.launcher, builder=self.builder, reference=self._ensure_reference,
                           progress=progress)
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
        return machine_fingerprint(self.settings.target, self.device_name)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.launcher.close()
            self._ref = None
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- helpers ------------------------------------------------------------------------------------

    def _base(self, source: str, **kw) -> EvalResult:
        return EvalResult(source_sha256=_sha(source), target=self.settings.target,
                          device=self.device_name, isolation=self.isolation,
                          toolchain=tuple(sorted(self.target.toolchain().items())), **kw)

    def _device(self) -> str:
        return "cuda" if self.settings.target == "cuda" else "cpu"

    def _env(self) -> dict[str, str]:
        threads = str(self.settings.resolved_threads())
        env = {"PYTHONPATH": _KOPT_ROOT, "OMP_NUM_THREADS": threads, "KOPT_HOME": str(self.home),
               "MAX_JOBS": os.environ.get("MAX_JOBS", "2")}
        env.update(self.target.build_env())
        env.update(device_env(self.settings))
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

    def _ensure_reference(self):
        with self._ref_lock:
            if self._ref is None:
                self._ref = self._build_reference()
            return self._ref

    def _build_reference(self):
        from kopt.evaluator import reference_data

        self.task.write(self.task_dir)
        spec = {"task": str(self.task_dir / "task.py"), "search_path": self.task.search_path,
                "trials": self.settings.trials, "threads": self.settings.resolved_threads(),
                "target": self.settings.target, "device": self.launcher.device()}
        self.ref_dir.mkdir(parents=True, exist_ok=True)
        res, result = self._spawn("kopt.evaluator.reference", "build", spec, self.ref_dir,
                                  max(self.settings.run_timeout_s, 60.0) * 2, readable=[self.task_dir])
        if not result or not result.get("ok"):
            # Reference outputs live only in kopt's memory: never on disk while a candidate runs (hack #17).
            with contextlib.suppress(FileNotFoundError):
                (self.ref_dir / "reference.pt").unlink()
            why = (result or {}).get("error") or res.describe()
            raise TaskError(f"running the reference {self.task.target} failed: {why}",
                            "run `kopt init` on it or shrink it with --set NAME=VALUE")
        # The float64 oracle rule holds only at kopt's own tolerances (a user who loosened them chose).
        loosened = self.settings.atol is not None or self.settings.rtol is not None
        return reference_data.load(self.ref_dir, result, loosened=loosened)

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

    def _verify(self, build: BuildResult) -> str | None:
        """Re-hash every .so before a session (hashes a child reports are never used)."""
        return self.builder.verify(build)

    # ---- correctness --------------------------------------------------------------------------------

    def _check_one(self, i: int, source: str, build: BuildResult) -> EvalResult:
        from kopt.evaluator import verdicts
        from kopt.evaluator.calls import check_run
        from kopt.evaluator.session import SessionFailure

        base = dict(binary_sha256=self._binary_sha(build), compile_s=build.compile_s,
                    warnings=tuple(build.warnings) + self._ref.warnings, trials_total=len(self._ref.outputs))
        why = self._verify(build)
        if why:
            return self._base(source, status=Status.REJECTED, reason=why, **base)
        work = self.root / "work" / f"{i}-{_sha(source)[:12]}-check-{uuid.uuid4().hex[:6]}"
        try:
            try:
                with self.launcher.session(source, build, work, self._ref) as s:
                    s.start()
                    revealed = check_run(s, self._ref.trials(), self._ref.max_reveal_bytes())
            except SessionFailure as f:
                return self._base(source, status=f.status, reason=f.reason, transient=f.transient, **base)
            except Exception as e:  # noqa: BLE001 - one candidate never ends a batch
                return self._base(source, status=Status.CRASHED, **base,
                                  reason=f"kopt could not finish the check session ({type(e).__name__})")
            status, reason, passed, notes = verdicts.judge_check(revealed, self._ref, self.settings.atol,
                                                                 self.settings.rtol)
            base["warnings"] = base["warnings"] + tuple(notes)
            return self._base(source, status=status, reason=reason, trials_passed=passed, **base)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # ---- timing (timing.py) ---------------------------------------------------------------------------

    def time(self, sources: Sequence[str], results: Sequence[EvalResult],
             on_result: OnResult | None = None) -> list[EvalResult]:
        """Time the given correct candidates one at a time, nothing else running; others pass through
        (timing.Timer.time: A/B/A against the reference, every verdict from kopt's own intervals)."""
        if len(sources) != len(results):
            raise ValueError("time() needs one result per source")
        self._require_device()
        self._ensure_reference()
        return self.timer.time(sources, results, on_result)


__all__ = ["BuildResult", "EvalSettings", "Evaluator", "resolve_target"]
