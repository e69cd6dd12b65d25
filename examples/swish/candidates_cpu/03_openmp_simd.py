# Hand-written example candidate for kopt's examples (not model output): correct, fastest: OpenMP + simd; builds with -fopenmp as models write it.
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

_source = r"""
#include <torch/extension.h>
#include <cmath>
torch::Tensor forward_kernel(torch::Tensor x) {
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, "expects float32");
    auto y = torch::empty_like(x);
    const float* in = x.data_ptr<float>();
    float* out = y.data_ptr<float>();
    const int64_t n = x.numel();
    
    #pragma omp parallel for simd
    for (int64_t i = 0; i < n; ++i) {
        const float v = in[i];
        out[i] = (float)(v / (1.0f + std::exp(-v)));
    }
    return y;
}
"""

_ext = load_inline(name="swish_openmp_simd", cpp_sources=_source, functions=["forward_kernel"],
                   extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"])


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ext.forward_kernel(x.contiguous())
