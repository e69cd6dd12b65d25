"""Evaluator costs per stage, side by side in one run (python benchmarks/bench_evaluator.py [--reps N]):

- session start: a sandboxed kopt_child process up to `ready` (process start, torch import, init message);
- check overhead per candidate excluding compile: check() of an already-built candidate (static gate, .so
  re-verify, one session: start + the check calls + reveal, judge), and its parts;
- time() of it with --min-calls/--min-time-s shrunk to the minimum (A/B/A reference rounds included), and
  the reference under torch.compile (once per evaluator; its compile time apart);
- check per candidate in a batch: `--batch` built candidates in one check() call, `--jobs` 1, the way a
  pool checks them (spare sessions start while the previous candidate runs);
- compile time per CPU candidate (build.py's Builder): cold (the first rep includes the store's PCH) and warm
  (store hit: capture only).

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
    ap.add_argument("--batch", type=int, default=6, help="built candidates checked in one call (spares warm)")
    ap.add_argument("--task", default=str(REPO.parent / "shared" / "kernelbench" / "level1" / "19_ReLU.py"))
    args = ap.parse_args()
    os.environ.setdefault("MAX_JOBS", "1")
    os.environ["KOPT_HOME"] = tempfile.mkdtemp(prefix="kopt-bench-")
    os.environ["KOPT_BUILD_DIR"] = os.path.join(os.environ["KOPT_HOME"], "build")
    from kopt.evaluator import EvalSettings, Evaluator
    from kopt.evaluator.calls import check_run
    from kopt.task import load_task

    task = load_task(args.task, sets=["batch_size=16", "dim=4096"])
    base = (REPO / "tests" / "fixtures" / "kernels" / "honest_relu_naive.py").read_text()
    settings = EvalSettings(threads=1, jobs=1, min_calls=5, min_time_s=0.01)

    opening = 'cpp_source = r"""'
    assert opening in base

    def fresh() -> str:
        return base.replace(opening, f"{opening}\n// bench {uuid.uuid4().hex}", 1)

    def build_s(ev: Evaluator, src: str) -> float:
        t0 = time.monotonic()
        [b] = ev.build([src])
        assert b.failure is None, b.failure.reason
        return time.monotonic() - t0

    rows: dict[str, list[float]] = {k: [] for k in (
        "compile cold, PCH", "compile warm (cached)", "session start (ref Model)",
        "check: session start", "check: calls + reveal", "check overhead (built)", "time overhead (5 calls)")}
    with Evaluator(task, settings) as ev:
        t0 = time.monotonic()
        ev.prepare()
        print(f"prepare (reference trials, shapes, fp64 oracle): {time.monotonic() - t0:.2f} s")
        for rep in range(args.reps):
            src = fresh()
            rows["compile cold, PCH"].append(build_s(ev, src))  # the store's PCH is built once, first
            with Evaluator(task, settings) as again:  # new evaluator: no in-memory cache, the store is reused
                rows["compile warm (cached)"].append(build_s(again, src))
            work = ev.root / "work" / f"bench-{rep}"
            t0 = time.monotonic()
            with ev.launcher.session(None, None, work, ev.timer.reference()) as s:
                s.start()
                rows["session start (ref Model)"].append(time.monotonic() - t0)
            [b] = ev.build([src])
            t0 = time.monotonic()
            with ev.launcher.session(src, b, work / "c", ev.timer.reference()) as s:
                s.start()
                t1 = time.monotonic()
                check_run(s, ev.timer.reference().trials(), ev.timer.reference().max_reveal_bytes())
                t2 = time.monotonic()
            rows["check: session start"].append(t1 - t0)
            rows["check: calls + reveal"].append(t2 - t1)
            t0 = time.monotonic()
            [r] = ev.check([src])
            rows["check overhead (built)"].append(time.monotonic() - t0)
            assert r.correct, r.reason
            ev.timer.time_reference()
            t0 = time.monotonic()
            [t] = ev.time([src], [r])
            rows["time overhead (5 calls)"].append(time.monotonic() - t0)
        # A pool's view: N built candidates in one check() call, so spare sessions (process start and the
        # torch import, started ahead of need) overlap the previous candidate's calls.
        batch = [fresh() for _ in range(args.batch)]
        ev.build(batch)
        t0 = time.monotonic()
        results = ev.check(batch)
        per = (time.monotonic() - t0) / len(batch)
        assert all(r.correct for r in results), [r.reason for r in results]
        rows["check per candidate, batch"] = [per]
        ct = ev.timer.compiled_time
        print(f"reference under torch.compile: {ct and round(ct['median_ms'], 4)} ms per call, compile "
              f"{ct and round(ct['compile_s'], 1)} s (once per evaluator) {ev.timer.compile_note}")
        print(f"last timed: {t.status.value} {t.reason[:120]} runtime {t.runtime_ms} ms, reference "
              f"{t.reference_runtime_ms} ms, speedup {t.speedup}, vs compile {t.speedup_vs_compile}")
    print(f"{'measure':<28} {'median s':>9} {'runs':>5}")
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    for k, v in rows.items():
        if v:
            print(f"{k:<28} {med[k]:9.2f} {len(v):5d}")
    print(f"load average at the end: {open('/proc/loadavg').read().split()[:3]} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
