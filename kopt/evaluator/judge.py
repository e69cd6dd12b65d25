"""Trusted comparison of a candidate's outputs with the reference's, in kopt's own process.

All three conditions must hold (hacking-and-sandbox.md §2): exact shape and dtype; non-finite only where the
reference is (same positions and signs); elementwise |a-b| <= atol + rtol*|b| with KernelBench's tolerances
(PR #80: 1e-4 fp32, 1e-2 fp16/bf16); and a normalised error ||a-b||/||b|| <= 1e-3 (fp32) / 1e-2 (half), so
all-zero or near-constant outputs fail (hack #2; when ||b|| == 0 the output must be 0 too).

With the float64 oracle (oracle.py: the reference run in double precision on the same inputs), one more: the
candidate's error against the oracle, relative L2 and largest-element, is at most 4x the reference's own error
plus a few ulps of the output dtype and an allowance for long sums (oracle.budget, from the output's fan-in),
so a kernel that is less accurate than the reference in a way the 1e-4 tolerance cannot see (fp16
accumulation, TF32, a crude erf) fails, and an honest reordering passes.
"""

from __future__ import annotations

from dataclasses import dataclass

HALF = ("torch.float16", "torch.bfloat16")


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    rel_l2: float


def tolerance(dtype, atol: float | None, rtol: float | None) -> Tolerance:
    half = str(dtype) in HALF
    default = 1e-2 if half else 1e-4
    return Tolerance(atol=default if atol is None else atol, rtol=default if rtol is None else rtol,
                     rel_l2=1e-2 if half else 1e-3)


def compare(out, ref, index: int, atol: float | None, rtol: float | None) -> str | None:
    """None when `out` matches `ref`; else a reason a person can act on."""
    import torch

    if out is None or type(out) is not torch.Tensor:
        return f"output {index} is not a plain torch.Tensor"
    if tuple(out.shape) != tuple(ref.shape):
        return f"output {index} has shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
    if out.dtype != ref.dtype:
        return f"output {index} has dtype {out.dtype}, expected {ref.dtype}"
    if not ref.is_floating_point():
        bad = int((out != ref).sum())
        return None if bad == 0 else f"output {index} differs at {bad} of {ref.numel()} elements (exact match needed)"
    tol = tolerance(ref.dtype, atol, rtol)
    a, b = out.double(), ref.double()
    fin_b, fin_a = torch.isfinite(b), torch.isfinite(a)
    if bool((fin_b & ~fin_a).any()):
        n = int((fin_b & ~fin_a).sum())
        return f"output {index} has {n} non-finite values where the reference is finite"
    nonfin = ~fin_b
    if bool(nonfin.any()):
        same = (torch.isnan(a) == torch.isnan(b)) & ((a == b) | torch.isnan(b))
        if not bool(same[nonfin].all()):
            return f"output {index} differs from the reference's NaN/Inf pattern"
        a, b = torch.where(nonfin, 0.0, a), torch.where(nonfin, 0.0, b)
    err = (a - b).abs()
    bad = err > tol.atol + tol.rtol * b.abs()
    if bool(bad.any()):
        first = int(bad.flatten().nonzero()[0])
        return (f"output {index} differs at {int(bad.sum())} of {b.numel()} elements (first at {first}), "
                f"max abs err {float(err.max()):.3g} (atol {tol.atol:g}, rtol {tol.rtol:g})")
    nb = float(torch.linalg.vector_norm(b))
    na = float(torch.linalg.vector_norm(a - b))
    if nb == 0.0:
        if na != 0.0:
            return f"output {index} should be all zero; normalised error undefined, abs error {na:.3g}"
    elif na / nb > tol.rel_l2:
        return f"output {index} normalised error {na / nb:.3g} over {tol.rel_l2:g} (||a-b||/||b||)"
    return None


# Every reason from the oracle rule contains this, so a caller can tell "less accurate" from "wrong".
LESS_ACCURATE = "less accurate than the reference"


