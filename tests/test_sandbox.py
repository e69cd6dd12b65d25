"""sandbox.py on real child processes: each hostile snippet costs only itself (docs/evaluator.md §4-5)."""

from __future__ import annotations

import socket
import sys
import threading
import time

import pytest

from kopt.evaluator.sandbox import FLOOD_BYTES, Limits, detect_isolation, run_sandboxed


def py(code: str, **kw):
    kw.setdefault("timeout_s", 30)
    return run_sandboxed([sys.executable, "-c", code], **kw)


def test_isolation_is_detected_and_plain_run_works():
    assert detect_isolation() in ("bwrap", "unshare", "none")
    res = py("print('hello')")
    assert res.returncode == 0 and res.stdout.strip() == "hello" and res.killed is None
    assert res.isolation == detect_isolation()


def test_infinite_loop_is_killed_at_the_timeout():
    t0 = time.monotonic()
    res = py("while True: pass", timeout_s=2)
    assert res.killed == "timeout"
    assert time.monotonic() - t0 < 10
    assert "run timeout" in res.describe()


def test_sigsegv_is_reported():
    res = py("import ctypes; ctypes.string_at(0)")
    assert res.signal == 11 and res.killed is None
    assert "SIGSEGV" in res.describe()


def test_stdout_flood_is_cut():
    t0 = time.monotonic()
    res = py("import sys\nwhile True: sys.stdout.write('x' * 65536)", timeout_s=60)
    assert res.killed == "output flood"
    assert len(res.stdout) <= 1 << 20  # only the cap is kept
    assert time.monotonic() - t0 < 30
    assert f"{FLOOD_BYTES >> 20} MB" in res.describe()


def test_secret_env_var_is_not_visible(monkeypatch):
    monkeypatch.setenv("MY_API_KEY", "sk-do-not-leak")
    monkeypatch.setenv("SOME_TOKEN_VALUE", "tok")
    res = py("import os; print(sorted(os.environ))", env={"OTHER_SECRET": "x"})
    assert res.returncode == 0
    assert "MY_API_KEY" not in res.stdout and "SOME_TOKEN_VALUE" not in res.stdout
    assert "OTHER_SECRET" not in res.stdout and "sk-do-not-leak" not in res.stdout
    assert "PATH" in res.stdout


def test_tcp_connect_to_localhost_server_fails():
    if detect_isolation() == "none":
        pytest.skip("no network isolation on this machine")
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list = []
    stop = threading.Event()

    def accept_loop():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(conn)
            except (TimeoutError, OSError):
                pass

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    # Control: the server really accepts connections from this (unsandboxed) process.
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    time.sleep(0.5)
    assert len(accepted) == 1
    code = ("import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=3); print('CONNECTED')\n"
            "except OSError as e:\n"
            "    print('FAILED', e)\n")
    res = py(code)
    time.sleep(0.5)
    stop.set()
    thread.join()
    server.close()
    assert "FAILED" in res.stdout and "CONNECTED" not in res.stdout
    assert len(accepted) == 1  # the server saw no connection from the sandbox


def test_allocation_far_over_the_limit_fails():
    code = ("try:\n"
            "    b = bytearray(64 << 30); print('ALLOCATED')\n"
            "except MemoryError:\n"
            "    print('MEMORYERROR')\n")
    res = py(code, limits=Limits(as_mb=4096), max_rss_mb=2048)
    assert "MEMORYERROR" in res.stdout or res.killed == "memory"
    assert "ALLOCATED" not in res.stdout


def test_rss_watchdog_kills_a_growing_process():
    # No RLIMIT_AS (as on GPU processes): the watchdog alone must stop it.
    code = "import time\nx = []\nwhile True:\n    x.append(bytearray(64 << 20)); time.sleep(0.01)"
    res = py(code, max_rss_mb=512, limits=Limits(as_mb=None))
    assert res.killed == "memory"
    assert res.peak_rss_mb > 512


def test_os_exit_leaves_no_result_and_says_so():
    res = py("import os; os._exit(0)")
    assert res.returncode == 0 and res.killed is None
    assert "without a result" in res.describe()


def test_background_child_does_not_survive_the_timeout(tmp_path):
    marker = tmp_path / "alive"
    child = tmp_path / "child.py"
    child.write_text(f"import time\ntime.sleep(4)\nopen({str(marker)!r}, 'w').close()\n")
    code = ("import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, {str(child)!r}], start_new_session=True)\n"
            "time.sleep(60)")
    res = py(code, timeout_s=2, writable=[tmp_path])
    assert res.killed == "timeout"
    time.sleep(5)
    assert not marker.exists()


