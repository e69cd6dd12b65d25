"""Evaluator costs, side by side in one run (python benchmarks/bench_evaluator.py [--reps N]):

- overhead per candidate excluding compile: check() of an already-built candidate (static gate, sandboxed
  check process, judge), and time() of it with --min-calls/--min-time-s shrunk to the minimum;
- compile time per CPU candidate: cold plain (no PCH), cold with the PCH, and warm (build dir cached).

Each cold build gets a unique comment inside its C++ source (builds are keyed by the extension's sources), so
nothing is cached; KOPT_HOME and KOPT_BUILD_DIR are fresh temp dirs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--task", default=str(REPO.parent / "shared" / "kernelbench" / "level1" / "19_ReLU.py"))
    args = ap.parse_args()
    os.environ.setdefault("MAX_JOBS", "1")
    os.environ["KOPT_HOME"] = tempfile.mkdtemp(prefix="kopt-bench-")
    os.environ["KOPT_BUILD_DIR"] = os.path.join(os.environ["KOPT_HOME"], "build")
    from kopt.evaluator import EvalSettings, Evaluator
    from kopt.task import load_task

    task = load_task(args.task, sets=["batch_size=16", "dim=4096"])
    base = (REPO / "tests" / "fixtures" / "kernels" / "honest_relu_naive.py").read_text()
    settings = EvalSettings(threads=1, jobs=1, min_calls=5, min_time_s=0.01)

    opening = 'cpp_source = r"""'
    assert opening in base

    def fresh() -> str:
        return base.replace(opening, f"{opening}\n// bench {uuid.uuid4().hex}", 1)

    def build_s(ev: Evaluator, src: str, pch: bool) -> float:
        ev._pch_ok = pch if pch is False else ev._pch_ok
        t0 = time.monotonic()
        [b] = ev.build([src])
        assert b.failure is None, b.failure.reason
        return time.monotonic() - t0

    rows: dict[str, list[float]] = {"compile cold, plain": [], "compile cold, PCH": [], "compile warm (cached)": [],
                                    "check overhead (built)": [], "time overhead (5 calls)": []}
    with Evaluator(task, settings) as ev:
        t0 = time.monotonic()
        ev._warm_pch()
        print(f"PCH warm-up (build or verify): {time.monotonic() - t0:.1f} s, PCH present: {ev._pch_ok}")
        ev._ensure_reference()
        for _ in range(args.reps):
            src = fresh()
            with Evaluator(task, settings) as plain:
                plain._pch_ok = False
                rows["compile cold, plain"].append(build_s(plain, fresh(), False))
            rows["compile cold, PCH"].append(build_s(ev, src, True))
            with Evaluator(task, settings) as again:  # new evaluator: no in-memory cache, the build dir is reused
                again._pch_ok = ev._pch_ok
                rows["compile warm (cached)"].append(build_s(again, src, True))
            t0 = time.monotonic()
            [r] = ev.check([src])
            rows["check overhead (built)"].append(time.monotonic() - t0)
            assert r.correct, r.reason
            ev._time_reference()
            t0 = time.monotonic()
            [t] = ev.time([src], [r])
            rows["time overhead (5 calls)"].append(time.monotonic() - t0)
    print(f"{'measure':<26} {'median s':>9} {'runs':>5}")
    med = {k: statistics.median(v) for k, v in rows.items()}
    for k, v in rows.items():
        print(f"{k:<26} {med[k]:9.2f} {len(v):5d}")
    print(f"plain / PCH cold compile: {med['compile cold, plain'] / med['compile cold, PCH']:.2f}x")
    print(f"PCH cold / warm compile:  {med['compile cold, PCH'] / med['compile warm (cached)']:.2f}x")
    print(f"check overhead / PCH cold compile: {med['check overhead (built)'] / med['compile cold, PCH']:.2f}")
    print(f"load average at the end: {open('/proc/loadavg').read().split()[:3]} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
