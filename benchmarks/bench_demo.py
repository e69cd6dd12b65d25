"""The demo's first run against its rerun, side by side, and the compiles that dedupe saves.

    python benchmarks/bench_demo.py [--k 11]

Runs `kopt optimize examples/gelu/task.py --sampler replay ...` twice in a fresh KOPT_HOME (the second is
served from the cache) and prints wall times, their ratio, and how many compiles deduplication avoided
with the compile time they would have cost (the mean compile time of the pool's candidates).
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


def run(home: Path, out: Path, k: int, force: bool) -> tuple[float, dict]:
    args = [sys.executable, "-m", "kopt", "optimize", str(REPO / "examples/gelu/task.py"), "--sampler", "replay",
            "--samples", str(REPO / "examples/gelu/samples_cpu.jsonl"), "--k", str(k), "--target", "cpu",
            "--out", str(out), "--json"] + (["--force"] if force else [])
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "KOPT_HOME": str(home)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    return wall, json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=11)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home, out = Path(tmp) / "home", Path(tmp) / "out"
        first_s, report = run(home, out, args.k, force=False)
        rerun_s, again = run(home, out, args.k, force=True)
    rows = report["candidates"]
    with_code = [c for c in rows if c["status"] != "no_code"]
    dups = [c for c in with_code if c["duplicate_of"] is not None]
    compiled = [c["compile_s"] for c in with_code if c["duplicate_of"] is None and c.get("compile_s")]
    mean_compile = sum(compiled) / len(compiled) if compiled else float("nan")
    print(f"samples: {len(rows)}, with code: {len(with_code)}, unique: {len(with_code) - len(dups)}")
    print(f"first run  : {first_s:8.2f} s  (winner sample {report['winner']['index']}, "
          f"{report['winner']['speedup']:.2f}x)")
    print(f"rerun      : {rerun_s:8.2f} s  (winner sample {again['winner']['index']}, "
          f"{again['winner']['speedup']:.2f}x, served from the cache)")
    print(f"ratio      : {first_s / rerun_s:8.1f}x faster on rerun")
    print(f"dedupe     : {len(dups)} compile(s) saved, ~{len(dups) * mean_compile:.1f} s "
          f"at the pool's mean compile time of {mean_compile:.1f} s")


if __name__ == "__main__":
    main()
