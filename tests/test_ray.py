"""`--executor ray` end to end on a real Ray cluster on 127.0.0.1 (tests/ray_cluster.py: a head and a second
node process, one CPU each, stopped through the process groups the test started).

The examples' gelu pool (replay sampler, CPU target, --exhaustive so every candidate is checked) runs once
with the local executor and once through the cluster: the verdicts must be the same, candidate for candidate.
A third node is then killed in the middle of a candidate's check; the run must still finish with every
verdict final (nothing transient, nothing lost) and the same as the local run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from ray_cluster import LocalCluster  # noqa: I001 - tests/ is on sys.path (rootdir conftest)

REPO = Path(__file__).resolve().parent.parent
GELU = REPO / "examples" / "gelu"
K = 11


def optimize(home: Path, out: Path, env: dict[str, str], *extra: str) -> dict:
    args = [sys.executable, "-m", "kopt", "optimize", str(GELU / "task.py"), "--sampler", "replay", "--samples",
            str(GELU / "samples_cpu.jsonl"), "--k", str(K), "--target", "cpu", "--exhaustive", "--out", str(out),
            "--json", *extra]
    proc = subprocess.run(args, capture_output=True, text=True, env={**env, "KOPT_HOME": str(home)},
                          cwd=out.parent, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    return json.loads(proc.stdout)


def verdicts(report: dict) -> list[tuple]:
    return [(c["status"], c["duplicate_of"], c["code_sha256"]) for c in report["candidates"]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "PYTHONPATH": str(REPO), "KOPT_HOME": str(root / "node-home")}
    with LocalCluster(root / "c", env=env) as c:
        c.add_node()
        c.wait_for_nodes(2)
        yield c


@pytest.fixture(scope="module")
def local_report(tmp_path_factory):
    work = tmp_path_factory.mktemp("local")
    return optimize(work / "home", work / "out", dict(os.environ))


@pytest.mark.slow
def test_ray_executor_gives_the_local_verdicts(cluster, local_report, tmp_path):
    report = optimize(tmp_path / "home", tmp_path / "out", cluster.env, "--executor", "ray",
                      "--ray-address", cluster.address)
    assert verdicts(report) == verdicts(local_report)
    assert sum(c["status"] == "correct" for c in report["candidates"]) >= 3
    assert report["device"] == local_report["device"]  # the nodes' kind, this machine's CPU here
    assert not any("Ray node" in (c["reason"] or "") for c in report["candidates"])
    timed = [c for c in report["candidates"] if c["speedup"] is not None]
    assert len(timed) >= 3 and all(c["speedup"] > 0 for c in timed)


@pytest.mark.slow
def test_a_node_killed_mid_candidate_loses_nothing(cluster, local_report, tmp_path):
    node_home = tmp_path / "doomed-home"
    doomed = cluster.add_node(env={**cluster.env, "KOPT_HOME": str(node_home)})
    cluster.wait_for_nodes(3)
    killed, stop = threading.Event(), threading.Event()

    def kill_when_busy() -> None:  # the doomed node's evaluator has a candidate session open: mid-check
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not stop.is_set():
            if any(node_home.glob("eval/*/work/*")):
                doomed.kill()
                killed.set()
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_when_busy, daemon=True)
    watcher.start()
    try:
        report = optimize(tmp_path / "home", tmp_path / "out", cluster.env, "--executor", "ray",
                          "--ray-address", cluster.address)
    finally:
        stop.set()
        watcher.join(timeout=5)
        doomed.kill()
    assert killed.is_set(), "the third node never opened a candidate session"
    assert verdicts(report) == verdicts(local_report)
    assert not any("Ray node" in (c["reason"] or "") for c in report["candidates"])


@pytest.mark.slow
def test_compare_over_two_tasks_through_the_cluster(cluster, tmp_path):
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "kopt", "compare", "examples/gelu", "examples/swish", "--samples", "examples",
           "--k", "9", "--target", "cpu", "--strategies", "oracle,surprisal-top-m", "--json", "--report", str(out),
           "--executor", "ray", "--ray-address", cluster.address]
    proc = subprocess.run(cmd, cwd=REPO, env={**cluster.env, "KOPT_HOME": str(tmp_path / "home")},
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(proc.stdout)
    assert data["tasks"] == ["gelu", "swish"]
    assert data["evaluated_now"] > 0 and data["timed_now"] > 0
    assert len(data["strategies"]["oracle"]["picks"]) == 2
