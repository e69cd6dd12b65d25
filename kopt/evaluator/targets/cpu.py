"""CPU target: C++ (OpenMP allowed) through load_inline (the harness flushes an LLC-sized buffer per call)."""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess

NAME = "cpu"
GPU = False  # kernels run on the host; no device is needed to time them
PROMPT_TEMPLATE = "prompt_cpu.txt"  # templates/: what the sampler is asked to write for this target
# kopt owns the flags (hacking-and-sandbox.md TL;DR 4): candidate-supplied flags are dropped.
CFLAGS = ("-O3", "-march=native", "-fopenmp")
LDFLAGS = ("-fopenmp",)
CUDA_CFLAGS: tuple[str, ...] = ()
USE_PCH = True  # ~24 s plain vs ~10 s with torch/extension.h precompiled (measured: benchmarks/bench_evaluator.py)
FLUSH_FALLBACK_BYTES = 64 << 20


@functools.lru_cache(maxsize=1)
def device_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def host_isa() -> str:
    """What -march=native compiles for, as a short hash of the CPU model and its feature flags (/proc/cpuinfo):
    part of every extension's build key, so a build dir shared between machines never hands one CPU's binary
    to another (a VM may mask features of the same model)."""
    model, flags = device_name(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    blob = f"{platform.machine()}|{model}|{flags}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def toolchain() -> dict[str, str]:
    import torch

    out = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        from torch.utils.cpp_extension import get_cxx_compiler

        cxx = get_cxx_compiler()
        first = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
        out["cxx"] = first.splitlines()[0].strip() if first else cxx
    except Exception:  # noqa: BLE001 - a missing compiler shows up as a compile error later
        out["cxx"] = "unknown"
    return out


def build_env() -> dict[str, str]:
    return {}


def llc_bytes() -> int:
    """The L3 size from sysfs (e.g. "32768K"), else 64 MB."""
    try:
        raw = open("/sys/devices/system/cpu/cpu0/cache/index3/size").read().strip().upper()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(raw[-1], 1)
        return int(raw.rstrip("KMG")) * mult
    except (OSError, ValueError, IndexError):
        return FLUSH_FALLBACK_BYTES
