"""What a CUDA candidate's device-code compile costs, and what the two cuts are worth (compile only: no GPU
is needed, only nvcc).

Three compiles of the same kernel (examples/gelu/candidates_cuda/01_grid_stride.py), each `nvcc -c` the way
torch's cpp_extension builds a load_inline `cuda.cu`, timed one after the other in one run:

  A  torch headers, every architecture a CUDA wheel of torch is built for (TORCH_CUDA_ARCH_LIST of the
     cu12x wheels: 7.5 8.0 8.6 8.9 9.0 10.0 12.0), what a build without an arch list on a mixed fleet does;
  B  torch headers, one architecture (kopt: targets/cuda.arch(), the visible GPU's or $KOPT_CUDA_ARCH);
  C  one architecture, the device code alone: the kernel and a launcher over raw pointers with only
     <cuda_runtime.h>; the torch::Tensor wrapper goes to the C++ side, which kopt's precompiled header
     already covers. Possible only when the candidate's CUDA source keeps torch types out of the kernel file.

    python benchmarks/bench_nvcc.py [--arch 9.0]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CANDIDATE = REPO / "examples" / "gelu" / "candidates_cuda" / "01_grid_stride.py"
WHEEL_ARCHS = ("7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0")

DEVICE_ONLY = r"""
#include <cuda_runtime.h>
#include <cstdint>

__global__ void gelu_kernel(const float* __restrict__ in, float* __restrict__ out, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)blockDim.x * gridDim.x) {
        const float v = in[i];
        out[i] = 0.5f * v * (1.0f + tanhf(0.7978845608f * (v + 0.044715f * v * v * v)));
    }
}

extern "C" void gelu_launch(const float* in, float* out, int64_t n, cudaStream_t stream) {
    const int threads = 256;
    const int64_t blocks = (n + threads - 1) / threads;
    gelu_kernel<<<blocks, threads, 0, stream>>>(in, out, n);
}
"""


def gencode(archs) -> list[str]:
    out = []
    for a in archs:
        num = a.replace(".", "")
        out += [f"-gencode=arch=compute_{num},code=sm_{num}"]
    return out


def torch_includes() -> list[str]:
    import torch.utils.cpp_extension as cx

    paths = cx.include_paths() + [sysconfig.get_path("include")]
    return [f"-I{p}" for p in paths]


def nvcc_time(src: str, flags: list[str], work: Path, name: str) -> float:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise SystemExit("nvcc is not on PATH: install the CUDA toolkit (compile only, no GPU needed)")
    cu = work / f"{name}.cu"
    cu.write_text(src)
    cmd = [nvcc, "-c", str(cu), "-o", str(work / f"{name}.o"), "-O3", "-std=c++17", "--expt-relaxed-constexpr",
           "-Xcompiler", "-fPIC", *flags]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"nvcc failed for {name}:\n{proc.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default=os.environ.get("KOPT_CUDA_ARCH", "9.0"))
    a = ap.parse_args()
    import torch.utils.cpp_extension as cx

    text = CANDIDATE.read_text()
    cuda_src = re.search(r'_cuda_source = r"""(.*?)"""', text, re.S).group(1)
    # What load_inline writes into cuda.cu: its implicit headers, then the candidate's source.
    full = "#include <torch/types.h>\n#include <cuda.h>\n#include <cuda_runtime.h>\n" + cuda_src
    torch_flags = torch_includes() + list(cx.COMMON_NVCC_FLAGS) + ["-DTORCH_EXTENSION_NAME=bench_nvcc",
                                                                   "-DTORCH_API_INCLUDE_EXTENSION_H"]
    work = Path(tempfile.mkdtemp(prefix="bench-nvcc-"))
    try:
        rows = [
            ("A  torch headers, 7 archs", nvcc_time(full, torch_flags + gencode(WHEEL_ARCHS), work, "a")),
            (f"B  torch headers, sm_{a.arch.replace('.', '')}", nvcc_time(full, torch_flags + gencode([a.arch]), work, "b")),
            (f"C  device code only, sm_{a.arch.replace('.', '')}", nvcc_time(DEVICE_ONLY, gencode([a.arch]), work, "c")),
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"nvcc {subprocess.run(['nvcc', '--version'], capture_output=True, text=True).stdout.split()[-1]}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; {CANDIDATE.relative_to(REPO)}")
    base = rows[0][1]
    for name, s in rows:
        print(f"{name:<34} {s:7.1f} s   {base / s:5.1f}x faster than A")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
