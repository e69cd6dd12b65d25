"""Child sessions end to end (real sandboxed children, no compiler): the child is hermetic, timing is
kopt's clock whatever the child's clock says, work finished after the call returns is caught by the hash
committed inside the call, and ghost calls tell a decoy from an honest out-parameter kernel."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kopt.evaluator.calls import Trial, clock_disagrees, flush_skipped, overhead_ns, per_call_ms, redraw, timed_run
from kopt.evaluator.session import ModelSpec, Session, SessionFailure, SessionSpec
from kopt.records import Status

SLEEPY = """
import time
import torch
import torch.nn as nn
{attack}
class Model(nn.Module):
    def forward(self, x):
        t = time.perf_counter()
        while time.perf_counter() - t < 0.004:  # 4 ms of busy work per call
            pass
        return x * 2
"""

CLOCK_PATCH = """
import sys
_h = [m for name, m in sys.modules.items() if name.endswith("harness")][0]
_fake = [0]
def _tick():
    _fake[0] += 1000
    return _fake[0]
setattr(_h, "_perf_ns", _tick)  # the harness's own bound clock, replaced: every call reads ~1 us
"""

MODULES = """
import json, os, sys
import torch.nn as nn
with open(os.path.join(os.environ["HOME"], "modules.json"), "w") as f:
    json.dump(sorted(m for m in sys.modules if m.startswith("kopt")), f)
class Model(nn.Module):
    def forward(self, x):
        return x + 1
"""

FLUSH_AS_SLEEP = """
import sys, time
_h = [m for name, m in sys.modules.items() if name.endswith("harness")][0]
_cls = [getattr(_h, a) for a in dir(_h) if "flush" in a.lower() and isinstance(getattr(_h, a), type)][0]
_real, _spent = _cls.__call__, []
def _light(self, *a, **k):
    if not _spent:  # one real flush, to learn how long a flush takes on kopt's clock
        t0 = time.perf_counter()
        _real(self, *a, **k)
        _spent.append(time.perf_counter() - t0)
    else:
        time.sleep(_spent[0])  # the same gap, no work: the cache stays warm
setattr(_cls, "__call__", _light)
"""

AFTER_RETURN = """
import threading, time
import torch
import torch.nn as nn
class Model(nn.Module):
    def forward(self, x):
        out = torch.zeros_like(x)
        def finish():
            time.sleep(0.05)
            out.copy_(x * 3)  # the real work, after the call returned
        threading.Thread(target=finish).start()
        return out
