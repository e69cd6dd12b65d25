"""Local executor versus Ray (a cluster on this machine) for the examples' gelu pool, in one run
(python benchmarks/bench_executor.py [--nodes N] [--k 11]):

- the same pool (replay sampler, CPU target, every unique candidate checked, the correct ones timed), with
  builds warmed first in a shared KOPT_BUILD_DIR so both sides measure evaluation, not compilation;
- per executor: connect/probe time, check-stage and time-stage wall time, and the per-candidate overhead of
  Ray over local (the difference in wall time per evaluated candidate);
- whether the verdicts are identical, candidate for candidate.

The Ray side is a head and N-1 nodes of one CPU each on 127.0.0.1 (tests/ray_cluster.py), so with --nodes 2 it
has the same two compile/check slots as the local executor's --jobs 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
GELU = REPO / "examples" / "gelu"


def run(executor: str, address: str | None, k: int, run_dir: Path) -> dict:
    from kopt.pool import Pool, RunOptions
    from kopt.task import load_task

    opts = RunOptions(sampler="replay", samples=GELU / "samples_cpu.jsonl", k=k, target="cpu", jobs=2,
                      no_cache=True, executor=executor, ray_address=address)
    t0 = time.perf_counter()
    with Pool(load_task(str(GELU / "task.py")), opts, run_dir=run_dir) as pool:
        pool.fill()
        pool.fingerprint()  # ray: connect and probe every node
        t1 = time.perf_counter()
        checked = pool.check()
        t2 = time.perf_counter()
        correct = [i for i, r in checked.items() if r.correct]
        timed = pool.time(correct)
        t3 = time.perf_counter()
        verdicts = [pool.result_for(i).status.value for i in range(len(pool.candidates))]
        speedups = {i: r.speedup for i, r in timed.items()}
        t4 = time.perf_counter()
    return {"setup_s": t1 - t0, "check_s": t2 - t1, "time_s": t3 - t2, "close_s": time.perf_counter() - t4,
            "wall_s": time.perf_counter() - t0, "checked": len(checked), "timed": len(correct),
            "verdicts": verdicts, "speedups": speedups}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=2, help="Ray nodes (a head and nodes-1 more), one CPU each")
    ap.add_argument("--k", type=int, default=11)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kopt-bench-ex-"))
    os.environ["KOPT_HOME"] = str(root / "home")
    os.environ.setdefault("KOPT_BUILD_DIR", str(root / "build"))
    from ray_cluster import LocalCluster, loopback_env

    os.environ.update(loopback_env({}))  # this process is the Ray driver: keep 127.0.0.1 (tests/ray_cluster.py)
    from kopt.evaluator import EvalSettings, Evaluator
    from kopt.prompt import extract_code
    from kopt.records import Sample
    from kopt.task import load_task

    sources = [extract_code(Sample.from_json(json.loads(line)).text) for line in
               (GELU / "samples_cpu.jsonl").read_text().splitlines()[: args.k]]
    t = time.perf_counter()
    with Evaluator(load_task(str(GELU / "task.py")), EvalSettings(target="cpu", jobs=2)) as ev:
        ev.build([s for s in sources if s])
    print(f"warm-up builds: {time.perf_counter() - t:.1f} s (shared by both executors)")

    local = run("local", None, args.k, root / "run-local")
    env = {**os.environ, "PYTHONPATH": str(REPO), "KOPT_HOME": str(root / "nodes")}
    t = time.perf_counter()
    with LocalCluster(root / "c", env=env) as cluster:
        for _ in range(args.nodes - 1):
            cluster.add_node()
        cluster.wait_for_nodes(args.nodes)
        started = time.perf_counter() - t
        ray_ = run("ray", cluster.address, args.k, root / "run-ray")
    print(f"Ray cluster start ({args.nodes} nodes x 1 CPU on 127.0.0.1): {started:.1f} s (not counted below)")
    n = local["checked"]
    print(f"{'':28}{'local':>10}{'ray':>10}")
    for key, label in (("setup_s", "connect + probe nodes (s)"), ("check_s", "compile+check stage (s)"),
                       ("time_s", "timing stage (s)"), ("close_s", "close (s)"), ("wall_s", "wall (s)")):
        print(f"{label:28}{local[key]:>10.1f}{ray_[key]:>10.1f}")
    print(f"{'candidates checked / timed':28}{local['checked']:>6}/{local['timed']:<3}{ray_['checked']:>6}/{ray_['timed']:<3}")
    print(f"per checked candidate, check stage: local {local['check_s'] / n:.2f} s, ray {ray_['check_s'] / n:.2f} s "
          f"(Ray overhead {(ray_['check_s'] - local['check_s']) / n:+.2f} s)")
    if local["timed"]:
        print(f"per timed candidate, timing stage: local {local['time_s'] / local['timed']:.2f} s, ray "
              f"{ray_['time_s'] / ray_['timed']:.2f} s (Ray overhead "
              f"{(ray_['time_s'] - local['time_s']) / local['timed']:+.2f} s)")
    same = local["verdicts"] == ray_["verdicts"]
    print(f"verdicts identical: {same} ({', '.join(local['verdicts'])})")
    print("speedups local: " + ", ".join(f"{i}: {s:.2f}" for i, s in sorted(local["speedups"].items()) if s))
    print("speedups ray:   " + ", ".join(f"{i}: {s:.2f}" for i, s in sorted(ray_["speedups"].items()) if s))
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
