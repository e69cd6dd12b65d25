"""The paper's metrics, as pure functions over numbers (no I/O, no kopt state).

Sources: Barnes 2026, "Surprisal-Guided Selection" (arXiv 2602.07670), referred to below as [B26] with the
part of the paper each metric comes from; KernelBench (Ouyang et al. 2025, `score.py`) for fast_p and the
pass@k estimator (Chen et al. 2021, Codex, §2.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from kopt.records import EvalResult, Status

# [B26] metrics / KernelBench fast_p: "fast" means correct AND speedup strictly greater than p; fast_1 uses
# p = 1.0, so a kernel exactly as fast as the reference (1.00x) is not fast.
FAST_P = 1.0


# What "the reference" is when a speedup is quoted (`--baseline`): eager PyTorch as written, the reference under
# torch.compile, or the faster of the two ("best", as KernelBench-v3 scores: a kernel must beat the one-line
# alternative too). Without a torch.compile timing (not measured, or torch.compile failed) every baseline is eager.
DEFAULT_BASELINE = "best"


def speedup_vs(result: EvalResult | None, baseline: str = DEFAULT_BASELINE) -> float | None:
    """The result's speedup against `baseline` ("eager" | "compile" | "best")."""
    if result is None:
        return None
    eager, compiled = result.speedup, result.speedup_vs_compile
    if baseline == "eager" or compiled is None:
        return eager
    if baseline == "compile" or eager is None:
        return compiled
    return min(eager, compiled)  # the faster reference gives the smaller speedup


def is_fast(result: EvalResult | None, p: float = FAST_P, baseline: str = DEFAULT_BASELINE) -> bool:
    """fast_p of one kernel: correct and speedup > p (strict; KernelBench `score.py`, [B26] metrics)."""
    s = speedup_vs(result, baseline)
    return result is not None and result.status is Status.CORRECT and s is not None and s > p


def fast_p(results: Iterable[EvalResult | None], p: float = FAST_P, baseline: str = DEFAULT_BASELINE) -> float | None:
    """Fraction of kernels that are fast_p: #(correct and speedup > p) / n (KernelBench `score.py`)."""
    rs = list(results)
    return sum(is_fast(r, p, baseline) for r in rs) / len(rs) if rs else None


def correctness_rate(results: Iterable[EvalResult | None]) -> float | None:
    """Fraction correct (= KernelBench fast_0; [B26] metrics: 'correctness')."""
    rs = list(results)
    return sum(r is not None and r.status is Status.CORRECT for r in rs) / len(rs) if rs else None


def mean(values: Iterable[float]) -> float | None:
    xs = [float(v) for v in values]
    return sum(xs) / len(xs) if xs else None


def geomean(values: Iterable[float]) -> float | None:
    """Geometric mean (KernelBench reports the geometric-mean speedup over correct problems)."""
    xs = [float(v) for v in values]
    if not xs or any(x <= 0 for x in xs):
        return None
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def sample_fast_1(sample_results: Sequence[EvalResult | None], baseline: str = DEFAULT_BASELINE) -> float | None:
    """Sample-level fast_1 ([B26] metrics: fraction of the K samples that are fast_1).

    `sample_results` has one entry per sample (K of them); a duplicate sample carries its first's verdict,
    so duplicates count once per sample, as in the paper's per-rollout accounting.
    """
    return fast_p(sample_results, FAST_P, baseline)


# ---- Best-of-N scaling: unbiased pass@k ----


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k) (Chen et al. 2021 §2.1; KernelBench; [B26] Best-of-N curve).

    n samples of which c pass; the probability that at least one of k drawn without replacement passes.
    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which is exact and avoids huge binomials.
    """
    if not (0 <= c <= n) or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def curve_ks(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, with n itself last ([B26] Best-of-N scaling curve, log2 k axis)."""
    if n < 1:
        return []
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    ks.append(n)
    return ks


