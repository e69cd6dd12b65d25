"""Call plans over a child session (session.py): the check run and the timed run, for candidates and for
the trusted reference alike (the same frames, the same harness, the same per-call overhead).

Check run: every reference trial twice, in two interleaved passes (a kernel stale after N calls meets another
trial's input; a pointer-keyed cache meets the same buffers refilled), plus one ghost call; every call is
revealed, its hash re-computed here, and judged by the caller.

Timed run (parent-clocked, commit then reveal): after a warm-up by time, every call's inputs are a fresh
draw from kopt's secret (floats scaled by 1 + eps*u, integers and bools permuted: the valid domain is kept),
sent only after the previous call's commitment arrived and after the cache flush; the trials' own inputs
(check calls) are interleaved at random. Afterwards kopt reveals every check call and at least 16 timed
calls of its own choosing, and the caller judges them against the trusted reference's outputs on exactly
those inputs. The child's CPU time over the loop is read by kopt from /proc.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field

from kopt.evaluator.session import Call, Session

PERTURB_REL = 1e-2  # floats: x * (1 + eps*u), u ~ U(-1, 1): far above fp32 rtol, keeps signs, zeros, domains
PERTURB_REL_HALF = 5e-2
MIN_REVEAL = 16
WARMUP_NS = 50_000_000
REFINE = 0.05  # the child's own per-call time may move kopt's interval by at most 5% either way


@dataclass(frozen=True)
class Trial:
    model: int  # index into the session's models
    inputs: list  # the call's arguments (tensors on CPU, or plain values)
    outputs: list | None  # the reference's outputs (None for a reference session)
    tag: str = ""


@dataclass
class Revealed:
    call: int
    kind: str  # "check", "ghost", "timed", "extra"
    trial: int
    inputs: list
    outs: list
    after: list
    record: Call
    pass_no: int = 0


@dataclass
class TimedRun:
    calls: list[Call] = field(default_factory=list)  # the timed calls (warm-up excluded)
    warmup: list[Call] = field(default_factory=list)  # the first one holds torch.compile's compile, if any
    revealed: list[Revealed] = field(default_factory=list)
    cpu_ns: int = 0
    wall_ns: int = 0
    extra: list[Revealed] = field(default_factory=list)  # outputs on inputs given by the caller (reference)
    flush_ns: list[int] = field(default_factory=list)  # kopt's clock, `done` to `flushed`, per timed call
    flush_cpu_ns: list[int] = field(default_factory=list)  # the child's CPU time over each of those windows


def redraw(base: list, rng: random.Random) -> list:
    """A fresh draw of one call's inputs from `base` (a trial's inputs), seeded from kopt's secret."""
    import torch

    gen = torch.Generator().manual_seed(rng.getrandbits(62))
    out = []
    for x in base:
        if isinstance(x, torch.Tensor) and x.numel():
            if x.is_floating_point():
                work = torch.float64 if x.dtype == torch.float64 else torch.float32
                eps = PERTURB_REL_HALF if x.dtype in (torch.float16, torch.bfloat16) else PERTURB_REL
                u = torch.rand(x.shape, generator=gen, dtype=work)
                out.append((x.to(work) * (1.0 + eps * (2.0 * u - 1.0))).to(x.dtype))
            else:  # integers and bools: a permutation keeps every value valid (indices, masks, labels)
                flat = x.reshape(-1)
                out.append(flat[torch.randperm(flat.numel(), generator=gen)].reshape(x.shape).clone())
        else:
            out.append(x.clone() if isinstance(x, torch.Tensor) else x)
    return out


