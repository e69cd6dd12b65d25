"""CUDA target: CUDA sources through load_inline (nvcc), timed with CUDA events and an L2 flush.

Untested on this machine (no GPU); written after hacking-and-sandbox.md §3: one event pair per call, a
device-wide synchronize before recording the end event (hack #5: side streams), persisting-L2 reset and a
>= 2x L2 flush before every call (hack #15), and no RLIMIT_AS on GPU processes (§4).
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess
import time

NAME = "cuda"
GPU = True  # checking and timing need a CUDA device; without one kopt only compiles
PROMPT_TEMPLATE = "prompt_cuda.txt"  # templates/: what the sampler is asked to write for this target
CFLAGS = ("-O3", "-march=native", "-fopenmp")  # host side of main.cpp; same as cpu so the PCH is shared
LDFLAGS = ("-fopenmp",)
CUDA_CFLAGS = ("-O3",)
USE_PCH = True
DEFAULT_ARCH = "9.0"  # H100 when no GPU is visible (compile-only machines, CI)


@functools.lru_cache(maxsize=1)
def arch() -> str:
    """The one arch to build for: $KOPT_CUDA_ARCH, else the visible GPU's, else 9.0."""
    env = os.environ.get("KOPT_CUDA_ARCH")
    if env:
        return env
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"{major}.{minor}"
    except Exception:  # noqa: BLE001
        pass
    return DEFAULT_ARCH


@functools.lru_cache(maxsize=1)
def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except Exception:  # noqa: BLE001
        pass
    return f"no GPU visible (compile only, sm_{arch().replace('.', '')})"


@functools.lru_cache(maxsize=1)
def toolchain() -> dict[str, str]:
    from kopt.evaluator.targets import cpu

    out = dict(cpu.toolchain())
    nvcc = shutil.which("nvcc") or (os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"))
    try:
        text = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"release ([0-9.]+)", text)
        out["nvcc"] = m.group(1) if m else "unknown"
    except OSError:
        out["nvcc"] = "missing"
    out["arch"] = arch()
    out["host"] = platform.machine()
    return out


@functools.lru_cache(maxsize=1)
def cuda_home() -> str | None:
    """$CUDA_HOME, else the toolkit that `nvcc` on PATH belongs to, else /usr/local/cuda."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc:  # /usr/local/bin/nvcc may be a wrapper script: accept the dir only if it is a toolkit
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return "/usr/local/cuda" if os.path.isdir("/usr/local/cuda") else None


def build_env() -> dict[str, str]:
    # One target arch per build, two nvcc jobs per build (the brief: MAX_JOBS=2).
    env = {"TORCH_CUDA_ARCH_LIST": arch(), "MAX_JOBS": "2"}
    home = cuda_home()
    if home:
        env["CUDA_HOME"] = home
    return env


class Timer:
    """CUDA events per call; the end event is recorded after torch.cuda.synchronize() so work on side
    streams is inside the window. `clock` is the host clock bound before candidate import."""

    def __init__(self, clock=time.perf_counter_ns):
        import torch

        self.torch = torch
        self.clock = clock
        torch.backends.cuda.matmul.allow_tf32 = False  # §2: pin precision for matmul and cuDNN
        torch.backends.cudnn.allow_tf32 = False
        l2 = torch.cuda.get_device_properties(0).L2_cache_size or (50 << 20)
        self.flush_buf = torch.empty(max(2 * l2, 256 << 20) // 4, dtype=torch.int32, device="cuda")
        self.Event = torch.cuda.Event
        self.synchronize = torch.cuda.synchronize
        self._reset_persisting = None
        try:  # hack #15: an access-policy window survives a plain flush
            import ctypes

            rt = ctypes.CDLL("libcudart.so")
            self._reset_persisting = rt.cudaCtxResetPersistingL2Cache
        except OSError:
            pass

    def flush(self) -> None:
        if self._reset_persisting is not None:
            self._reset_persisting()
        self.flush_buf.zero_()

    def time_call(self, fn) -> tuple[float, object]:
        self.synchronize()
        start, end = self.Event(enable_timing=True), self.Event(enable_timing=True)
        start.record()
        out = fn()
        self.synchronize()
        end.record()
        end.synchronize()
        return start.elapsed_time(end), out

    def sync(self) -> None:
        self.synchronize()
