"""`kopt optimize` end to end on the CPU: replay pool -> real compiles -> real checks -> timing -> winner.

The examples' hand-written gelu pool has correct kernels of different speed, wrong ones, one that does not
compile, a duplicate and an answer without code. By surprisal (per token) its unique candidates rank
4 (wrong), 2 (correct), 7 (wrong), 6 (does not compile), 8, 1 (correct), 3, 0 (correct), 5 (wrong): the
default surprisal-ordered evaluation checks the first six and skips the last three. One KOPT_HOME is shared by the module so every candidate
compiles once; each test that needs a cold start says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GELU = REPO / "examples" / "gelu"
K = 11


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("optimize-home")


def kopt(args: list[str], home: Path, cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "KOPT_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "kopt", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=kw.pop("timeout", 900), **kw)


def err(proc) -> str:
    """What the user is told about a failure: stderr, plus the JSON error object `--json` puts on stdout."""
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        return proc.stderr + proc.stdout
    return proc.stderr + " ".join(str(data.get(k, "")) for k in ("error", "hint")) if isinstance(data, dict) else proc.stderr


def optimize_args(out: Path, *extra: str, samples: Path = GELU / "samples_cpu.jsonl") -> list[str]:
    return ["optimize", str(GELU / "task.py"), "--sampler", "replay", "--samples", str(samples), "--k", str(K),
            "--target", "cpu", "--out", str(out), "--json", *extra]


def cache_info(home: Path, cwd: Path) -> dict:
    proc = kopt(["cache", "info", "--json"], home, cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def first_run(home, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("work")
    out = cwd / "kernels" / "gelu"
    proc = kopt(optimize_args(out), home, cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, out, json.loads(proc.stdout), cache_info(home, cwd)


@pytest.mark.slow
def test_winner_is_written_with_a_measured_speedup(first_run):
    cwd, out, report, _ = first_run
    statuses = [c["status"] for c in report["candidates"]]
    assert len(statuses) == K
    assert statuses.count("compile_error") == 1
    assert statuses.count("incorrect") == 2  # wrong constant, erf GELU; the missing 0.5 is never checked
    assert statuses.count("no_code") == 1
    assert [i for i, s in enumerate(statuses) if s == "skipped"] == [0, 3, 5]
    ev = report["evaluation"]
    assert ev["mode"] == "surprisal-ordered" and "--exhaustive" in ev["why"]
    assert (ev["unique"], ev["checked"], ev["timed"], ev["skipped"]) == (9, 6, 3, 3)
    assert ev["compiled"] == 6 and report["baseline"] == "best"
    assert report["winner"]["speedup_vs_eager"] == report["winner"]["speedup"]
    dups = [c for c in report["candidates"] if c["duplicate_of"] is not None]
    assert len(dups) == 1 and dups[0]["duplicate_of"] == 1
    w = report["winner"]
    assert report["candidates"][w["index"]]["status"] == "correct"
    assert w["runtime_ms"] > 0 and w["reference_runtime_ms"] > 0
    assert w["speedup"] == pytest.approx(w["reference_runtime_ms"] / w["runtime_ms"], rel=1e-6)
    # surprisal-top-m times at most m=3 candidates, and they are the most surprising correct ones.
    correct = [c for c in report["candidates"] if c["status"] == "correct" and c["duplicate_of"] is None]
    top3 = sorted(correct, key=lambda c: (-c["surprisal"], c["index"]))[:3]
    assert sorted(report["timed"]) == sorted(c["index"] for c in top3)
    assert w["index"] in report["timed"]
    for name in ("model_new.py", "kernel.cpp", "report.json", "README.md", "samples.jsonl"):
        assert (out / name).is_file(), name
    assert "#include <torch/extension.h>" in (out / "kernel.cpp").read_text()
    assert json.loads((out / "report.json").read_text())["winner"]["index"] == w["index"]
    assert len((out / "samples.jsonl").read_text().splitlines()) == K
    assert Path(report["run_dir"], "samples.jsonl").is_file()


@pytest.mark.slow
def test_rerun_is_a_full_cache_hit(first_run, home):
    cwd, out, report, _ = first_run
    proc = kopt(optimize_args(out, "--force"), home, cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(proc.stdout)
    last = cache_info(home, cwd)["last_run"]
    # Nothing compiled, checked or timed: every verdict came from the cache (the three skipped candidates
    # are looked up once and stay skipped).
    assert again["evaluation"]["evaluated_now"] == 0 and again["evaluation"]["timed_now"] == 0
    assert last["misses"].get("check", 0) == 3 and last["misses"].get("time", 0) == 0
    assert last["hits"]["check"] == 6 and last["hits"]["time"] >= 3
    assert again["winner"] == {**report["winner"]}
    assert [c["status"] for c in again["candidates"]] == [c["status"] for c in report["candidates"]]


@pytest.mark.slow
def test_exhaustive_rerun_reuses_every_cached_verdict_and_picks_the_same(first_run, home):
    cwd, out, report, _ = first_run
    proc = kopt(optimize_args(out, "--force", "--exhaustive"), home, cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    full = json.loads(proc.stdout)
    last = cache_info(home, cwd)["last_run"]
    assert full["evaluation"]["mode"] == "exhaustive" and full["evaluation"]["skipped"] == 0
    assert full["evaluation"]["evaluated_now"] == 3  # only the three the surprisal-ordered run skipped
    assert last["hits"]["check"] == 6 and last["misses"]["check"] == 3
    statuses = [c["status"] for c in full["candidates"]]
    assert statuses.count("incorrect") == 3 and statuses.count("correct") == 6  # 5 unique + the duplicate
    assert full["winner"]["index"] == report["winner"]["index"] and sorted(full["timed"]) == sorted(report["timed"])


@pytest.mark.slow
def test_existing_output_is_never_overwritten_silently(first_run, home):
    cwd, out, _, _ = first_run
    before = (out / "report.json").read_text()
    proc = kopt(optimize_args(out), home, cwd)
    assert proc.returncode == 1
    assert "already exists" in err(proc) and "--force" in err(proc) and "Traceback" not in err(proc)
    assert (out / "report.json").read_text() == before


@pytest.mark.slow
def test_swap_puts_the_kernel_into_a_model(first_run):
    cwd, out, _, _ = first_run
    script = f"""
