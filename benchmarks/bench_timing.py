"""How steady kopt's timing is, in one run (python benchmarks/bench_timing.py [--rounds N] [--threads N,N]):

- the reference alone, timed N rounds through the real harness and protocol, at each thread count given
  (default: kopt's own choice, all cores but one, then every core): per round the median per-call time, its
  IQR and the harness overhead kopt subtracts; then the spread of the round medians (max / min);
- the same honest kernel twice (two sources that differ only in a comment) and a clock attack on that kernel
  (tests/fixtures/kernels/c4_got_clock_gettime.py: clock_gettime at half speed in every GOT), through
  check() and time() with A/B/A reference rounds: each one's speedup, and the ratios a user would read as
  "faster" (honest B / honest A should be ~1.00; attack / honest A must not be much above 1.00).

Everything runs on tests/fixtures/tasks/bias_gelu.py (a 16x4096 bias + GELU: a ~0.5 ms call on one core),
small enough that the harness's own overhead is the same size as the call: where kopt's timing is weakest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TASK = REPO / "tests" / "fixtures" / "tasks" / "bias_gelu.py"
KERNELS = REPO / "tests" / "fixtures" / "kernels"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", default="", help="comma-separated thread counts (default: cores-1 and cores)")
    ap.add_argument("--min-calls", type=int, default=100)
    args = ap.parse_args()
    os.environ["KOPT_HOME"] = tempfile.mkdtemp(prefix="kopt-bench-")
    os.environ.setdefault("KOPT_BUILD_DIR", os.path.join(os.environ["KOPT_HOME"], "build"))
    from kopt.config import usable_cores
    from kopt.evaluator import EvalSettings, Evaluator
    from kopt.task import load_task

    cores = usable_cores()
    counts = [int(x) for x in args.threads.split(",") if x] or sorted({max(1, cores - 1), cores})
    task = load_task(str(TASK))
    print(f"{cores} cores; task {TASK.name}; {args.rounds} reference rounds per thread count, "
          f">= {args.min_calls} calls each")
    for threads in counts:
        st = EvalSettings(target="cpu", jobs=1, threads=threads, min_calls=args.min_calls, min_time_s=0.5,
                          compile_baseline=False)
        with Evaluator(task, st) as ev:
            ev.prepare()
            ev.launcher.close_spares()
            meds = []
            for k in range(args.rounds):
                r = ev.timer.time_reference(fresh=True)
                meds.append(r["median_ms"])
                print(f"  threads {threads} round {k}: median {r['median_ms']:.3f} ms, IQR {r['iqr_ms']:.3f} ms, "
                      f"overhead {r['overhead_ns'] / 1e6:.3f} ms")
        print(f"threads {threads}: round medians {min(meds):.3f}-{max(meds):.3f} ms, "
              f"max/min {max(meds) / min(meds):.2f}x, median of medians {statistics.median(meds):.3f} ms")

    plain = (KERNELS / "honest_gelu_plain.py").read_text()
    sources = {"honest A": plain, "honest B": plain + "\n# the same kernel, another source\n",
               "clock attack": (KERNELS / "c4_got_clock_gettime.py").read_text()}
    st = EvalSettings(target="cpu", jobs=2, min_calls=args.min_calls, min_time_s=0.5, compile_baseline=False)
    with Evaluator(task, st) as ev:
        names = list(sources)
        checked = ev.check([sources[n] for n in names])
        ok = [i for i, r in enumerate(checked) if r.correct]
        timed = ev.time([sources[names[i]] for i in ok], [checked[i] for i in ok])
    got = {names[i]: r for i, r in zip(ok, timed)}
    for n in names:
        r = got.get(n)
        if r is None or not r.speedup:
            why = (r or checked[names.index(n)]).reason
            print(f"{n}: {(r or checked[names.index(n)]).status.value} ({why[:120]})")
            continue
        print(f"{n}: {r.runtime_ms:.3f} ms (IQR {r.runtime_iqr_ms:.3f}), speedup {r.speedup:.3f}x over "
              f"{r.reference_runtime_ms:.3f} ms, {r.timed_calls} calls")
    a = got.get("honest A")
    if a and a.speedup:
        for n in ("honest B", "clock attack"):
            r = got.get(n)
            if r and r.speedup:
                print(f"ratio {n} / honest A: {r.speedup / a.speedup:.2f}x")


if __name__ == "__main__":
    main()