# ---- CUDA compile stage on a machine without a GPU (nvcc only) ------------------------------------------

CUDA_RELU = r'''
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

cuda_src = r"""
__global__ void relu_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] > 0.f ? x[i] : 0.f;
}
torch::Tensor relu_forward(torch::Tensor x) {
    auto xc = x.contiguous();
    auto y = torch::empty_like(xc);
    int64_t n = xc.numel();
    relu_kernel<<<(unsigned)((n + 255) / 256), 256>>>(xc.data_ptr<float>(), y.data_ptr<float>(), n);
    return y;
}
"""
ext = load_inline(name="relu_cuda", cpp_sources="torch::Tensor relu_forward(torch::Tensor x);",
                  cuda_sources=cuda_src, functions=["relu_forward"])


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.ext = ext

    def forward(self, x):
        return self.ext.relu_forward(x)
'''


@pytest.fixture
def cuda_evaluator(shared_kopt_home, monkeypatch, kernelbench):
    import shutil as _shutil

    from kopt.evaluator import EvalSettings, Evaluator
    from kopt.task import load_task

    if not _shutil.which("nvcc"):
        pytest.skip("nvcc is not installed")
    monkeypatch.setenv("KOPT_HOME", str(shared_kopt_home))
    task = load_task(str(kernelbench / "19_ReLU.py"), sets=["batch_size=16", "dim=4096"])
    with Evaluator(task, EvalSettings(target="cuda", jobs=2)) as ev:
        yield ev


@pytest.mark.slow
def test_cuda_candidate_compiles_with_nvcc_and_errors_are_captured(cuda_evaluator):
    broken = CUDA_RELU.replace("if (i < n) y[i]", "if (i < n) undeclared_thing[i]")
    ok, bad = cuda_evaluator.build([CUDA_RELU, broken])
    assert ok.failure is None, ok.failure.reason
    assert ok.extensions and len(ok.extensions[0].sha256) == 64
    assert bad.failure is not None and bad.failure.status.value == "compile_error"
    assert "undeclared_thing" in bad.failure.reason and "error" in bad.failure.reason


# ---- run_sandboxed/spawn extras and the clean baseline ---------------------------------------------------

def test_stdin_bytes_reach_the_child_and_limits_are_recorded(tmp_path):
    from kopt.evaluator.sandbox import Mounts

    res = run_sandboxed([sys.executable, "-I", "-S", "-c", "import sys; print(sys.stdin.read()[::-1])"],
                        timeout_s=30, work_dir=tmp_path, mounts=Mounts(), stdin_bytes=b"olleh")
    assert res.stdout.strip() == "hello"
    assert res.limits in ("cgroup-v1 pids+memory", "cgroup-v2 pids+memory", "rlimits")
    assert res.cpu_ns > 0 and res.isolation == detect_isolation()


def test_python_cmd_under_none_sees_only_kopt_child(tmp_path):
    from kopt.evaluator.sandbox import Mounts, python_cmd

    cmd = python_cmd([], level="none")
    cmd[3] = cmd[3].split("import runpy")[0] + (
        "import os, kopt_child; print(sorted(os.listdir(sys.path[0])), kopt_child.__name__)")
    res = run_sandboxed(cmd, timeout_s=30, work_dir=tmp_path, isolation="none", mounts=Mounts())
    assert res.stdout.split() == ["['kopt_child']", "kopt_child"], res.stderr


def test_baseline_sees_leftovers_and_trusted_file_changes(tmp_path):
    import subprocess

    from kopt.evaluator.sandbox import Mounts, baseline_changes, baseline_snapshot, spawn

    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "task.py").write_text("x = 1\n")
    before = baseline_snapshot(watch=[str(trusted)])
    assert baseline_changes(before) == []
    running = spawn(["/bin/sleep", "30"], work=tmp_path / "w", mounts=Mounts(), timeout_s=30)
    assert baseline_changes(before) == []  # a child still running is not a leftover
    stray = subprocess.Popen(["/bin/sleep", "30"])  # an unsandboxed process of kopt's that outlives its job
    (trusted / "task.py").write_text("x = 2  # changed\n")
    try:
        changes = baseline_changes(before)
    finally:
        stray.kill()
        stray.wait()
        running.kill("done")
        running.finish()
    assert any("outlived" in c for c in changes) and any("trusted file" in c for c in changes), changes
