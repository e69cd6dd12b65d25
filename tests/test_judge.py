"""judge.compare_all with the float64 oracle, on real tensors: kernels less accurate than the reference (a crude
erf, fp16 accumulation, TF32 inputs, bf16 rounding) fail; honest reorderings (blocked, simd-lane and threaded
sums, another erf, the example pools' correct kernels, re-implemented here formula for formula) pass."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kopt.evaluator import judge
from kopt.evaluator.oracle import error_stats, float64_model, reference_errors, run_oracle

SQRT1_2 = 0.7071067811865476


class Gelu(nn.Module):  # KernelBench 26_GELU_ (and the attacked bias+GELU task): the exact erf GELU
    def forward(self, x):
        return F.gelu(x)


class TanhGelu(nn.Module):  # examples/gelu/task.py
    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Swish(nn.Module):  # examples/swish/task.py
    def forward(self, x):
        return x * torch.sigmoid(x)


class RowSum(nn.Module):  # KernelBench 47_Sum_reduction_over_a_dimension
    def forward(self, x):
        return torch.sum(x, dim=1, keepdim=True)


class MatMul(nn.Module):
    def forward(self, a, b):
        return a @ b


def _setup(model, *inputs):
    with torch.no_grad():
        refs = [model(*inputs)]
    run = run_oracle(model, list(inputs))
    assert run.error == ""
    return refs, list(run.outputs)


def _fan_in(model, *inputs):
    return run_oracle(model, list(inputs)).fan_in


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _erf_as_7_1_25(z):
    """Abramowitz & Stegun 7.1.25: three terms, |error| <= 2.5e-5: a cheap erf inside an fp32 task."""
    a = z.abs()
    t = 1.0 / (1.0 + 0.47047 * a)
    return torch.sign(z) * (1.0 - (0.3480242 * t - 0.0958798 * t * t + 0.7478556 * t ** 3) * torch.exp(-a * a))


def _oracle_only(out, refs, oracle) -> str:
    return judge.compare_oracle(out, refs[0], oracle[0], 0) or ""


def _ratio(out, ref, oracle):
    return (error_stats(out, oracle).rel_max / error_stats(ref, oracle).rel_max,
            error_stats(out, oracle).rel_l2 / error_stats(ref, oracle).rel_l2)


def test_crude_erf_gelu_fails_the_oracle_rule_but_passes_kernelbench_tolerance():
    x = _x(16, 4099)
    refs, oracle = _setup(Gelu(), x)
    crude = 0.5 * x * (1.0 + _erf_as_7_1_25(x * SQRT1_2))
    assert judge.compare_all([crude], refs, None, None) is None  # what let it through before
    why = judge.compare_all([crude], refs, None, None, oracle=oracle)
    assert why is not None and judge.LESS_ACCURATE in why and "float32 task" in why
    by_max, by_l2 = _ratio(crude, refs[0], oracle[0])
    assert by_max > 15 and by_l2 > 100  # measured: ~27x and ~190x the reference's own error


def test_honest_erf_gelus_pass():
    x = _x(16, 4099, seed=1)
    refs, oracle = _setup(Gelu(), x)
    tanh_free = 0.5 * x * (1.0 + torch.erf(x * SQRT1_2))  # the formula, in another order than ATen's
    assert judge.compare_all([tanh_free], refs, None, None, oracle=oracle) is None
    via_erfc = 0.5 * x * torch.erfc(-x * SQRT1_2)
    assert judge.compare_all([via_erfc], refs, None, None, oracle=oracle) is None


def test_example_pools_correct_kernels_pass_and_wrong_ones_fail():
    x = torch.cat([_x(8, 2051, seed=2), torch.rand(8, 2051, generator=torch.Generator().manual_seed(3))])
    refs, oracle = _setup(TanhGelu(), x)
    correct = {  # examples/gelu/candidates_cpu 01, 02, 03, 09, formula for formula in fp32 (09 in fp64)
        "01 pow+tanh": 0.5 * x * (1.0 + torch.tanh(0.7978845608 * (x + 0.044715 * torch.pow(x, 3.0)))),
        "02 x*x*x": 0.5 * x * (1.0 + torch.tanh(0.7978845608 * (x + 0.044715 * x * x * x))),
        "03 one exp": x / (1.0 + torch.exp(-1.5957691216 * (x + 0.044715 * x * x * x))),
        "09 double": (0.5 * x.double() * (1 + torch.tanh(0.7978845608028654 * (x.double() + 0.044715 * x.double() ** 3)))).float(),
    }
    for name, out in correct.items():
        assert judge.compare_all([out], refs, None, None, oracle=oracle) is None, name
    erf = 0.5 * x * (1.0 + torch.erf(x * SQRT1_2))  # 08: the exact GELU is not this task's formula
    assert judge.compare_all([erf], refs, None, None, oracle=oracle) is not None

    refs, oracle = _setup(Swish(), x)
    for name, out in {"01-03 v/(1+exp(-v))": x / (1.0 + torch.exp(-x)),
                      "07 double": (x.double() / (1 + torch.exp(-x.double()))).float()}.items():
        assert judge.compare_all([out], refs, None, None, oracle=oracle) is None, name
    assert judge.compare_all([x * torch.exp(-x)], refs, None, None, oracle=oracle) is not None


def _naive(x):
    """A single-accumulator fp32 loop over each row (numpy's accumulate adds strictly left to right)."""
    import numpy as np

    return torch.from_numpy(np.add.accumulate(x.numpy(), axis=1, dtype=np.float32)[:, -1:].copy())


def _sequential(x, lanes, dtype=torch.float32):
    """Sum each row with `lanes` accumulators of `dtype` (lane j takes columns j, j+lanes, ...), then add the
    lanes left to right: 16 is a simd kernel; rows stay vectorised so it is quick."""
    if lanes == 1 and dtype == torch.float32:
        return _naive(x)
    acc = torch.zeros(x.shape[0], lanes, dtype=dtype)
    for k in range(0, x.shape[1], lanes):
        acc += x[:, k:k + lanes].to(dtype)
    out = torch.zeros(x.shape[0], dtype=dtype)
    for j in range(lanes):
        out += acc[:, j]
    return out.float().unsqueeze(1)


def _threads(x, threads):
    """An OpenMP-style sum: each of `threads` contiguous chunks summed sequentially, partials added in order."""
    chunks = x.view(x.shape[0], threads, -1)
    parts = torch.zeros(x.shape[0], threads)
    for k in range(chunks.shape[2]):
        parts += chunks[:, :, k]
    out = torch.zeros(x.shape[0])
    for j in range(threads):
        out += parts[:, j]
    return out.unsqueeze(1)


def test_reductions_honest_orders_pass_fp16_accumulation_fails():
    x = _x(16, 4096, seed=4)
    refs, oracle = _setup(RowSum(), x)
    assert _fan_in(RowSum(), x) == (4096,)
    for name, out in {"naive loop": _sequential(x, 1), "16 simd lanes": _sequential(x, 16),
                      "blocked 64": _sequential(x.view(16, 64, 64).transpose(1, 2).reshape(16, 4096), 64),
                      "8 threads": _threads(x, 8)}.items():
        assert judge.compare_all([out], refs, None, None, oracle=oracle) is None, name
        assert judge.compare_all([out], refs, None, None, oracle=oracle, fan_in=(4096,)) is None, name
    half = _sequential(x, 16, torch.float16)
    assert judge.compare_all([half], refs, None, None, oracle=oracle) is not None
    assert judge.LESS_ACCURATE in _oracle_only(half, refs, oracle)  # on its own too, not only rel-L2 1e-3


def test_a_long_naive_sum_passes_with_its_fan_in_a_crude_erf_does_not_gain_from_it():
    x = _x(8, 65536, seed=11)
    refs, oracle = _setup(RowSum(), x)
    fan = _fan_in(RowSum(), x)
    assert fan == (65536,)
    naive = _naive(x)  # ~100 ulps off where torch's cascaded sum is ~3.5
    assert judge.LESS_ACCURATE in _oracle_only(naive, refs, oracle)  # without the length allowance
    assert judge.compare_all([naive], refs, None, None, oracle=oracle, fan_in=fan) is None
    assert judge.compare_all([_sequential(x, 16, torch.float16)], refs, None, None, oracle=oracle, fan_in=fan)

    g = _x(16, 4099)
    refs, oracle = _setup(Gelu(), g)
    assert _fan_in(Gelu(), g) == (1,)  # elementwise: no allowance, so the crude erf still fails
    crude = 0.5 * g * (1.0 + _erf_as_7_1_25(g * SQRT1_2))
    assert judge.LESS_ACCURATE in judge.compare_all([crude], refs, None, None, oracle=oracle, fan_in=(1,))


def test_fan_in_counts_what_one_output_element_depends_on():
    x = _x(4, 100)
    assert _fan_in(nn.Linear(100, 7), x) == (201,)  # a row of x, a row of the weight, the bias
    assert _fan_in(nn.Conv2d(3, 5, 3), _x(1, 3, 9, 9)) == (55,)  # 27 inputs, 27 weights, the bias
    assert _fan_in(nn.Softmax(dim=1), x) == (100,) and _fan_in(nn.MaxPool2d(2), _x(1, 3, 8, 8)) == (1,)

    class InPlace(nn.Module):  # not differentiable on a leaf: the oracle still runs, with no fan-in
        def forward(self, t):
            return t.relu_()

    run = run_oracle(InPlace(), [x])
    assert run.error == "" and run.fan_in == (None,) and run.outputs[0].dtype == torch.float64
    assert bool((x < 0).any())  # the float64 copy was modified in place, not the caller's tensor
    quick = run_oracle(nn.Softmax(dim=1), [x], with_fan_in=False)
    assert quick.fan_in == (None,) and torch.allclose(quick.outputs[0], torch.softmax(x.double(), 1))


def test_tf32_and_bf16_inputs_in_an_fp32_matmul_fail_naive_order_passes():
    a, b = _x(96, 256, seed=5), _x(256, 80, seed=6)
    refs, oracle = _setup(MatMul(), a, b)
    naive = torch.zeros(96, 80)
    for k in range(256):  # a K-outer loop: a different summation order from the BLAS's
        naive += a[:, k:k + 1] * b[k:k + 1, :]
    assert judge.compare_all([naive], refs, None, None, oracle=oracle) is None

    def tf32(t):  # round to TF32's 10-bit mantissa, as tensor cores do with allow_tf32
        i = t.contiguous().view(torch.int32)
        return ((i + 0x1000) & ~0x1FFF).view(torch.float32)

    fan = _fan_in(MatMul(), a, b)
    assert fan == (512,)
    assert judge.compare_all([naive], refs, None, None, oracle=oracle, fan_in=fan) is None
    for name, out in {"tf32": tf32(a) @ tf32(b), "bf16": (a.bfloat16() @ b.bfloat16()).float()}.items():
        assert judge.compare_all([out], refs, None, None, oracle=oracle) is not None, name
        assert judge.LESS_ACCURATE in (judge.compare_oracle(out, refs[0], oracle[0], 0, fan_in=fan[0]) or ""), name


def test_exact_reference_allows_only_slack():
    x = _x(33, 257, seed=7)
    refs, oracle = _setup(nn.ReLU(), x)
    assert error_stats(refs[0], oracle[0]).rel_l2 == 0.0
    assert judge.compare_all([torch.clamp(x, min=0.0)], refs, None, None, oracle=oracle) is None
    rounded = torch.relu(x).bfloat16().float()
    assert judge.LESS_ACCURATE in _oracle_only(rounded, refs, oracle)


def test_half_task_budget_is_in_half_ulps():
    x = _x(16, 1031, seed=8).half()
    refs, oracle = _setup(Gelu(), x)
    assert refs[0].dtype == torch.float16 and oracle[0].dtype == torch.float64
    via_fp32 = F.gelu(x.float()).half()
    fp16_steps = (0.5 * x * (1.0 + torch.erf(x * SQRT1_2)))  # every step rounded to fp16
    for out in (via_fp32, fp16_steps):
        assert judge.compare_all([out], refs, None, None, oracle=oracle) is None
    bf16 = F.gelu(x.float()).bfloat16().half()
    assert judge.LESS_ACCURATE in _oracle_only(bf16, refs, oracle)


def test_float64_task_and_integer_outputs_are_left_to_the_elementwise_rule():
    x = _x(8, 64, seed=9).double()
    refs, oracle = _setup(RowSum(), x)
    assert judge.compare_all([_sequential(x.float(), 1).double()], refs, None, None, oracle=oracle) is None
    idx = torch.argmax(_x(8, 64), dim=1)
    assert judge.compare_all([idx.clone()], [idx], None, None, oracle=[idx.clone()]) is None


def test_precomputed_reference_errors_and_non_finite_positions():
    x = torch.tensor([[0.5, 100.0, -3.0, 1.0]])
    exp = type("Exp", (nn.Module,), {"forward": lambda self, t: torch.exp(t)})()
    refs, oracle = _setup(exp, x)
    assert math.isinf(float(refs[0][0, 1])) and math.isfinite(float(oracle[0][0, 1]))  # fp32 overflows
    errs = reference_errors(refs, oracle)
    assert errs[0] is not None and errs[0].rel_l2 < 1e-6
    cand = refs[0].clone()
    assert judge.compare_all([cand], refs, None, None, oracle=oracle, ref_err=errs) is None
    cand[0, 0] *= 1.00001
    assert judge.compare_all([cand], refs, None, None) is None
    assert judge.compare_all([cand], refs, None, None, oracle=oracle, ref_err=errs) is not None


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8))
        self.register_buffer("scale", torch.tensor(2.0))
        self.register_buffer("index", torch.arange(8))

    def forward(self, x, k: int):
        return (x @ self.w * self.scale)[:, self.index][:, :k]