def check_run(s: Session, trials: list[Trial], max_bytes: int) -> list[Revealed]:
    """Every trial twice (interleaved passes) and one ghost call on trial 0; all revealed."""
    plan: list[tuple[str, int, int]] = []
    for p in range(2):
        for t in range(len(trials)):
            plan.append(("check", t, p))
            if p == 0 and t == 0:
                plan.append(("ghost", 0, 0))
    done = []
    for n, (kind, t, p) in enumerate(plan):
        rec = s.call(n, trials[t].model, trials[t].inputs, ghost=kind == "ghost")
        done.append((kind, t, p, rec))
    got = s.reveal_many([(rec.call, rec.h) for *_x, rec in done], max_bytes)
    return [Revealed(rec.call, kind, t, trials[t].inputs, outs, after, rec, p)
            for (kind, t, p, rec), (outs, after) in zip(done, got)]


def timed_run(s: Session, trials: list[Trial], timed: list[int], *, min_calls: int, min_time_s: float,
              max_bytes: int, extra: list[tuple[int, list]] = (), reveal: bool = True,
              rng: random.Random | None = None) -> TimedRun:
    """The timed loop (see the module docstring). `timed`: indices of the trials whose inputs are redrawn for
    timed calls (same shapes, rotated). `extra`: (trial, inputs) run after the loop and revealed (the
    reference computing expected outputs for a candidate's revealed calls)."""
    rng = rng or random.SystemRandom()
    run = TimedRun()
    clock = time.perf_counter_ns
    n_call = 0

    def one(t: int, args: list, ghost: bool = False) -> Call:
        nonlocal n_call
        rec = s.call(n_call, trials[t].model, args, ghost=ghost)
        n_call += 1
        return rec

    t0, n = clock(), 0
    while n < 3 or clock() - t0 < WARMUP_NS:  # warm up by time, not count, on fresh draws
        t = timed[n % len(timed)]
        run.warmup.append(one(t, redraw(trials[t].inputs, rng)))
        n += 1
    checks = list(range(len(trials)))
    target = max(min_calls, MIN_REVEAL + 4)
    # The check calls go at random positions among the first `target` timed calls.
    slots = sorted(rng.sample(range(target), min(len(checks), target)))
    timed_inputs: dict[int, tuple[int, list]] = {}
    check_recs: list[tuple[int, Call]] = []
    cpu0, w0, f0 = s.cpu_ns(), clock(), len(s.flush_ns)
    fc0 = len(s.flush_cpu_ns)
    i = 0
    while True:
        while slots and slots[0] == i:
            slots.pop(0)
            t = checks.pop(0)
            check_recs.append((t, one(t, trials[t].inputs)))
        t = timed[i % len(timed)]
        args = redraw(trials[t].inputs, rng)
        rec = one(t, args)
        run.calls.append(rec)
        timed_inputs[rec.call] = (t, args)
        i += 1
        if i >= target and (i >= min_calls or clock() - w0 >= min_time_s * 1e9):
            break
    run.wall_ns, run.cpu_ns = clock() - w0, s.cpu_ns() - cpu0
    for t in checks:  # a run shorter than the trial count still checks every trial
        check_recs.append((t, one(t, trials[t].inputs)))
    if reveal:
        pick = sorted(rng.sample(run.calls, min(len(run.calls), max(MIN_REVEAL, len(run.calls) // 4))),
                      key=lambda r: r.call)
        got = s.reveal_many([(rec.call, rec.h) for _t, rec in check_recs] + [(r.call, r.h) for r in pick], max_bytes)
        for (t, rec), (outs, after) in zip(check_recs, got):
            run.revealed.append(Revealed(rec.call, "check", t, trials[t].inputs, outs, after, rec))
        for rec, (outs, after) in zip(pick, got[len(check_recs):]):
            t, args = timed_inputs[rec.call]
            run.revealed.append(Revealed(rec.call, "timed", t, args, outs, after, rec))
    run.flush_ns = list(s.flush_ns[f0:])
    run.flush_cpu_ns = list(s.flush_cpu_ns[fc0:])
    extra_recs = [(t, args, one(t, args)) for t, args in extra]
    got = s.reveal_many([(rec.call, rec.h) for _t, _a, rec in extra_recs], max_bytes)
    for (t, args, rec), (outs, after) in zip(extra_recs, got):
        run.extra.append(Revealed(rec.call, "extra", t, args, outs, after, rec))
    return run


def overhead_ns(*refs: TimedRun) -> int:
    """The harness's per-call overhead as kopt's clock sees it, on the reference: interval minus its time,
    the median over every call of the given reference runs."""
    return int(statistics.median(c.interval_ns - c.child_ns for ref in refs for c in ref.calls))


def per_call_ms(run: TimedRun, overhead: int) -> list[float]:
    """Each timed call: kopt's interval minus the reference's overhead, refined by the child's own time
    within +-5% only (a clock the candidate slows or speeds moves nothing further)."""
    out = []
    for c in run.calls:
        est = max(0, c.interval_ns - overhead)
        out.append(min(max(c.child_ns, (1 - REFINE) * est), (1 + REFINE) * est) / 1e6)
    return out


def clock_disagrees(run: TimedRun, overhead: int) -> str | None:
    """The child's clock against kopt's, as a sentence when they disagree by more than noise explains."""
    est = statistics.median(max(0, c.interval_ns - overhead) for c in run.calls)
    raw = statistics.median(c.interval_ns for c in run.calls)
    child = statistics.median(c.child_ns for c in run.calls)
    # Load on the machine moves kopt's interval by far less than 4x; a clock replaced by a fake moves it more.
    # Judged on the raw interval too, so an estimate eaten by the subtracted overhead still gets the check.
    if (est > 100_000 and child < 0.25 * est) or (est <= 0 and raw > 1_000_000 and child < 0.01 * raw):
        return (f"the child's clock read {child / 1e6:.3f} ms per call where kopt's clock saw {est / 1e6:.3f} ms "
                "(a replaced clock or a loaded machine; kopt's clock is used)")
    return None


def _far_shorter(mine: list[int], refs: list[list[int]]) -> tuple[float, float] | None:
    """(the candidate's median, the reference's) when the candidate's flushes measured under a third of the
    reference's: the flush writes the same buffer in every session and load only lengthens it, so the
    reference's floor is taken over the rounds before and after the candidate."""
    theirs = [statistics.median(r) for r in refs if r]
    if not mine or not theirs:
        return None
    m, ref = statistics.median(mine), min(theirs)
    return (m, ref) if ref > 200_000 and m < ref / 3 else None


def flush_skipped(run: TimedRun, refs: list[TimedRun], *, cpu_time: bool = True) -> str | None:
    """A sentence when the candidate's cache flushes were far shorter than the reference's (the same code on
    the same buffer), on kopt's clock or on the child's CPU time kopt reads: its calls ran on a warm cache."""
    short = _far_shorter(run.flush_ns, [r.flush_ns for r in refs])
    if short:
        return (f"the cache flush between calls took {short[0] / 1e6:.3f} ms where the reference's took "
                f"{short[1] / 1e6:.3f} ms: the candidate's process skipped it, so its calls ran on a warm cache")
    # A flush replaced by a sleep (or a wait on anything) keeps the gap on kopt's clock but burns no CPU.
    # CPU target only: on a GPU the flush is device work, and the CPU time of waiting for it depends on how
    # the process syncs (spinning or blocking), which a candidate may choose honestly.
    short = _far_shorter(run.flush_cpu_ns, [r.flush_cpu_ns for r in refs]) if cpu_time else None
    if short:
        return (f"the cache flush between calls used {short[0] / 1e6:.3f} ms of CPU where the reference's used "
                f"{short[1] / 1e6:.3f} ms: the candidate's process waited instead of flushing, so its calls ran "
                "on a warm cache")
    return None


def cores_used(run: TimedRun) -> float:
    return run.cpu_ns / run.wall_ns if run.wall_ns else 0.0


__all__ = ["Revealed", "TimedRun", "Trial", "check_run", "clock_disagrees", "cores_used", "flush_skipped",
           "overhead_ns", "per_call_ms", "redraw", "timed_run"]
