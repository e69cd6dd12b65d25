"""The float64 oracle: the reference Model run in double precision, and how far an output is from it.

The trusted reference child calls `run_oracle` next to its ordinary fp32 (or half) run of Model on the same
inputs and the same parameters; the parent keeps both and judge.compare_all holds a candidate to the
reference's own accuracy: a kernel may round differently (another summation order, FMA, another erf that is
as accurate) but may not be much *less* accurate than the reference (fp16 accumulation, TF32, a crude
polynomial inside an fp32 task). KernelBench's 1e-4 tolerance alone lets those through.

The measure is the relative L2 error ||x - o|| / ||o|| against the oracle `o` (and, to catch an approximation
that is wrong only in a small region, the largest error relative to max |o|), over the positions where both
the reference and the oracle are finite. The budget for a candidate's output is

    budget = FACTOR * (the reference's own error)
             + SLACK_ULPS[dtype] * unit roundoff(dtype) + REDUCTION_ULPS * sqrt(fan-in) * 2^-24

with FACTOR = 4. The slack is what lets an honest reordering pass when the reference happens to be very
accurate (or exact: ReLU, max, copies, where its error is 0). An honest fp32 reduction in another order has
an error that grows with its length: measured on N(0,1) inputs, a single-thread sequential fp32 sum is about
0.3-0.4 sqrt(n) ulps (relative L2) off the oracle (20 at n=4096, 35 at 16384, 99 at 65536) where torch's
cascaded sum is 2-3.5;
an 8-thread OpenMP sum is 7.7 and 13, a 16-lane simd sum 4.5 and 10; a naive K=2048 matmul 14 where MKL is 6.
So the slack has a part that grows with the output's fan-in (how many input and parameter elements one output
element depends on: 1 for an elementwise op, n for a sum or softmax over n, 2K for a matmul), measured once
per task from the float64 twin's gradient at the output's largest element (`fan_in`). fp16 or
bf16 rounding, TF32 inputs and fp16 accumulation are 870 to 100,000 ulps off, and Abramowitz-Stegun 7.1.25's
erf (|error| 2.5e-5) inside a GELU is 199 ulps (27x the reference's own largest error). Half-precision
outputs get one of their own (much larger) ulps: honest half kernels accumulate in fp32, so what they add is
the rounding of intermediates: an fp16 GELU rounded at every step is 0.62 fp16-ulps off where the reference
is 0.42, while bf16 rounding inside an fp16 task is 3.5 and fp16 accumulation of a 4096-term sum 21. A float64
output is not checked: the oracle has no precision to spare over it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

FACTOR = 4.0
# Slack in units of the output dtype's unit roundoff (2^-24 fp32, 2^-11 fp16, 2^-8 bf16): see the docstring.
SLACK_ULPS = {"torch.float32": 32.0, "torch.float16": 1.0, "torch.bfloat16": 1.0}
# fp32 ulps per sqrt(fan-in): a naive sequential sum needs ~0.4; the rest is headroom (see the docstring).
REDUCTION_ULPS = 1.0
FP32_ROUNDOFF = 2.0 ** -24
# The largest-error measure is noisier than the L2 one (one element decides it): twice the slack.
MAX_SLACK_FACTOR = 2.0


@dataclass(frozen=True)
class ErrorStats:
    """One output's distance from the oracle: relative L2 and largest-element errors (both unitless)."""

    rel_l2: float  # ||x - o||_2 / ||o||_2 over the finite positions
    rel_max: float  # max |x - o| / max |o| over the finite positions


@dataclass(frozen=True)
class OracleRun:
    """What `run_oracle` got: the float64 outputs (non-floating outputs as the model returned them), or why
    there are none (`error`, one line; then the oracle rule is skipped for this task, with a warning)."""

    outputs: tuple = ()
    error: str = ""
    fan_in: tuple = ()  # per output: int, or None where it could not be measured (then no length allowance)


def pin_precision(torch) -> None:
    """Make the reference's own fp32 run full fp32: no TF32 in matmuls or cuDNN convolutions (cuDNN allows it
    by default), so its error against the oracle, which sets every candidate's budget, is an fp32 error.
    The trusted reference child calls this before running Model (NVIDIA_TF32_OVERRIDE=0 in its environment
    does the same for libraries that ignore torch's flags)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def unit_roundoff(dtype) -> float:
    """2^-p for a p-bit significand: the relative size of half an ulp."""
    import torch

    return float(torch.finfo(dtype).eps) / 2.0


def to_float64(value, torch):
    """A float64 copy of a tensor (floating and complex promoted, integer and bool kept), recursing into
    lists, tuples and dicts; other values are returned as they are."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            return value.detach().to(torch.float64, copy=True)
        if value.is_complex():
            return value.detach().to(torch.complex128, copy=True)
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(to_float64(v, torch) for v in value)
    if isinstance(value, dict):
        return {k: to_float64(v, torch) for k, v in value.items()}
    return value


def float64_model(model):
    """A deep copy of `model` with every floating parameter and buffer in float64 (integer buffers kept)."""
    import torch

    twin = copy.deepcopy(model)
    for module in twin.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p is not None and p.is_floating_point():
                module._parameters[name] = torch.nn.Parameter(p.detach().to(torch.float64), p.requires_grad)
        for name, b in list(module.named_buffers(recurse=False)):
            if b is not None and b.is_floating_point():
                module._buffers[name] = b.detach().to(torch.float64)
    return twin


