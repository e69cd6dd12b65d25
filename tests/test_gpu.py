"""The CUDA path, on a GPU: the examples' CUDA pool end to end, and the GPU-only attack rows.

Every test here carries the `gpu` marker and is skipped without CUDA (tests/conftest.py). The fixtures under
tests/fixtures/kernels_cuda/ open with the hack they try (docs/evaluator.md §1 and §5); one CPU test below
checks that the static gate lets them through, so on a GPU they meet the runtime defences.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kopt.evaluator.static import check_source
from kopt.records import Status

REPO = Path(__file__).resolve().parent.parent
CUDA_FIXTURES = REPO / "tests" / "fixtures" / "kernels_cuda"
GELU = REPO / "examples" / "gelu"


def _fixture(name: str) -> str:
    return (CUDA_FIXTURES / f"{name}.py").read_text()


def test_gpu_fixtures_pass_the_static_gate():
    # Runs everywhere: these hacks are invisible to the gate by design, so only the GPU run can catch them.
    for path in sorted(CUDA_FIXTURES.glob("*.py")):
        assert check_source(path.read_text(), "cuda").ok, path.name


@pytest.fixture(scope="module")
def gpu_batch():
    from kopt.evaluator import EvalSettings, Evaluator
    from kopt.task import load_task

    task = load_task(str(GELU / "task.py"), sets=["batch_size=256", "dim=16384"])
    names = ["illegal_address", "honest_gelu", "row0_only", "half_precision"]
    sources = [_fixture(n) for n in names]
    with Evaluator(task, EvalSettings(target="cuda", jobs=2, run_timeout_s=60)) as ev:
        checked = ev.check(sources)
        ok = [i for i, r in enumerate(checked) if r.correct]
        timed = ev.time([sources[i] for i in ok], [checked[i] for i in ok])
    return dict(zip(names, checked)), {names[i]: t for i, t in zip(ok, timed)}


@pytest.mark.gpu
def test_illegal_memory_access_costs_only_its_candidate(gpu_batch):
    checked, timed = gpu_batch
    assert checked["illegal_address"].status in (Status.CRASHED, Status.RUNTIME_ERROR)
    # It ran first in the batch; the honest kernel after it is unaffected (one process per candidate).
    assert checked["honest_gelu"].status is Status.CORRECT, checked["honest_gelu"].reason
    assert timed["honest_gelu"].runtime_ms > 0 and timed["honest_gelu"].speedup > 0


@pytest.mark.gpu
def test_uninitialised_output_fails(gpu_batch):
    checked, _ = gpu_batch
    assert checked["row0_only"].status is Status.INCORRECT, checked["row0_only"].reason


@pytest.mark.gpu
def test_half_precision_inside_fp32_fails(gpu_batch):
    checked, _ = gpu_batch
    assert checked["half_precision"].status is Status.INCORRECT, checked["half_precision"].reason
    assert any("fp16" in w or "half" in w for w in checked["half_precision"].warnings)


@pytest.mark.gpu
def test_cuda_example_pool_end_to_end(tmp_path):
    env = {**os.environ, "KOPT_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "kopt", "optimize", str(GELU / "task.py"), "--sampler", "replay", "--samples",
         str(GELU / "samples_cuda.jsonl"), "--k", "6", "--target", "cuda", "--set", "batch_size=256",
         "--out", str(tmp_path / "out"), "--json"],
        capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    statuses = [c["status"] for c in report["candidates"]]
    assert statuses[:4] == ["correct", "correct", "incorrect", "compile_error"]
    assert report["winner"]["index"] in (0, 1) and report["winner"]["speedup"] > 0
    assert (tmp_path / "out" / "kernel.cu").is_file()


@pytest.mark.gpu
def test_every_visible_gpu_checks_and_times():
    # The scheduling of tests/test_devices.py on real devices: each child pinned to its GPU by UUID.
    from kopt.evaluator import EvalSettings
    from kopt.executors import LocalExecutor
    from kopt.executors.devices import visible
    from kopt.task import load_task

    gpus = visible("cuda")
    assert gpus, "nvidia-smi or torch should list the GPU this test runs on"
    task = load_task(str(GELU / "task.py"), sets=["batch_size=256"])
    names = ["01_grid_stride", "02_float4", "03_wrong_constant"]
    sources = [(GELU / "candidates_cuda" / f"{n}.py").read_text() for n in names]
    ex = LocalExecutor(task, EvalSettings(target="cuda", jobs=2, run_timeout_s=120))
    try:
        checked = ex.check(sources)
        assert [r.status for r in checked] == [Status.CORRECT, Status.CORRECT, Status.INCORRECT]
        assert {r.device for r in checked} == {ex.devices[0].name}
        timed = ex.time(sources, checked)
        assert timed[0].runtime_ms > 0 and timed[1].runtime_ms > 0
        if len(ex.devices) > 1:
            assert {a.device for a in ex.evaluator.assignments if a.stage == "check"} > {ex.devices[0].id}
    finally:
        ex.close()
