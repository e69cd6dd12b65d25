"""CUDA target: CUDA sources through load_inline (nvcc), timed with CUDA events and an L2 flush.

The GPU rules live in the child harness (kopt_child/harness.py): a device-wide synchronize inside every call
(hack #5: side streams), the persisting-L2 limit set to 0 and reset plus a >= 2x L2 flush after every call
(hack #15; failing to set it up is a fatal setup error), TF32 off; one process and one CUDA context per
candidate (no spare sessions on cuda), and no RLIMIT_AS on GPU processes.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess

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