def run_oracle(model, inputs, *, device: str = "cpu", with_fan_in: bool = True) -> OracleRun:
    """Run `model` in float64 on float64 copies of `inputs`; `model` and `inputs` are left untouched.

    Call it with the same model (same parameters) and the same inputs as the ordinary reference run. A model
    that cannot run in float64 (an op without a double kernel, a dtype it hard-codes) gives OracleRun(error=...).
    `with_fan_in` runs the forward with autograd on and one backward per output to measure each output's
    fan-in; pass False for further input sets of the same shape (fan_in is then all None: reuse the first's).
    """
    import torch

    try:
        twin = float64_model(model).to(device)
        args = [to_float64(x, torch) for x in inputs]
        args = [x.to(device) if isinstance(x, torch.Tensor) else x for x in args]
        fans: tuple = ()
        out = None
        if with_fan_in:
            try:  # one forward with autograd on: the outputs and, from its graph, each output's fan-in
                out, fans = _forward_with_fan_in(twin, args, torch)
            except Exception:  # noqa: BLE001 - not differentiable (in-place on an input, no_grad inside)
                out, fans = None, ()
        if out is None:
            with torch.no_grad():
                out = twin(*[x.detach() if isinstance(x, torch.Tensor) else x for x in args])
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        if not all(isinstance(o, torch.Tensor) for o in outs):
            return OracleRun(error="the float64 run returned something other than tensors")
        return OracleRun(outputs=tuple(o.detach().cpu() for o in outs), fan_in=fans or (None,) * len(outs))
    except Exception as e:  # noqa: BLE001 - the user's model does not run in float64: no oracle for this task
        return OracleRun(error=f"the reference does not run in float64 ({type(e).__name__}: {e})"[:300])


def _forward_with_fan_in(twin, args, torch):
    """Run `twin` with gradients on and count, for each floating output, the input and parameter elements
    with a nonzero gradient at the output's largest element: the length of the sums that element came from."""
    leaves = [x.requires_grad_(True) for x in args if isinstance(x, torch.Tensor) and x.is_floating_point()]
    leaves += [p for p in twin.parameters() if p.is_floating_point()]
    for p in twin.parameters():
        p.requires_grad_(p.is_floating_point())
    with torch.enable_grad():
        out = twin(*args)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    fans = []
    for o in outs:
        if not (isinstance(o, torch.Tensor) and o.is_floating_point() and o.requires_grad and o.numel()):
            fans.append(None)
            continue
        flat = o.reshape(-1)
        idx = int(torch.nan_to_num(flat.detach().abs(), nan=0.0, posinf=0.0).argmax())
        grads = torch.autograd.grad(flat[idx], leaves, retain_graph=True, allow_unused=True)
        fans.append(max(1, sum(int((g != 0).sum()) for g in grads if g is not None)))
    detached = [o.detach() if isinstance(o, torch.Tensor) else o for o in outs]
    return (type(out)(detached) if isinstance(out, (tuple, list)) else detached[0]), tuple(fans)


def error_stats(out, oracle, ref=None) -> ErrorStats | None:
    """How far `out` is from `oracle`, over the positions where `oracle` (and `ref`, when given) are finite.

    None when the measure does not apply: a non-floating or float64 output, a shape mismatch, or an oracle
    that is all zero (judge's own rule then requires an exact zero)."""
    import torch

    if not (isinstance(out, torch.Tensor) and isinstance(oracle, torch.Tensor)) or not out.is_floating_point():
        return None
    if out.dtype == torch.float64 or tuple(out.shape) != tuple(oracle.shape) or not oracle.is_floating_point():
        return None
    o = oracle.to(torch.float64)
    x = out.detach().to(torch.float64)
    keep = torch.isfinite(o)
    if ref is not None:
        keep &= torch.isfinite(ref.detach().to(torch.float64))
    o = torch.where(keep, o, 0.0)
    x = torch.where(keep & torch.isfinite(x), x, o)  # candidates' non-finite values are judged elsewhere
    norm = float(torch.linalg.vector_norm(o))
    peak = float(o.abs().max()) if o.numel() else 0.0
    if norm == 0.0 or peak == 0.0:
        return None
    d = x - o
    return ErrorStats(rel_l2=float(torch.linalg.vector_norm(d)) / norm, rel_max=float(d.abs().max()) / peak)


def reference_errors(refs, oracle) -> tuple[ErrorStats | None, ...]:
    """The reference's own error against the oracle, per output (None where the measure does not apply)."""
    if oracle is None or refs is None or len(refs) != len(oracle):
        return ()
    return tuple(error_stats(r, o) for r, o in zip(refs, oracle))


def budget(ref_err: ErrorStats | None, dtype, factor: float = FACTOR, fan_in: int | None = None) -> ErrorStats:
    """The most error a candidate's output of `dtype` may have: factor x the reference's, plus the dtype's
    slack, plus the allowance for fp32 sums of `fan_in` terms in another order (none when unknown)."""
    slack = SLACK_ULPS.get(str(dtype), SLACK_ULPS["torch.float32"]) * unit_roundoff(dtype)
    if fan_in and fan_in > 1:
        slack += REDUCTION_ULPS * math.sqrt(fan_in) * FP32_ROUNDOFF
    base = ref_err or ErrorStats(0.0, 0.0)
    return ErrorStats(rel_l2=factor * base.rel_l2 + slack, rel_max=factor * base.rel_max + MAX_SLACK_FACTOR * slack)
