"""Verdicts from what kopt's own process saw: the calls a child revealed, judged against the reference's
data in kopt's memory, and the intervals kopt timestamped itself (docs/evaluator.md "Verdicts").

Nothing here runs candidate code or trusts a sentence from a child: a revealed call is raw outputs, inputs as
they were after the call, and the harness's record of the call (range-checked by session.py); each rule
returns a Status from kopt's closed set and a sentence kopt writes.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from kopt.evaluator.reference_data import ReferenceData
from kopt.records import EvalResult, Status


def judge_call(r, refs, label: str, atol, rtol, oracle=None, fan_in=None) -> tuple[Status, str] | None:
    """One revealed call: the extension ran, outputs match `refs` (and the float64 `oracle` when there
    is one), no alias, inputs unchanged. None when it passes."""
    from kopt.evaluator import judge

    if r.record.ext_calls == 0:
        return (Status.REJECTED, f"{label}: forward never called its compiled extension "
                "(the work is done by torch, not the kernel)")
    why = judge.compare_all(r.outs, refs, atol, rtol, oracle=oracle, fan_in=fan_in if oracle is not None else None)
    if why:
        return Status.INCORRECT, f"{label}: {why}"
    if r.record.alias:
        return Status.INCORRECT, f"{label}: an output aliases an input tensor"
    sent = [x for x in r.inputs if hasattr(x, "dtype")]
    why = judge.same_inputs(r.after, sent)
    if why:
        return Status.INCORRECT, f"{label}: {why}"
    return None


def judge_check(revealed, ref: ReferenceData, atol, rtol) -> tuple[Status, str, int, list[str]]:
    """A check session's revealed calls -> (status, reason, trials passed, notes)."""
    from kopt.evaluator import judge

    notes: list[str] = []
    first: dict[int, list] = {}
    passed: set[int] = set()
    for r in revealed:
        label = ref.label(r.trial)
        if r.kind == "ghost":
            if judge.compare_all(r.outs, ref.outputs[r.trial], atol, rtol) is None:
                return (Status.REJECTED, "decoy: the output stays correct when the extension's results are "
                        "replaced by NaN, so torch does the work", len(passed), notes)
            continue
        if r.pass_no:
            label += " (second pass, the same buffers refilled)"
        bad = judge_call(r, ref.outputs[r.trial], label, atol, rtol, ref.oracle_for(r.trial), ref.fan_in_for(r.trial))
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


def judge_timed(result: EvalResult, run, before: dict, after: dict, ref: ReferenceData, *, atol, rtol,
                threads: int, floor_note: Callable[[object, float], str | None], cpu: bool = True) -> EvalResult:
    """A timing session (`run`) between two reference rounds (`before`, `after`: A/B/A) -> the verdict with
    its runtime, or the rule it broke. `after["extra_order"]` holds the reference's outputs on exactly the
    inputs of the candidate's revealed timed calls."""
    from kopt.evaluator.calls import clock_disagrees, cores_used, flush_skipped, overhead_ns, per_call_ms
    from kopt.evaluator.targets import median_iqr

    timed = [r for r in run.revealed if r.kind == "timed"]
    expected = after["extra_order"]
    if len(expected) != len(timed):
        return result.replace(status=Status.CRASHED, reason="timing: the reference did not re-run the revealed calls")
    for r in run.revealed:
        if r.kind != "check":
            continue
        bad = judge_call(r, ref.outputs[r.trial], f"check call on trial {r.trial} ({ref.tag(r.trial)}) during timing",
                         atol, rtol, ref.oracle_for(r.trial), ref.fan_in_for(r.trial))
        if bad:
            return result.replace(status=bad[0], reason=bad[1])
    for r, refs in zip(timed, expected):
        bad = judge_call(r, refs, f"timed call {r.call} (revealed after timing)", atol, rtol)
        if bad:
            return result.replace(status=bad[0], reason=bad[1])
    if not run.calls:
        return result.replace(status=Status.CRASHED, reason="timing: no timed calls")
    skipped = flush_skipped(run, [before["run"], after["run"]], cpu_time=cpu)
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
    slow_note = floor_note(timed[0] if timed else None, med)
    if slow_note:
        notes = notes + (slow_note,)
    return result.replace(runtime_ms=med, runtime_iqr_ms=iqr, reference_runtime_ms=ref_ms,
                          speedup=ref_ms / med if med > 0 else None, timed_calls=len(run.calls),
                          warnings=tuple(result.warnings) + notes)
