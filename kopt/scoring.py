"""Scoring selection strategies on one pool (pure): what `kopt compare` measures per task and seed.

Each strategy runs with a `time_fn` served from the pool's timings of every correct candidate, so every
strategy sees the same numbers and its cost is the number of candidates it asked to time. `random` is
scored as its expected value over the correct set, not one draw. `score_ttt` scores the TTT arm from its
report (see kopt/comparison.py for the matched rollout budget). Metrics come from `kopt.metrics`, which
cites the paper beside each formula.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from kopt import metrics as M
from kopt.errors import KoptError
from kopt.records import EvalResult, Scored, Selection, Status
from kopt.selection import STRATEGIES, eligible, logprob_std, select

# The order of every table and JSON object. "ttt" comes last and only with --ttt-steps.
ALL_STRATEGIES = ("oracle", "random", "confidence", "surprisal", "surprisal-top-m")
TTT = "ttt"
REFINE = "refine"  # repair rounds at a matched sample budget (kopt/refine.py); only when listed


def parse_strategies(text: str | None, ttt_steps: int = 0) -> list[str]:
    """Strategy names in the canonical order. `all` includes "ttt" only when `ttt_steps` > 0."""
    order = list(ALL_STRATEGIES) + [TTT, REFINE]
    if not text or text.strip() == "all":
        return list(ALL_STRATEGIES) + ([TTT] if ttt_steps > 0 else [])
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in STRATEGIES and n not in (TTT, REFINE)]
    if bad or not names:
        raise KoptError(f"unknown strategy {', '.join(bad) or text!r}",
                        f"use all or a comma-separated list of: {', '.join(order)}")
    if TTT in names and ttt_steps < 1:
        raise KoptError("strategy ttt needs --ttt-steps",
                        "add --ttt-steps 1 (or 2) with --sampler hf|vllm --model DIR")
    return [n for n in order if n in names]


def ttt_budget(k: int, steps: int, ttt_k: int | None = None) -> int:
    """Samples per TTT step under a rollout budget matched to Best-of-N's K: (steps + 1)·ttt_k ≤ K.

    Step 0 (the base model) is the first ttt_k samples of the K-sample pool and each TTT step draws ttt_k
    more, so TTT never sees more samples than Best-of-N. Default: K // (steps + 1). At least 2 per step:
    the advantages are leave-one-out within the step's batch (kopt/ttt.py)."""
    if steps < 1:
        raise KoptError(f"--ttt-steps must be at least 1 for the ttt strategy, got {steps}", "e.g. --ttt-steps 1")
    rounds = steps + 1
    if ttt_k is None:
        ttt_k = k // rounds
        if ttt_k < 2:
            raise KoptError(
                f"--k {k} leaves {ttt_k} sample(s) per TTT round for --ttt-steps {steps}: the matched budget "
                f"is (steps + 1)·ttt_k ≤ K and each round needs at least 2",
                f"use --k {2 * rounds} or more, or fewer --ttt-steps")
        return ttt_k
    if ttt_k < 2:
        raise KoptError(f"--ttt-k must be at least 2 (advantages are leave-one-out), got {ttt_k}",
                        f"leave --ttt-k out to use K // (steps + 1) = {k // rounds}")
    if rounds * ttt_k > k:
        raise KoptError(
            f"--ttt-k {ttt_k} with --ttt-steps {steps} draws {rounds * ttt_k} samples, more than --k {k}: "
            "TTT's rollout budget is matched to Best-of-N's K ((steps + 1)·ttt_k ≤ K)",
            f"use --ttt-k {k // rounds} or less, or a larger --k")
    return ttt_k


@dataclass(frozen=True)
class Outcome:
    """One strategy on one (task, seed) pool. `random` holds expected values (fast_1 in [0, 1], cost a
    fraction); the others hold 0/1 and whole counts. `fast_1` is None when the strategy could not run."""

    strategy: str
    task: str
    seed: int
    pick: int | None  # candidate index = line in the samples file (random: the seeded draw)
    speedup: float | None
    fast_1: float | None
    correct: float | None
    cost: float
    notes: tuple[str, ...] = ()
    # ttt only: the step the pick was drawn at, the samples file its index refers to (the TTT pool's, not
    # the base pool's), and the run's budget and per-step scores (results.json strategies.ttt.runs).
    step: int | None = None
    samples_path: str | None = None
    detail: Mapping[str, Any] | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        d = {"task": self.task, "seed": self.seed, "index": self.pick, "speedup": self.speedup,
             "fast_1": self.fast_1, "correct": self.correct, "cost": self.cost, "notes": list(self.notes)}
        if self.step is not None:
            d["step"] = self.step
        if self.samples_path is not None:
            d["samples_path"] = self.samples_path
        return d


