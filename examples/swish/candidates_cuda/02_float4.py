# Hand-written example candidate for kopt's examples (not model output): correct, faster: float4 vector loads.
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

_cuda_source = r"""
#include <torch/extension.h>
#include <cuda_runtime.h>

__global__ void swish_kernel(const float* __restrict__ in, float* __restrict__ out, int64_t n) {
    // float4 loads: four elements per thread, a scalar tail for n % 4.
    const int64_t i4 = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    const int64_t n4 = n / 4;
    if (i4 < n4) {
        float4 q = reinterpret_cast<const float4*>(in)[i4];
        float r[4] = {q.x, q.y, q.z, q.w};
        #pragma unroll
        for (int j = 0; j < 4; ++j) { const float v = r[j]; r[j] = v / (1.0f + __expf(-v)); }
        reinterpret_cast<float4*>(out)[i4] = make_float4(r[0], r[1], r[2], r[3]);
    }
    if (i4 == 0) {
        for (int64_t i = n4 * 4; i < n; ++i) { const float v = in[i]; out[i] = v / (1.0f + __expf(-v)); }
    }
}

torch::Tensor forward_kernel(torch::Tensor x) {
    TORCH_CHECK(x.is_cuda() && x.scalar_type() == torch::kFloat32, "expects a float32 CUDA tensor");
    auto y = torch::empty_like(x);
    const int64_t n = x.numel();
    const int threads = 256;
    const int64_t blocks = (n / 4 + 1 + threads - 1) / threads;
    swish_kernel<<<blocks, threads>>>(x.data_ptr<float>(), y.data_ptr<float>(), n);
    return y;
}
"""

_cpp_source = "torch::Tensor forward_kernel(torch::Tensor x);"

_ext = load_inline(name="swish_cuda_float4", cpp_sources=_cpp_source, cuda_sources=_cuda_source, functions=["forward_kernel"])


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ext.forward_kernel(x.contiguous())