import sys, torch, torch.nn as nn
sys.path.insert(0, {str(GELU)!r})
import importlib.util
spec = importlib.util.spec_from_file_location("gelu_task", {str(GELU / 'task.py')!r})
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
net = nn.Sequential(nn.Linear(16, 16), m.Model(), nn.Linear(16, 4))
x = torch.randn(8, 16)
with torch.no_grad():
    ref = net(x)
import kopt
kopt.swap(net, {str(out)!r})
assert type(net[1]).__name__ == "ModelNew", type(net[1])
with torch.no_grad():
    got = net(x)
torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
print("swapped")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "swapped" in proc.stdout


def test_no_correct_candidate_exits_1_with_counts(home, tmp_path):
    lines = [json.loads(x) for x in (GELU / "samples_cpu.jsonl").read_text().splitlines()]
    bad = [x for x in lines if "incorrect" in x["note"] or "does not compile" in x["note"]]
    samples = tmp_path / "bad.jsonl"
    samples.write_text("".join(json.dumps(x) + "\n" for x in bad))
    args = optimize_args(tmp_path / "out", samples=samples)
    args[args.index("--k") + 1] = str(len(bad))
    proc = kopt(args, home, tmp_path)
    assert proc.returncode == 1
    assert "no correct candidate" in err(proc) and "compile_error" in err(proc) and "incorrect" in err(proc)
    # The reasons by count, and where every candidate's verdict was written (the run dir).
    assert "top reasons:" in err(proc) and "x incorrect:" in err(proc) and "report.json" in err(proc)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_surprisal_needs_logprobs(home, tmp_path):
    lines = [json.loads(x) for x in (GELU / "samples_cpu.jsonl").read_text().splitlines()]
    samples = tmp_path / "nolp.jsonl"
    samples.write_text("".join(json.dumps({"text": x["text"]}) + "\n" for x in lines))
    proc = kopt(optimize_args(tmp_path / "out", samples=samples), home, tmp_path)
    assert proc.returncode == 1 and "log-prob" in err(proc) and "Traceback" not in err(proc)
    # The same pool with --select oracle works without log-probabilities.
    ok = kopt(optimize_args(tmp_path / "out2", "--select", "oracle", samples=samples), home, tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(ok.stdout)["strategy"] == "oracle"


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_finished_work(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "KOPT_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "kopt", *optimize_args(tmp_path / "out", "--jobs", "1")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    # Wait until at least two verdicts are cached, then kill the whole run group hard.
    deadline = time.monotonic() + 600
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(2)
        info = kopt(["cache", "info", "--json"], home, tmp_path)
        done = json.loads(info.stdout)["entries"].get("check", 0) if info.returncode == 0 else 0
        if done >= 2:
            break
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done >= 2
    resumed = kopt(optimize_args(tmp_path / "out"), home, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    last = cache_info(home, tmp_path)["last_run"]
    assert last["hits"]["check"] >= done
    assert last["hits"]["check"] + last["misses"]["check"] == 9  # each verdict looked up once