@dataclass(frozen=True)
class PoolStats:
    """Sample-level numbers for one (task, seed) pool."""

    task: str
    seed: int
    k: int
    samples_path: str
    unique: int
    correct: int  # unique candidates correct after timing
    logprob_std: float | None
    sample_fast_1: float | None
    sample_correctness: float | None
    curve: tuple[tuple[int, float], ...]
    spearman: float | None
    partial: float | None
    quartiles: tuple[M.Quartile, ...] = ()

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["curve"] = [{"k": k, "pass_at_k": v} for k, v in self.curve]
        d["quartiles"] = [q.to_json() for q in self.quartiles]
        return d


def _served(timings: Mapping[int, EvalResult]) -> Callable[[list[int]], dict[int, EvalResult]]:
    def time_fn(indices: list[int]) -> dict[int, EvalResult]:
        return {i: timings[i] for i in indices}

    return time_fn


def _random_expected(task: str, seed: int, pool: Sequence[Scored], timings: Mapping[int, EvalResult],
                     top_m: int, baseline: str) -> Outcome:
    good = [s.index for s in eligible(pool)]
    ok = [i for i in good if timings[i].status is Status.CORRECT]
    draw = select("random", pool, _served(timings), top_m=top_m, seed=seed).winner
    if not ok:
        return Outcome("random", task, seed, draw, None, 0.0, 0.0, float(len(good)))
    speeds = [M.speedup_vs(timings[i], baseline) or 0.0 for i in ok]
    # A uniformly random order of the n eligible candidates, stopping at the first of the s that stay
    # correct when timed: expected draws = (n + 1) / (s + 1), and the winner is uniform over those s.
    n, s = len(good), len(ok)
    return Outcome(
        "random", task, seed, draw,
        speedup=sum(speeds) / s,
        fast_1=sum(M.is_fast(timings[i], baseline=baseline) for i in ok) / s,
        correct=1.0,
        cost=(n + 1) / (s + 1),
    )


def score_pool(
    task: str,
    seed: int,
    pool: Sequence[Scored],
    timings: Mapping[int, EvalResult],
    sample_results: Sequence[EvalResult | None],
    sample_surprisal: Sequence[float | None],
    sample_tokens: Sequence[int | None],
    strategies: Sequence[str],
    *,
    top_m: int = 3,
    samples_path: str = "",
    baseline: str = M.DEFAULT_BASELINE,
) -> tuple[PoolStats, list[Outcome]]:
    """Score every strategy on one pool. `timings` holds the timed result of every eligible candidate;
    the `sample_*` sequences have one entry per sample (K), duplicates carrying their first's verdict."""
    missing = [s.index for s in eligible(pool) if s.index not in timings]
    if missing:
        raise ValueError(f"score_pool needs every correct candidate timed; missing {missing}")
    outcomes: list[Outcome] = []
    for name in strategies:
        if name in (TTT, REFINE):  # scored on their own pools (score_ttt, kopt.refine.compare_outcome)
            continue
        if name == "random":
            outcomes.append(_random_expected(task, seed, pool, timings, top_m, baseline))
            continue
        try:
            sel: Selection = select(name, pool, _served(timings), top_m=top_m, seed=seed)
        except KoptError as e:
            outcomes.append(Outcome(name, task, seed, None, None, None, None, 0.0, (e.message,)))
            continue
        r = timings.get(sel.winner) if sel.winner is not None else None
        outcomes.append(Outcome(
            name, task, seed, sel.winner,
            speedup=M.speedup_vs(r, baseline),
            fast_1=1.0 if M.is_fast(r, baseline=baseline) else 0.0,
            correct=1.0 if sel.winner is not None else 0.0,
            cost=float(len(sel.timed)),
            notes=sel.notes,
        ))

    k = len(sample_results)
    c_fast = sum(M.is_fast(r, baseline=baseline) for r in sample_results)
    rows = [(s, M.speedup_vs(r, baseline), t) for r, s, t in zip(sample_results, sample_surprisal, sample_tokens)
            if r is not None and r.status is Status.CORRECT and M.speedup_vs(r, baseline) is not None
            and s is not None]
    nll = [float(s) for s, _, _ in rows]
    speed = [float(v) for _, v, _ in rows]
    toks = [t for _, _, t in rows]
    partial = None
    if rows and all(t is not None for t in toks):
        partial = M.partial_spearman(nll, speed, [float(t) for t in toks])
    stats = PoolStats(
        task=task, seed=seed, k=k, samples_path=samples_path, unique=len(pool),
        correct=sum(1 for s in eligible(pool) if timings[s.index].status is Status.CORRECT),
        logprob_std=logprob_std(pool),
        sample_fast_1=M.sample_fast_1(sample_results, baseline),
        sample_correctness=M.correctness_rate(sample_results),
        curve=tuple(M.scaling_curve(k, c_fast)) if k else (),
        spearman=M.spearman(nll, speed),
        partial=partial,
        quartiles=tuple(M.surprisal_quartiles(nll, speed, toks)) if rows else (),
    )
    return stats, outcomes