def compare_oracle(out, ref, oracle, index: int, ref_err=None, factor: float | None = None,
                   fan_in: int | None = None) -> str | None:
    """None when `out` is within the oracle budget (oracle.budget) of the float64 `oracle`; else the reason.

    `ref_err` is the reference's own ErrorStats against the oracle (oracle.reference_errors computes it once
    per input set); None recomputes it from `ref`. `fan_in` (OracleRun.fan_in) widens the budget for long
    sums. Outputs the measure does not cover (integer, float64, an all-zero oracle) pass here: compare()
    judges them."""
    from kopt.evaluator import oracle as orc

    if oracle is None:
        return None
    got = orc.error_stats(out, oracle, ref)
    if got is None:
        return None
    mine = ref_err if ref_err is not None else orc.error_stats(ref, oracle)
    limit = orc.budget(mine, ref.dtype, orc.FACTOR if factor is None else factor, fan_in)
    base = mine or orc.ErrorStats(0.0, 0.0)
    for label, value, cap, own in (("relative L2", got.rel_l2, limit.rel_l2, base.rel_l2),
                                   ("largest-element", got.rel_max, limit.rel_max, base.rel_max)):
        if value > cap:
            times = f" ({value / own:.0f}x the reference's)" if own > 0 else ""
            return (f"output {index} is {LESS_ACCURATE}: {label} error {value:.2g} against a float64 run of the "
                    f"reference{times}, over the budget {cap:.2g}; half-precision arithmetic or accumulation, "
                    f"TF32 or a cheaper approximation inside a {str(ref.dtype).replace('torch.', '')} task?")
    return None


def compare_all(outs, refs, atol: float | None, rtol: float | None, *, oracle=None, ref_err=None,
                oracle_factor: float | None = None, fan_in=None) -> str | None:
    """None when every output passes compare() and, given the float64 `oracle` outputs (one per output, as
    oracle.run_oracle returns them), compare_oracle(); else the first reason. `ref_err`: the reference's own
    errors (oracle.reference_errors(refs, oracle)), to compute them once per input set instead of per call.
    `fan_in`: OracleRun.fan_in (per output; None entries or None = no allowance for long sums)."""
    if outs is None:
        return "no outputs"
    if len(outs) != len(refs):
        return f"forward returned {len(outs)} tensor(s), expected {len(refs)}"
    for i, (o, r) in enumerate(zip(outs, refs)):
        why = compare(o, r, i, atol, rtol)
        if why:
            return why
    if oracle is not None and len(oracle) == len(refs):
        for i, (o, r) in enumerate(zip(outs, refs)):
            mine = ref_err[i] if ref_err is not None and i < len(ref_err) else None
            fan = fan_in[i] if fan_in is not None and i < len(fan_in) else None
            why = compare_oracle(o, r, oracle[i], i, mine, oracle_factor, fan)
            if why:
                return why
    return None


def same_inputs(after, sent) -> str | None:
    """Inputs must be bitwise unchanged by the call (hack #12: zeroing them fools a later reference run)."""
    import torch

    if after is None or len(after) != len(sent):
        return "the inputs after the call were not reported"
    for i, (a, s) in enumerate(zip(after, sent)):
        if isinstance(s, torch.Tensor):
            if type(a) is not torch.Tensor or a.shape != s.shape or a.dtype != s.dtype:
                return f"input {i} changed shape or type during forward"
            if not torch.equal(a, s) and not (s.is_floating_point() and torch.equal(a.isnan(), s.isnan())
                                              and torch.equal(torch.nan_to_num(a), torch.nan_to_num(s))):
                return f"input {i} was modified by forward (in-place writes to inputs are not allowed)"
    return None


def bitwise_equal(x, y) -> bool:
    import torch

    if x is None or y is None or len(x) != len(y):
        return False
    return all(type(a) is torch.Tensor and type(b) is torch.Tensor and a.shape == b.shape and
               torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)) for a, b in zip(x, y))