"""


def _session(d: Path, body: str, what: str = "the candidate") -> Session:
    d.mkdir(parents=True, exist_ok=True)
    (d / "task.py").write_text(body)
    spec = SessionSpec(module=str(d / "task.py"), cls="Model", models=(ModelSpec(),), what=what)
    return Session(spec, work=d / "work", readable=[d], timeout_s=120, max_rss_mb=4096)


def test_only_kopt_child_modules_are_loaded_when_the_candidate_is_imported(tmp_path):
    import torch

    with _session(tmp_path / "c", MODULES) as s:
        s.start()
        s.flush()
        s.call(0, 0, [torch.ones(3)])
    loaded = [m for m in json.loads((tmp_path / "c" / "work" / "modules.json").read_text())
              if m not in ("kopt_task", "kopt_candidate")]  # the module being imported itself
    assert not [m for m in loaded if m == "kopt" or m.startswith("kopt.")], loaded
    assert loaded and all(m == "kopt_child" or m.startswith("kopt_child.") for m in loaded), loaded
    assert "kopt_child.harness" in loaded and "kopt_child.protocol" in loaded


def test_a_patched_child_clock_does_not_move_kopts_timing(tmp_path):
    import torch

    trials = [Trial(model=0, inputs=[torch.randn(64)], outputs=None)]
    runs = {}
    for name, attack in (("reference", ""), ("candidate", CLOCK_PATCH)):
        with _session(tmp_path / name, SLEEPY.format(attack=attack)) as s:
            s.start()
            runs[name] = timed_run(s, trials, [0], min_calls=20, min_time_s=0.1, max_bytes=1 << 20,
                                   reveal=name == "candidate")
    overhead = overhead_ns(runs["reference"])
    ref_ms = sorted(per_call_ms(runs["reference"], overhead))[10]
    cand_ms = sorted(per_call_ms(runs["candidate"], overhead))[10]
    assert ref_ms > 3.0 and cand_ms > 3.0, (ref_ms, cand_ms)  # ~4 ms each, by kopt's clock
    assert max(c.child_ns for c in runs["candidate"].calls) < 1e6  # the child's clock said ~1 us
    assert clock_disagrees(runs["candidate"], overhead)
    assert clock_disagrees(runs["reference"], overhead) is None
    revealed = runs["candidate"].revealed
    assert len([r for r in revealed if r.kind == "timed"]) >= 16 and [r for r in revealed if r.kind == "check"]
    for r in revealed:
        assert torch.equal(r.outs[0], r.inputs[0] * 2)


def test_a_flush_replaced_by_a_sleep_is_seen_on_the_childs_cpu_time(tmp_path):
    """The same gap on kopt's clock, but kopt reads the child's CPU time over each done->flushed window."""
    import torch

    trials = [Trial(model=0, inputs=[torch.randn(64)], outputs=None)]
    runs = {}
    for name, attack in (("reference", ""), ("candidate", FLUSH_AS_SLEEP)):
        with _session(tmp_path / name, SLEEPY.format(attack=attack)) as s:
            s.start()
            runs[name] = timed_run(s, trials, [0], min_calls=20, min_time_s=0.1, max_bytes=1 << 20, reveal=False)
    ref, cand = runs["reference"], runs["candidate"]
    assert len(cand.flush_cpu_ns) == len(cand.flush_ns) >= 20
    assert min(cand.flush_ns) > 0.3 * sorted(ref.flush_ns)[len(ref.flush_ns) // 2]  # the gap is still there
    why = flush_skipped(cand, [ref])
    assert why and "waited instead of flushing" in why, why
    assert flush_skipped(ref, [ref]) is None


def test_work_finished_after_the_call_returned_is_not_what_kopt_judges(tmp_path):
    """The outputs are read and hashed inside the call: a thread that fills them later changes nothing kopt
    sees (the revealed bytes are the committed ones, so the judge sees the unfinished output)."""
    import time

    import torch

    with _session(tmp_path / "c", AFTER_RETURN) as s:
        s.start()
        s.flush()
        rec = s.call(0, 0, [torch.ones(8)])
        time.sleep(0.3)
        outs, after = s.reveal(0, rec.h, 1 << 20)
    assert torch.equal(outs[0], torch.zeros(8)) and torch.equal(after[0], torch.ones(8))


def test_a_hanging_child_is_a_timeout(tmp_path):
    body = "import time\nimport torch.nn as nn\nclass Model(nn.Module):\n    def forward(self, x):\n        time.sleep(600)\n"
    import torch

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "task.py").write_text(body)
    spec = SessionSpec(module=str(tmp_path / "c" / "task.py"), cls="Model", models=(ModelSpec(),))
    with pytest.raises(SessionFailure) as e:
        with Session(spec, work=tmp_path / "c" / "w", readable=[tmp_path / "c"], timeout_s=25, max_rss_mb=4096) as s:
            s.start()
            s.call(0, 0, [torch.ones(2)])
    assert e.value.status is Status.TIMEOUT and "run timeout" in e.value.reason


def test_a_child_killed_by_the_machine_is_a_transient_crash(tmp_path):
    """A SIGKILL kopt did not send (what the kernel's OOM killer does on a machine short of memory) is a crash
    marked transient, so the pool does not cache it; a crash kopt caused (its memory limit) is not."""
    import os
    import signal

    import torch

    body = "import torch.nn as nn\nclass Model(nn.Module):\n    def forward(self, x):\n        return x\n"
    with pytest.raises(SessionFailure) as e:
        with _session(tmp_path / "c", body) as s:
            s.start()
            s.call(0, 0, [torch.ones(2)])
            os.kill(s.sandboxed.pid, signal.SIGKILL)
            s.call(1, 0, [torch.ones(2)])
    assert e.value.status is Status.CRASHED and e.value.transient, e.value.reason
    assert "not by kopt" in e.value.reason
    hog = "import torch.nn as nn\nclass Model(nn.Module):\n    def forward(self, x):\n        return b'x' * (1 << 30)\n"
    d = tmp_path / "d"
    d.mkdir()
    (d / "task.py").write_text(hog)
    spec = SessionSpec(module=str(d / "task.py"), cls="Model", models=(ModelSpec(),))
    with pytest.raises(SessionFailure) as e:
        with Session(spec, work=d / "work", readable=[d], timeout_s=60, max_rss_mb=512) as s:
            s.start()
            s.call(0, 0, [torch.ones(2)])
    assert e.value.status is Status.CRASHED and not e.value.transient, e.value.reason


# ---- in-process: the parts of the harness that need no child --------------------------------------------

def test_redraw_keeps_every_domain_and_changes_every_tensor():
    import torch

    x = torch.rand(32, 16) + 0.5  # positive: a log/sqrt reference stays defined
    idx = torch.randperm(64)[:40]
    mask = torch.rand(50) > 0.5
    rng = random.Random(1)
    a, b = redraw([x, idx, mask, 7], rng), redraw([x, idx, mask, 7], rng)
    assert (a[0] > 0).all() and not torch.equal(a[0], x) and not torch.equal(a[0], b[0])
    assert float(((a[0] - x).abs() / x).max()) <= 1e-2 * (1 + 1e-5)
    assert sorted(a[1].tolist()) == sorted(idx.tolist()) and not torch.equal(a[1], idx)
    assert int(a[2].sum()) == int(mask.sum()) and a[3] == 7


def test_ghost_calls_nan_fill_outputs_and_written_arguments():
    """An honest out-parameter kernel (Python allocates, the extension fills and returns nothing) is not a
    decoy: its output turns NaN in a ghost call. A decoy whose output ignores the extension stays correct."""
    import types

    import torch

    from kopt.evaluator.kopt_child import harness

    ext = types.SimpleNamespace(fill=lambda x, out: torch.clamp(x, min=0, out=out), copy=lambda b: b.clone())
    wrapped = harness._Extension(ext, torch)
    x = torch.randn(64)
    harness._State.ghost = True
    try:
        out = torch.empty_like(x)
        wrapped.fill(x, out)  # honest: fills `out`
        assert torch.isnan(out).all()
        assert not torch.isnan(x).any()  # an argument the call did not write is left alone
        bias = torch.randn(64)
        got = wrapped.copy(bias)
        assert torch.isnan(got).all()
        decoy = torch.relu(x)  # the decoy's output never used `got`
        assert not torch.isnan(decoy).any()
    finally:
        harness._State.ghost = False
    assert harness._State.ext_calls >= 2


@pytest.mark.gpu
def test_a_cuda_session_is_one_process_and_one_context(tmp_path):
    """GPU rule: while a candidate's session runs, the device's compute-process list is that child alone
    (kopt's parent never opens a CUDA context); the harness set up the persisting-L2 reset, or the session
    would have failed at start with a setup error."""
    import subprocess

    import torch

    d = tmp_path / "c"
    d.mkdir()
    (d / "task.py").write_text("import torch.nn as nn\nclass Model(nn.Module):\n    def forward(self, x):\n"
                               "        return x * 2\n")
    spec = SessionSpec(module=str(d / "task.py"), cls="Model", models=(ModelSpec(),), device="cuda")
    with Session(spec, work=d / "w", readable=[d], timeout_s=120, max_rss_mb=None, gpu=True) as s:
        s.start()
        rec = s.call(0, 0, [torch.ones(1024)])
        apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.split()
        outs, _ = s.reveal(0, rec.h, 1 << 20)
        child = s.sandboxed.pid
    assert torch.equal(outs[0], torch.ones(1024) * 2)
    assert len(apps) == 1 and int(apps[0]) == child, apps
    assert not torch.cuda.is_initialized()  # the parent holds no context of its own
