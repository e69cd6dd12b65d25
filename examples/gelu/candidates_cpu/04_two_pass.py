# Hand-written example candidate for kopt's examples (not model output): correct, slower: two passes through a temporary.
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

_source = r"""
#include <torch/extension.h>
#include <cmath>
torch::Tensor forward_kernel(torch::Tensor x) {
    auto inner = torch::empty_like(x);
    auto y = torch::empty_like(x);
    const float* in = x.data_ptr<float>();
    float* t = inner.data_ptr<float>();
    float* out = y.data_ptr<float>();
    const int64_t n = x.numel();
    #pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) t[i] = std::tanh(0.7978845608f * (in[i] + 0.044715f * in[i] * in[i] * in[i]));
    #pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) out[i] = 0.5f * in[i] * (1.0f + t[i]);
    return y;
}
"""

_ext = load_inline(name="gelu_two_pass", cpp_sources=_source, functions=["forward_kernel"])


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ext.forward_kernel(x.contiguous())
