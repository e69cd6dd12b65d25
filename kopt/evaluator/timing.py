"""Timing: the trusted reference and each correct candidate timed one at a time, nothing else running, in
A/B/A order (reference, candidate, reference again), every runtime from intervals kopt's own process
timestamped (calls.timed_run; docs/evaluator.md "Timing").

The reference round after a candidate also re-runs the candidate's revealed timed calls on exactly their
inputs, so those calls are judged against outputs computed then, never against anything a child said.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from kopt.errors import TaskError
from kopt.records import EvalResult, Progress, Status


class Timer:
    def __init__(self, *, task, task_dir: Path, root: Path, settings, launcher, builder,
                 reference: Callable, progress: Progress):
        self.task, self.task_dir, self.root, self.settings = task, task_dir, root, settings
        self.launcher, self.builder, self.reference, self.progress = launcher, builder, reference, progress
        self.ref_time: dict | None = None  # the first reference round, reused as the A of the first A/B/A
        self.compiled_time: dict | None = None
        self.compile_note = ""  # set once when torch.compile fails on the reference here
        self._bandwidth = None  # floor.Bandwidth, False when it could not be measured; measured once, lazily

    def time(self, sources: Sequence[str], results: Sequence[EvalResult], on_result=None) -> list[EvalResult]:
        """A/B/A: the reference is timed again right after each candidate (the same run computes the expected
        outputs of the candidate's revealed calls), and the speedup is against the mean of the two reference
        rounds around it, so load that comes and goes on the machine cannot favour one side."""
        from kopt.evaluator import verdicts
        from kopt.evaluator.baseline import baseline_changes, baseline_snapshot

        ref = self.reference()
        self.launcher.close_spares()  # an idle or half-started spare must not share the machine with timed calls
        out = list(results)
        todo = [i for i, r in enumerate(results) if r.correct]
        self.progress("time", 0, len(todo))
        if todo:
            before = self.time_reference()
            compiled = self.time_compiled_reference(before)
        for done, i in enumerate(todo, 1):
            # A clean baseline before each reference round: a candidate that leaves processes, shared memory
            # or edited trusted files behind could slow the reference timed after it and so raise its own speedup.
            clean = baseline_snapshot(watch=[str(self.task_dir)])
            run, failed = self._time_candidate(sources[i], results[i])
            left = baseline_changes(clean)
            extra = [(r.trial, r.inputs) for r in run.revealed if r.kind == "timed"] if run else []
            after = self.time_reference(fresh=True, extra=extra)
            timed = failed or verdicts.judge_timed(
                results[i], run, before, after, ref, atol=self.settings.atol, rtol=self.settings.rtol,
                threads=self.settings.resolved_threads(), floor_note=self._speed_of_light,
                cpu=self.launcher.device() == "cpu")
            if left and timed.correct:
                timed = timed.replace(status=Status.REJECTED, runtime_ms=None, speedup=None, reason=(
                    "timing: it left state behind that could slow the reference timed after it: " + "; ".join(left))[:600])
            if timed.runtime_ms and compiled:
                timed = timed.replace(compile_reference_runtime_ms=compiled["median_ms"],
                                      speedup_vs_compile=compiled["median_ms"] / timed.runtime_ms)
            elif timed.runtime_ms and self.compile_note:
                timed = timed.replace(warnings=tuple(timed.warnings) + (self.compile_note,))
            before = after
            out[i] = timed
            self.progress("time", done, len(todo))
            if on_result:
                on_result(i, out[i])
        return out

    def _run(self, session, ref, **kw):
        from kopt.evaluator.calls import timed_run

        return timed_run(session, ref.trials(), ref.timed_trials(), min_calls=self.settings.min_calls,
                         min_time_s=self.settings.min_time_s, max_bytes=ref.max_reveal_bytes(), **kw)

    def time_reference(self, fresh: bool = False, extra: Sequence = ()) -> dict:
        """The trusted reference timed through the same harness and protocol as every candidate; `extra`
        (trial, inputs) calls run after its timed loop give the expected outputs of a candidate's revealed
        calls, computed on exactly those inputs."""
        from kopt.evaluator.calls import cores_used, overhead_ns, per_call_ms
        from kopt.evaluator.session import SessionFailure
        from kopt.evaluator.targets import median_iqr

        if self.ref_time is not None and not fresh and not extra:
            return self.ref_time
        ref = self.reference()
        work = self.root / "work" / f"reference-time-{uuid.uuid4().hex[:6]}"
        try:
            with self.launcher.session(None, None, work, ref, timing=True) as s:
                s.start()
                run = self._run(s, ref, extra=list(extra), reveal=False)
        except SessionFailure as f:
            raise TaskError(f"timing the reference {self.task.target} failed: {f.reason}",
                            "raise --timeout or shrink the task with --set NAME=VALUE") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        overhead = overhead_ns(run)
        med, iqr = median_iqr(per_call_ms(run, overhead))
        self.ref_time = {"median_ms": med, "iqr_ms": iqr, "overhead_ns": overhead, "cores": cores_used(run),
                         "run": run, "extra_order": [r.outs for r in run.extra]}
        return self.ref_time

    def time_compiled_reference(self, eager: dict) -> dict | None:
        """The reference under torch.compile (default mode), timed once per evaluator like eager; its compile
        time (the first call) is reported apart and never inside a timed call. None (with a note, once) when it
        does not compile here."""
        from kopt.evaluator.calls import per_call_ms
        from kopt.evaluator.session import SessionFailure
        from kopt.evaluator.targets import median_iqr

        if not self.settings.compile_baseline:
            return None
        if self.compiled_time is not None or self.compile_note:
            return self.compiled_time
        ref = self.reference()
        work = self.root / "work" / f"reference-compile-{uuid.uuid4().hex[:6]}"
        try:
            with self.launcher.session(None, None, work, ref, timing=True, compiled=True) as s:
                s.start()
                run = self._run(s, ref, reveal=False)
        except SessionFailure as f:
            self.compile_note = f"torch.compile baseline: the reference did not compile here ({f.reason}); eager only"
            return None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        med, iqr = median_iqr(per_call_ms(run, eager["overhead_ns"]))
        self.compiled_time = {"median_ms": med, "iqr_ms": iqr, "compile_s": run.warmup[0].interval_ns / 1e9}
        return self.compiled_time

    def _speed_of_light(self, call, runtime_ms: float) -> str | None:
        """A flag (never a verdict) when a time is under what this machine needs to move the call's bytes
        (floor.py: the measured copy bandwidth): either noise, or work done outside the timed call."""
        from kopt.evaluator import floor

        if call is None:
            return None
        try:
            if self._bandwidth is None:
                self._bandwidth = floor.bandwidth(self.launcher.device(), self.settings.resolved_threads()) or False
            if not self._bandwidth:
                return None
            limit = floor.floor_ms(floor.bytes_moved(list(call.inputs), list(call.outs)), self._bandwidth)
            why = floor.implausible(runtime_ms, limit)
        except Exception:  # noqa: BLE001 - no floor means no flag, never a lost verdict
            return None
        return f"speed of light: {why}" if why else None

    def _time_candidate(self, source: str, result: EvalResult):
        """(the timed run, None) or (None, the verdict when the session failed)."""
        from kopt.evaluator.session import SessionFailure

        build = self.builder.build(source)
        if build.failure is not None:
            return None, build.failure
        why = self.builder.verify(build)  # re-hash every .so before a session
        if why:
            return None, result.replace(status=Status.REJECTED, reason=f"timing: {why}")
        ref = self.reference()
        work = self.root / "work" / f"{result.source_sha256[:12]}-time-{uuid.uuid4().hex[:6]}"
        try:
            with self.launcher.session(source, build, work, ref, timing=True) as s:
                s.start()
                run = self._run(s, ref)
            return run, None
        except SessionFailure as f:
            return None, result.replace(status=f.status, reason=f"timing: {f.reason}", transient=f.transient)
        except Exception as e:  # noqa: BLE001 - one candidate never ends a batch
            return None, result.replace(status=Status.CRASHED,
                                        reason=f"timing: kopt could not finish the session ({type(e).__name__})")
        finally:
            shutil.rmtree(work, ignore_errors=True)
