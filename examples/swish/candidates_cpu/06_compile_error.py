# Hand-written example candidate for kopt's examples (not model output): does not compile: returns a pointer as a tensor.
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

_source = r"""
#include <torch/extension.h>
#include <cmath>
torch::Tensor forward_kernel(torch::Tensor x) {
    auto y = torch::empty_like(x);
    float* out = y.data_ptr<float>();
    return out;
}
"""

_ext = load_inline(name="swish_compile_error", cpp_sources=_source, functions=["forward_kernel"])


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ext.forward_kernel(x.contiguous())