def _runtime_order(index: int, result: EvalResult) -> tuple[float, int]:
    # As the oracle ranks (kopt/selection.py): lowest median runtime, then lowest index.
    rt = result.runtime_ms
    return (rt if rt is not None and math.isfinite(rt) else math.inf, index)


def score_ttt(
    task: str,
    seed: int,
    report: Mapping[str, Any],
    sample_steps: Sequence[int],
    representatives: Sequence[int],
    timed: Mapping[int, EvalResult],
    *,
    k: int,
    ttt_k: int,
    samples_path: str = "",
    baseline: str = M.DEFAULT_BASELINE,
) -> Outcome:
    """The ttt strategy's outcome on one (task, seed), from `kopt.ttt.adapt`'s report and the TTT pool.

    `sample_steps[i]` and `representatives[i]` are sample i's TTT step and the index of the first sample
    with the same code (i itself when unique); `timed` maps each representative that was timed to its timed
    result (every correct candidate of every step run: that is what scoring the steps costs).

    Best-of-Adaptation chose `report["chosen_step"]` by its batch's sample-level fast_1 (Barnes 2026 §3.5);
    the pick is the fastest candidate of that batch that stayed correct when timed (ties: the lower index),
    as the oracle picks within a pool. A duplicate counts as drawn at this step: its index is its own line.
    Cost = candidates timed across all steps (len(timed)).
    """
    chosen = int(report.get("chosen_step") or 0)
    steps = list(report.get("steps") or [])
    batch = [i for i, s in enumerate(sample_steps) if s == chosen]
    ok = {i: timed[representatives[i]] for i in batch
          if representatives[i] in timed and timed[representatives[i]].status is Status.CORRECT}
    pick = min(ok, key=lambda i: _runtime_order(i, ok[i])) if ok else None
    r = ok.get(pick) if pick is not None else None

    per_step = []
    for st in steps:
        s = st.get("step")
        idx = [i for i, x in enumerate(sample_steps) if x == s]
        good = {i: timed[representatives[i]] for i in idx
                if representatives[i] in timed and timed[representatives[i]].status is Status.CORRECT}
        best = min(good, key=lambda i: _runtime_order(i, good[i])) if good else None
        per_step.append({
            "step": s, "score": st.get("score"), "samples": st.get("samples", len(idx)),
            "correct": st.get("correct"), "unique_kernels": st.get("unique_kernels"),
            "mean_surprisal": st.get("mean_surprisal"), "logprob_std": st.get("logprob_std"),
            "reward_mean": st.get("reward_mean"), "loss": st.get("loss"), "adapter": st.get("adapter"),
            "best_index": best, "best_speedup": M.speedup_vs(good[best], baseline) if best is not None else None,
            "timed_kernels": len({representatives[i] for i in idx if representatives[i] in timed}),
        })
    rounds = len(steps) or 1
    requested = int((report.get("params") or {}).get("steps") or max(0, rounds - 1))
    budget = {"k": k, "ttt_k": ttt_k, "steps": requested, "budget_samples": (requested + 1) * ttt_k,
              "samples_used": len(sample_steps), "rule": "(steps + 1) * ttt_k <= k"}
    notes = [f"TTT: step 0 = first {ttt_k} of the K={k} samples, {ttt_k} more per step; ran {rounds - 1} of "
             f"{requested} step(s) (stopped: {report.get('stopped')}), used {len(sample_steps)} samples; "
             f"Best-of-Adaptation chose step {chosen}"]
    if pick is None:
        notes.append(f"TTT: no candidate of step {chosen} stayed correct when timed")
    detail = {"task": task, "seed": seed, "samples_path": samples_path, "budget": budget,
              "chosen_step": chosen, "chosen_score": report.get("chosen_score"),
              "chosen_adapter": report.get("chosen_adapter"), "stopped": report.get("stopped"),
              "params": dict(report.get("params") or {}), "steps": per_step}
    return Outcome(
        TTT, task, seed, pick,
        speedup=M.speedup_vs(r, baseline),
        fast_1=1.0 if M.is_fast(r, baseline=baseline) else 0.0,
        correct=1.0 if pick is not None else 0.0,
        cost=float(len(timed)),
        notes=tuple(notes),
        step=chosen if pick is not None else None,
        samples_path=samples_path or None,
        detail=detail,
    )


