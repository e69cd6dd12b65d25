"""Several devices in one box (kopt/executors/devices.py): which devices a run uses, and how the stages are
scheduled over them.

Without a GPU the scheduling runs for real on the CPU target, with two labelled stand-in devices: two real
Evaluators, real compiles and real sandboxed sessions; only the device each child would be pinned to is
a label. The same path on real GPUs is `test_every_visible_gpu_checks_and_times` in tests/test_gpu.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kopt.errors import ConfigError
from kopt.evaluator import EvalSettings
from kopt.executors.devices import Device, DeviceFleet, choose
from kopt.records import Status

REPO = Path(__file__).resolve().parent.parent
GELU = REPO / "examples" / "gelu"
H200 = [Device("0", "NVIDIA H200", "GPU-aaaa"), Device("1", "NVIDIA H200", "GPU-bbbb")]
MIXED = [Device("0", "NVIDIA RTX 4090", "GPU-cccc"), Device("1", "NVIDIA H200", "GPU-aaaa"),
         Device("2", "NVIDIA H200", "GPU-bbbb")]

CRASH = '''"""A GELU whose kernel writes through a null pointer (the CPU's illegal memory access)."""
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

_CPP = r"""
#include <torch/extension.h>
torch::Tensor gelu_crash(torch::Tensor x) {
    auto out = torch::empty_like(x);
    volatile uintptr_t address = 0;  // read at run time: the compiler cannot drop the store
    *reinterpret_cast<volatile float*>(address) = 1.0f;
    return out;
}
"""

_ext = load_inline(name="gelu_crash", cpp_sources=_CPP, functions=["gelu_crash"], verbose=False)


class ModelNew(nn.Module):
    def forward(self, x):
        return _ext.gelu_crash(x.contiguous())
'''


def test_every_visible_device_by_default_and_the_ones_named():
    assert choose(None, "cuda", H200) == (tuple(H200), ())
    assert choose("1", "cuda", H200) == ((H200[1],), ())
    assert choose(" 1,0 ", "cuda", H200)[0] == (H200[1], H200[0])


def test_kinds_are_never_mixed_the_largest_group_runs_and_the_rest_is_named():
    devices, notes = choose(None, "cuda", MIXED)
    assert devices == tuple(MIXED[1:])
    assert len(notes) == 1 and "0 (NVIDIA RTX 4090)" in notes[0] and "--devices 0" in notes[0]
    # On a tie the first kind named wins, so --devices decides.
    assert choose("0,1", "cuda", MIXED)[0] == (MIXED[0],)


@pytest.mark.parametrize("spec,needle", [("3", "no GPU 3 here (visible: 0, 1)"), ("0,0", "distinct"),
                                         ("0,", "distinct"), ("a", "no GPU a")])
def test_a_bad_device_list_is_a_config_error_naming_the_fix(spec, needle):
    with pytest.raises(ConfigError) as e:
        choose(spec, "cuda", H200)
    assert needle in str(e.value) and e.value.hint


def test_the_cpu_target_has_no_devices():
    assert choose(None, "cpu") == ((), ())
    with pytest.raises(ConfigError, match="CPU target has none"):
        choose("0", "cpu")


def test_which_device_ran_it_is_not_part_of_the_verdict_key():
    # Identical GPUs share one cache: the device's kind is in the machine fingerprint, its index nowhere.
    assert EvalSettings(device="GPU-aaaa").key() == EvalSettings(device="GPU-bbbb").key() == EvalSettings().key()


def test_devices_on_the_cpu_target_is_a_one_line_error_before_anything_runs(tmp_path):
    env = {**os.environ, "KOPT_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "kopt", "optimize", str(GELU / "task.py"), "--sampler", "replay",
                           "--samples", str(GELU / "samples_cpu.jsonl"), "--k", "2", "--target", "cpu",
                           "--devices", "0", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr  # a KoptError: one line and a hint (kopt/cli/boundary.py)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert "--devices selects GPUs" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) <= 2, proc.stderr
    assert not (tmp_path / "out").exists()


def _overlap(a, b) -> bool:
    return a.start_s < b.end_s and b.start_s < a.end_s


@pytest.mark.slow
def test_checks_spread_over_the_devices_and_timing_is_exclusive_per_device():
    from kopt.task import load_task

    task = load_task(str(GELU / "task.py"), sets=["batch_size=8", "dim=2048"])
    names = ["01_naive_single_thread", "02_openmp", "05_wrong_constant", "07_compile_error"]
    sources = [(GELU / "candidates_cpu" / f"{n}.py").read_text() for n in names] + [CRASH]
    names.append("crash")
    stand_ins = (Device("0", "stand-in device"), Device("1", "stand-in device"))
    settings = EvalSettings(target="cpu", jobs=2, threads=1, min_calls=20, min_time_s=0.2, compile_baseline=False)
    fleet = DeviceFleet(task, settings, stand_ins)
    try:
        fleet.prepare()
        checked = fleet.check(sources)
        verdicts = dict(zip(names, checked))
        assert verdicts["01_naive_single_thread"].status is Status.CORRECT, verdicts["01_naive_single_thread"].reason
        assert verdicts["02_openmp"].status is Status.CORRECT, verdicts["02_openmp"].reason
        assert verdicts["05_wrong_constant"].status is Status.INCORRECT
        assert verdicts["07_compile_error"].status is Status.COMPILE_ERROR
        # A crash costs its own candidate on its own device; the device's next session is a fresh process.
        assert verdicts["crash"].status is Status.CRASHED, verdicts["crash"].reason
        assert {r.device for r in checked} == {"stand-in device"}
        checks = [a for a in fleet.assignments if a.stage == "check"]
        assert sorted(a.index for a in checks) == list(range(len(sources)))  # each once, on one device
        assert {a.device for a in checks} == {"0", "1"}

        timed = fleet.time(sources, checked)
        assert timed[0].runtime_ms and timed[1].runtime_ms and timed[2] is checked[2]
        times = [a for a in fleet.assignments if a.stage == "time"]
        assert sorted(a.index for a in times) == [0, 1]
        assert {a.device for a in times} == {"0", "1"}  # the two timings went to different devices
        for dev in ("0", "1"):  # exclusive: nothing else on a device while a candidate is timed there
            mine = [a for a in fleet.assignments if a.device == dev]
            assert not any(_overlap(a, b) for i, a in enumerate(mine) for b in mine[i + 1:]), mine
    finally:
        fleet.close()