def test_oracle_promotes_floats_keeps_ints_and_leaves_the_model_alone():
    model = Mixed()
    twin = float64_model(model)
    assert twin.w.dtype == torch.float64 and twin.scale.dtype == torch.float64 and twin.index.dtype == torch.int64
    assert model.w.dtype == torch.float32
    x = _x(4, 8)
    run = run_oracle(model, [x, 5])
    assert run.error == "" and run.outputs[0].dtype == torch.float64 and run.outputs[0].shape == (4, 5)
    assert x.dtype == torch.float32 and model.w.dtype == torch.float32


def test_a_model_that_cannot_run_in_float64_gives_a_reason():
    class Pinned(nn.Module):
        def forward(self, x):
            return x @ torch.ones(x.shape[1], 2, dtype=torch.float32)

    run = run_oracle(Pinned(), [_x(3, 4)])
    assert run.outputs == () and "float64" in run.error


@pytest.mark.parametrize("factor", [1.0, 4.0])
def test_the_rule_can_fail(factor):
    x = _x(16, 513, seed=10)
    refs, oracle = _setup(Gelu(), x)
    worse = refs[0] * (1 + 1e-5)  # 170 ulps off everywhere
    assert judge.compare_all([worse], refs, None, None, oracle=oracle, oracle_factor=factor) is not None


def test_pin_precision_turns_tf32_off():
    from kopt.evaluator.oracle import pin_precision

    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    try:
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("medium")
        pin_precision(torch)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old[0], old[1]
        torch.set_float32_matmul_precision(old[2])
