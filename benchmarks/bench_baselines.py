"""The examples' gelu and swish tasks on the CPU target: eager PyTorch, torch.compile and kopt's winner, timed
in the same run (python benchmarks/bench_baselines.py [--tasks gelu,swish]).

Each task runs `kopt optimize examples/<task>/task.py --sampler replay` (the examples' sample pools, real
compiles, the default surprisal-top-m selection) in a fresh KOPT_HOME and KOPT_BUILD_DIR. The evaluator times
the reference eagerly and under torch.compile (default mode, Inductor's C++; its compile time is the first
warm-up call and never inside a timed call) through the same harness as the candidates, so the three times
below come from one loop discipline on one machine in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def optimize(task: str, tmp: Path) -> tuple[float, dict]:
    ex = REPO / "examples" / task
    k = sum(1 for line in (ex / "samples_cpu.jsonl").read_text().splitlines() if line.strip())  # the whole pool
    home = tmp / f"home-{task}"
    env = {**os.environ, "KOPT_HOME": str(home), "KOPT_BUILD_DIR": str(home / "build")}
    args = [sys.executable, "-m", "kopt", "optimize", str(ex / "task.py"), "--sampler", "replay", "--samples",
            str(ex / "samples_cpu.jsonl"), "--k", str(k), "--target", "cpu", "--out", str(tmp / f"out-{task}"),
            "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{task}: kopt optimize failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return wall, json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="gelu,swish")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kopt-bench-baselines-") as tmp:
        for task in args.tasks.split(","):
            wall, report = optimize(task, Path(tmp))
            w = report["winner"]
            rows.append((task, wall, w, report.get("evaluation") or {}))
    print(f"{'task':<7} {'eager ms':>9} {'compile ms':>10} {'winner ms':>10} {'vs eager':>9} {'vs compile':>11} "
          f"{'compile/eager':>13} {'winner':>7} {'wall s':>7}")
    for task, wall, w, ev in rows:
        eager, comp, mine = w.get("reference_runtime_ms"), w.get("compile_reference_runtime_ms"), w.get("runtime_ms")

        def ms(v):
            return f"{v:.4f}" if v else "-"

        def x(v):
            return f"{v:.2f}x" if v else "-"

        print(f"{task:<7} {ms(eager):>9} {ms(comp):>10} {ms(mine):>10} {x(w.get('speedup_vs_eager')):>9} "
              f"{x(w.get('speedup_vs_compile')):>11} {x(eager / comp if eager and comp else None):>13} "
              f"{w.get('index'):>7} {wall:7.1f}")
        print(f"        evaluation: {ev.get('mode')}, {ev.get('compiled')} compiled of {ev.get('unique')} unique, "
              f"{ev.get('timed')} timed")
    print("compile/eager: torch.compile's speedup over eager (above 1x: compile is faster). The winner's "
          "speedups are against the reference timed around it (A/B/A) and the compiled reference.")
    print(f"load average at the end: {open('/proc/loadavg').read().split()[:3]} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
