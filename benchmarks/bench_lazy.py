"""Surprisal-ordered evaluation against exhaustive evaluation on a 64-sample CPU replay pool.

The pool is generated from variants of the examples' hand-written gelu kernels (examples/gelu/candidates_cpu):
variant j of a kernel carries `// variant j` inside its C++ source, so every sample is a distinct candidate and
a distinct build. About half are correct (fast and slow ones), the rest wrong or not compiling, and the
log-probabilities are drawn (seeded) so correct and incorrect, fast and slow candidates sit at mixed
surprisal. Both runs use fresh, separate KOPT_HOMEs and build dirs, so every compile is counted.

Reports, side by side: candidates compiled, checked, timed and skipped; wall time; the pick (it must be
identical). Target: the surprisal-ordered run compiles <= 25% of what the exhaustive one does at K = 64, m = 3.

    python benchmarks/bench_lazy.py [--k 64] [--top-m 3] [--jobs 2] [--out DIR] [--predict]

It compiles real kernels (about 10-30 s each here): the exhaustive run takes minutes. `--predict` compiles
nothing: it walks kopt's own order/stop rule (kopt/lazy.py) over the verdicts the pool has by construction
(each variant's kernel is labelled correct, wrong or not compiling) and prints the compiles it would take.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GELU = REPO / "examples" / "gelu"
CORRECT = ("01", "02", "03", "04", "09")
WRONG = ("05", "06", "07", "08")  # 07 does not compile


def variant(code: str, j: int) -> str:
    """The kernel with a distinct C++ source (a comment inside the load_inline string)."""
    return re.sub(r'(_source = r""")', rf"\1\n// variant {j}", code, count=1)


def make_pool(k: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    files = {p.stem.split("_", 1)[0]: p.read_text() for p in sorted((GELU / "candidates_cpu").glob("*.py"))}
    rows = []
    for j in range(k):
        stem = rng.choice(CORRECT) if j % 2 == 0 else rng.choice(WRONG)
        text = f"Variant {j}:\n\n```python\n{variant(files[stem], j).rstrip()}\n```\n"
        n = 320
        surprisal = rng.uniform(0.1, 0.6)  # independent of correctness and speed: mixed
        rows.append({"text": text, "logprob": round(-surprisal * n, 4), "num_tokens": n, "finish_reason": "stop",
                     "model": "bench_lazy (generated variants, logprobs drawn)", "note": f"{stem} variant {j}"})
    return rows


def run(samples: Path, k: int, top_m: int, jobs: int, work: Path, *extra: str) -> dict:
    home = work / "home"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KOPT_HOME": str(home), "KOPT_BUILD_DIR": str(home / "build")}
    cmd = [sys.executable, "-m", "kopt", "optimize", str(GELU / "task.py"), "--sampler", "replay", "--samples",
           str(samples), "--k", str(k), "--top-m", str(top_m), "--jobs", str(jobs), "--target", "cpu",
           "--out", str(work / "out"), "--json", *extra]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, check=False)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout)
    return {"wall_s": round(wall, 1), **report["evaluation"], "winner": report["winner"]["index"],
            "timed_ids": sorted(report["timed"])}


def predict(rows: list[dict], top_m: int, jobs: int) -> dict:
    """Compiles the surprisal-ordered run takes on this pool, from the construction labels (nothing runs)."""
    from kopt.lazy import next_batch, ranking

    surprisal = {i: -r["logprob"] / r["num_tokens"] for i, r in enumerate(rows)}
    label = {i: r["note"][:2] in CORRECT for i, r in enumerate(rows)}
    order = ranking(surprisal)
    known: dict[int, bool] = {}
    while batch := next_batch(order, known, top_m, jobs):
        known.update({i: label[i] for i in batch})
    return {"compiled": len(known), "exhaustive": len(rows), "correct_found": sum(known.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--top-m", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="keep the pool and the runs' homes here")
    ap.add_argument("--predict", action="store_true", help="compile nothing: count what the order/stop rule checks")
    a = ap.parse_args()
    if a.predict:
        got = predict(make_pool(a.k), a.top_m, a.jobs)
        print(f"K={a.k}, m={a.top_m}, jobs={a.jobs}: surprisal-ordered compiles {got['compiled']} of "
              f"{got['exhaustive']} ({got['compiled'] / got['exhaustive']:.0%}; target <= 25%)")
        return
    root = a.out or Path(tempfile.mkdtemp(prefix="bench-lazy-"))
    root.mkdir(parents=True, exist_ok=True)
    samples = root / "samples.jsonl"
    rows = make_pool(a.k)
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lazy = run(samples, a.k, a.top_m, a.jobs, root / "lazy")
    full = run(samples, a.k, a.top_m, a.jobs, root / "exhaustive", "--exhaustive")
    correct = sum(r["note"][:2] in CORRECT for r in rows)
    print(f"pool: K={a.k}, {correct} correct by construction, m={a.top_m}, jobs={a.jobs} ({samples})")
    print(f"{'':22}{'exhaustive':>12}{'surprisal-ordered':>20}")
    for key in ("compiled", "checked", "timed", "skipped", "wall_s", "winner"):
        print(f"{key:22}{full[key]!s:>12}{lazy[key]!s:>20}")
    same = full["winner"] == lazy["winner"] and full["timed_ids"] == lazy["timed_ids"]
    ratio = lazy["compiled"] / max(1, full["compiled"])
    print(f"pick identical: {same}; compiles: {ratio:.0%} of exhaustive (target <= 25%)")
    print(json.dumps({"exhaustive": full, "surprisal_ordered": lazy, "identical": same, "compile_ratio": ratio}))
    if not same:
        raise SystemExit("the surprisal-ordered pick differs from the exhaustive pick")


if __name__ == "__main__":
    main()
