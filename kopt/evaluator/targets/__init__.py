"""One module per target (cpu, cuda): compiler flags, device name, toolchain, and the per-call timer.

A target is a plain module exposing the names below; `get_target(name)` returns it. The timing loop is shared
(hacking-and-sandbox.md §3): warm up by time, flush the last-level cache before every call, one timed call at
a time, rotate >= 3 input sets, >= min_calls calls or >= min_time_s, median and IQR.
"""

from __future__ import annotations

import importlib
import statistics
from types import ModuleType

TARGETS = ("cpu", "cuda")


def get_target(name: str) -> ModuleType:
    if name not in TARGETS:
        from kopt.errors import ConfigError

        raise ConfigError(f"unknown target {name!r}", "use --target cpu, cuda or auto")
    return importlib.import_module(f"kopt.evaluator.targets.{name}")


def median_iqr(times_ms: list[float]) -> tuple[float, float]:
    """Median and inter-quartile range (§3 "Statistics": report median and IQR, not the mean)."""
    if len(times_ms) < 2:
        return (times_ms[0] if times_ms else float("nan")), 0.0
    q = statistics.quantiles(times_ms, n=4, method="inclusive")
    return statistics.median(times_ms), q[2] - q[0]


def timing_loop(model, trials: list[dict], timer, torch, min_calls: int, min_time_s: float, nonce: str,
                keep: int = 8, rand=None, clock=None, device: str = "cpu") -> dict:
    """Time `model` one call at a time over rotating input sets (§3).

    Each set is its own tensors with distinct content (hack #9); the cache is flushed before every call; a
    reservoir of `keep` timed outputs plus the last one are cloned OUTSIDE the timed region and shipped back
    for re-checking (hack #11: "correct for the first N calls"). The phase is bracketed by KOPT-MARK lines on
    stdout so the parent can compare its own wall clock with the reported times (hack #8).
    """
    import os

    from kopt.evaluator.sandbox import MARK

    rand = rand or os.urandom
    clock = clock or __import__("time").perf_counter_ns
    sets = [[x.to(device).clone() if isinstance(x, torch.Tensor) else x for x in t["inputs"]] for t in trials]
    with torch.no_grad():
        # Warm up by time, not count: >= 50 ms and >= 3 calls.
        t0, n = clock(), 0
        while n < 3 or (clock() - t0) < 50e6:
            timer.flush()
            model(*sets[n % len(sets)])
            timer.sync()
            n += 1
        print(f"{MARK} {nonce} start", flush=True)
        p0 = clock()
        times: list[float] = []
        kept: list[dict] = []
        seen = 0
        while True:
            i = len(times)
            s = i % len(sets)
            timer.flush()
            ms, out = timer.time_call(lambda: model(*sets[s]))
            times.append(ms)
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            # Reservoir sampling with the worker's bound urandom (a candidate cannot steer which calls count).
            seen += 1
            slot = len(kept) if len(kept) < keep else int.from_bytes(rand(4), "little") % seen
            if slot < keep:
                entry = {"call": i, "set": s, "outputs": [o.detach().clone() if isinstance(o, torch.Tensor) else None
                                                          for o in outs]}
                if slot == len(kept):
                    kept.append(entry)
                else:
                    kept[slot] = entry
            last = {"call": i, "set": s, "outputs": [o.detach().clone() if isinstance(o, torch.Tensor) else None
                                                     for o in outs]}
            del out, outs
            elapsed_s = (clock() - p0) / 1e9
            if len(times) >= 5 and (len(times) >= min_calls or elapsed_s >= min_time_s):
                break
        p1 = clock()
        print(f"{MARK} {nonce} end", flush=True)
    if all(k["call"] != last["call"] for k in kept):
        kept.append(last)
    for k in kept:
        k["outputs"] = [o.cpu() if o is not None else None for o in k["outputs"]]
    return {"times_ms": times, "phase_ms": (p1 - p0) / 1e6, "kept": kept, "sets": len(sets)}