def scaling_curve(n: int, c: int) -> list[tuple[int, float]]:
    """The Best-of-N curve of one pool: [(k, pass@k of fast_1)] for k in curve_ks(n)."""
    return [(k, pass_at_k(n, c, k)) for k in curve_ks(n)]


def mean_curve(curves: Sequence[Sequence[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Average several pools' curves point by point (all must share the same ks, i.e. the same K)."""
    if not curves:
        return []
    ks = [k for k, _ in curves[0]]
    for c in curves:
        if [k for k, _ in c] != ks:
            raise ValueError("curves have different k values (different K per pool); compare at one K")
    return [(k, sum(c[j][1] for c in curves) / len(curves)) for j, k in enumerate(ks)]


@dataclass(frozen=True)
class EquivalentK:
    """Where a strategy's fast_1 lands on the Best-of-N curve ([B26] 'equivalent K').

    `relation` is "=" when the value lies on the curve, "<" when it is below pass@1 (`k` = 1: the strategy is
    worse than one random sample, as the paper found for TTT), ">" when above pass@K (`k` = K).
    """

    k: float
    relation: str  # "=", "<", ">"

    def __str__(self) -> str:
        if self.relation == "=":
            return f"{self.k:.3g}"
        return f"{self.relation}{self.k:g}"

    def to_json(self) -> dict:
        return {"k": self.k, "relation": self.relation, "text": str(self)}


def equivalent_k(value: float, curve: Sequence[tuple[int, float]]) -> EquivalentK | None:
    """The k at which Best-of-N reaches `value`: linear interpolation in log2 k between curve points
    ([B26] 'equivalent K': the number of random samples whose best matches the strategy).

    The curve is non-decreasing in k. Flat stretches resolve to the smallest k reaching the value.
    """
    if not curve:
        return None
    ks = [float(k) for k, _ in curve]
    ys = [float(y) for _, y in curve]
    eps = 1e-12
    if value < ys[0] - eps:
        return EquivalentK(ks[0], "<")
    if value > ys[-1] + eps:
        return EquivalentK(ks[-1], ">")
    if value <= ys[0] + eps:
        return EquivalentK(ks[0], "=")
    for j in range(1, len(ks)):
        if value <= ys[j] + eps:
            y0, y1 = ys[j - 1], ys[j]
            if y1 - y0 <= eps:
                return EquivalentK(ks[j], "=")
            t = min(1.0, max(0.0, (value - y0) / (y1 - y0)))
            lk = math.log2(ks[j - 1]) + t * (math.log2(ks[j]) - math.log2(ks[j - 1]))
            return EquivalentK(2.0 ** lk, "=")
    return EquivalentK(ks[-1], "=")


# ---- rank correlations ([B26] surprisal analysis and its length control) ----


def average_ranks(xs: Sequence[float]) -> list[float]:
    """Ranks 1..n; tied values share the average of the ranks they span (the usual Spearman convention)."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        avg = (i + j) / 2.0 + 1.0
        for t in range(i, j + 1):
            ranks[order[t]] = avg
        i = j + 1
    return ranks


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    n = len(xs)
    if n != len(ys):
        raise ValueError("pearson: sequences differ in length")
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 0 or syy <= 0:
        return None  # a constant variable has no correlation
    return sxy / math.sqrt(sxx * syy)


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rho = Pearson correlation of average ranks ([B26] surprisal analysis: rho between
    NLL and speedup over correct samples). None with fewer than 2 points or a constant variable."""
    return pearson(average_ranks(xs), average_ranks(ys))


def partial_spearman(xs: Sequence[float], ys: Sequence[float], zs: Sequence[float]) -> float | None:
    """Partial rank correlation of x and y controlling for z ([B26] length-controlled analysis: NLL vs
    speedup controlling for token count):  r_xy.z = (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2)),
    with each r a Spearman rho (Pearson on average ranks)."""
    rxy, rxz, ryz = spearman(xs, ys), spearman(xs, zs), spearman(ys, zs)
    if rxy is None:
        return None
    if rxz is None or ryz is None:
        return rxy  # z constant: controlling for it changes nothing
    den = (1.0 - rxz * rxz) * (1.0 - ryz * ryz)
    if den <= 1e-15:
        return None  # x or y is a monotone function of z: nothing left once z is removed
    return (rxy - rxz * ryz) / math.sqrt(den)


# ---- surprisal quartiles ([B26] quartile table) ----


@dataclass(frozen=True)
class Quartile:
    """One surprisal quartile of the correct samples (Q1 = least surprising)."""

    quartile: int
    n: int
    surprisal_min: float
    surprisal_max: float
    fast_1: float  # fraction of this quartile's correct samples with speedup > 1
    mean_speedup: float
    mean_tokens: float | None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def surprisal_quartiles(
    surprisal: Sequence[float], speedup: Sequence[float], tokens: Sequence[float | None]
) -> list[Quartile]:
    """Split correct samples by surprisal into 4 groups ([B26] quartile analysis): fast_1, mean speedup
    and mean token count per quartile. Sorted by surprisal (ties by position); group sizes differ by at
    most one, the larger groups first. Fewer than 4 samples give fewer (non-empty) groups."""
    n = len(surprisal)
    if not (n == len(speedup) == len(tokens)):
        raise ValueError("surprisal_quartiles: sequences differ in length")
    order = sorted(range(n), key=lambda i: (surprisal[i], i))
    base, extra = divmod(n, 4)
    out, start = [], 0
    for q in range(4):
        size = base + (1 if q < extra else 0)
        idx = order[start : start + size]
        start += size
        if not idx:
            continue
        toks = [float(tokens[i]) for i in idx if tokens[i] is not None]
        out.append(Quartile(
            quartile=q + 1,
            n=len(idx),
            surprisal_min=float(surprisal[idx[0]]),
            surprisal_max=float(surprisal[idx[-1]]),
            fast_1=sum(speedup[i] > FAST_P for i in idx) / len(idx),
            mean_speedup=sum(speedup[i] for i in idx) / len(idx),
            mean_tokens=sum(toks) / len(toks) if toks else None,
        ))
    return out


# ---- aggregates over tasks and seeds ----


@dataclass(frozen=True)
class Aggregate:
    """A metric over tasks and seeds: the mean over every (task, seed) value, each seed's mean over its
    tasks, and the spread of those per-seed means ([B26] reports 3-seed means with their spread)."""

    mean: float | None
    n: int
    per_seed: tuple[tuple[int, float], ...]
    seed_std: float | None  # population std of the per-seed means; None with one seed
    seed_min: float | None
    seed_max: float | None

    def to_json(self) -> dict:
        return {"mean": self.mean, "n": self.n, "per_seed": {str(s): v for s, v in self.per_seed},
                "seed_std": self.seed_std, "seed_min": self.seed_min, "seed_max": self.seed_max}


def aggregate(values: Mapping[tuple[str, int], float | None]) -> Aggregate:
    """Aggregate values keyed by (task, seed); None values (metric undefined there) are left out."""
    kept = {key: float(v) for key, v in values.items() if v is not None}
    by_seed: dict[int, list[float]] = {}
    for (_, seed), v in kept.items():
        by_seed.setdefault(seed, []).append(v)
    per_seed = tuple(sorted((s, sum(vs) / len(vs)) for s, vs in by_seed.items()))
    means = [v for _, v in per_seed]
    std = None
    if len(means) >= 2:
        m = sum(means) / len(means)
        std = math.sqrt(sum((x - m) ** 2 for x in means) / len(means))
    return Aggregate(
        mean=sum(kept.values()) / len(kept) if kept else None,
        n=len(kept),
        per_seed=per_seed,
        seed_std=std,
        seed_min=min(means) if means else None,
        seed_max=max(means) if means else None,
    )
