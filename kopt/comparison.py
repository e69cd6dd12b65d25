"""`kopt compare`: every selection strategy scored on the same K samples (issue 4).

For each task and seed: build the pool (K samples, cached and shared with `kopt optimize`), time every
correct candidate once (the oracle needs them all; timings are cached too), then run each strategy with a
`time_fn` served from those timings, so every strategy sees the same numbers and its cost is the number of
candidates it asked to time. `random` is scored as its expected value over the correct set, not one draw
(issue 4). Metrics come from `kopt.metrics`, which cites the paper beside each formula.

The scoring (`score_pool`, `ttt_budget`, `score_ttt`) is pure; `run_compare` is the only part that samples,
trains and evaluates.

The TTT arm (`--ttt-steps N`, issue 4 "TTT with Best-of-Adaptation under a matched rollout budget"):
- matched rollout budget: TTT gets at most the K samples Best-of-N gets. Its base step (step 0) is the
  pool's first ttt_k samples and each of the N steps draws ttt_k more, so (N+1)·ttt_k ≤ K; ttt_k defaults
  to K // (N+1) and must be at least 2 (leave-one-out advantages). `ttt_budget` does the arithmetic;
- it runs on its own pool: a copy of the base pool's first ttt_k samples (same lines, same verdicts and
  timings) in a folder of its own under the base run directory, so `kopt.ttt.adapt` can append each step's
  samples to it while the other strategies keep exactly the K base samples;
- outcome (`score_ttt`): Best-of-Adaptation ranks the steps by the sample-level fast_1 of each step's batch
  (Barnes 2026 §3.5, Algorithm 1) and keeps the best; kopt then picks the fastest correct candidate of
  that step's batch, as the oracle would within the batch. Scoring a step needs every correct candidate
  of its batch timed, so the cost is every correct candidate timed across all steps run (the base step
  included), not 1. The pick's index is a line in the TTT pool's samples file (its path is in the pick);
- equivalent K is read off the same Best-of-N curve (the base pool's K samples) as for every strategy.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from kopt import metrics as M
from kopt.errors import KoptError
from kopt.records import EvalResult, Progress, Scored, Selection, Status, no_progress
from kopt.selection import STRATEGIES, eligible, logprob_std, select
from kopt.ttt import TTTOptions

# The order of issue 4 and of every table and JSON object. "ttt" comes last and only with --ttt-steps.
ALL_STRATEGIES = ("oracle", "random", "confidence", "surprisal", "surprisal-top-m")
TTT = "ttt"


def parse_strategies(text: str | None, ttt_steps: int = 0) -> list[str]:
    """Strategy names in the canonical order. `all` includes "ttt" only when `ttt_steps` > 0."""
    order = list(ALL_STRATEGIES) + [TTT]
    if not text or text.strip() == "all":
        return list(ALL_STRATEGIES) + ([TTT] if ttt_steps > 0 else [])
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in STRATEGIES and n != TTT]
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
        if name == TTT:  # scored on its own pool by score_ttt
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


# ---- aggregation ----


@dataclass(frozen=True)
class StrategySummary:
    strategy: str
    fast_1: M.Aggregate
    mean_speedup: M.Aggregate  # over (task, seed) pools where the strategy had a winner
    geomean_speedup: float | None
    correctness: M.Aggregate
    cost: M.Aggregate
    equivalent_k: M.EquivalentK | None
    picks: tuple[Outcome, ...]

    @property
    def runs(self) -> list[Mapping[str, Any]]:
        """ttt: one entry per (task, seed) with the budget, per-step scores and the chosen step."""
        return [o.detail for o in self.picks if o.detail is not None]

    def to_json(self) -> dict[str, Any]:
        d = {
            "fast_1": self.fast_1.to_json(),
            "mean_speedup": self.mean_speedup.to_json(),
            "geomean_speedup": self.geomean_speedup,
            "correctness": self.correctness.to_json(),
            "cost": self.cost.to_json(),
            "equivalent_k": self.equivalent_k.to_json() if self.equivalent_k else None,
            "picks": [o.to_json() for o in self.picks],
        }
        if self.runs:
            d["runs"] = [dict(r) for r in self.runs]
        return d


@dataclass(frozen=True)
class CompareResult:
    k: int
    seeds: tuple[int, ...]
    top_m: int
    tasks: tuple[str, ...]
    strategies: tuple[StrategySummary, ...]
    pools: tuple[PoolStats, ...]
    curve: tuple[tuple[int, float], ...]  # Best-of-N fast_1 curve averaged over pools
    evaluated_now: int = 0  # verdicts computed in this run (0 when everything came from the cache)
    timed_now: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)

    def strategy(self, name: str) -> StrategySummary:
        return next(s for s in self.strategies if s.strategy == name)

    def to_json(self) -> dict[str, Any]:
        pools = self.pools
        quartiles = _mean_quartiles(pools)
        return {
            "k": self.k,
            "seeds": list(self.seeds),
            "top_m": self.top_m,
            "tasks": list(self.tasks),
            "params": dict(self.params),
            "strategies": {s.strategy: s.to_json() for s in self.strategies},
            "best_of_n": [{"k": k, "fast_1": v} for k, v in self.curve],
            "samples": {
                "sample_fast_1": M.aggregate({(p.task, p.seed): p.sample_fast_1 for p in pools}).to_json(),
                "correctness": M.aggregate({(p.task, p.seed): p.sample_correctness for p in pools}).to_json(),
                "spearman_nll_speedup": M.aggregate({(p.task, p.seed): p.spearman for p in pools}).to_json(),
                "partial_nll_speedup_given_tokens": M.aggregate(
                    {(p.task, p.seed): p.partial for p in pools}).to_json(),
                "quartiles": quartiles,
            },
            "pools": [p.to_json() for p in pools],
            "evaluated_now": self.evaluated_now,
            "timed_now": self.timed_now,
        }


def _mean_quartiles(pools: Sequence[PoolStats]) -> list[dict[str, Any]]:
    """Average each quartile's numbers over pools (quartiles are taken within a pool: surprisal scales
    differ between tasks)."""
    out = []
    for q in range(1, 5):
        rows = [x for p in pools for x in p.quartiles if x.quartile == q]
        if not rows:
            continue
        toks = [x.mean_tokens for x in rows if x.mean_tokens is not None]
        out.append({"quartile": q, "pools": len(rows), "n": sum(x.n for x in rows),
                    "fast_1": M.mean(x.fast_1 for x in rows), "mean_speedup": M.mean(x.mean_speedup for x in rows),
                    "mean_tokens": M.mean(toks)})
    return out


def summarize(pools: Sequence[PoolStats], outcomes: Sequence[Outcome], strategies: Sequence[str], *, k: int,
              seeds: Sequence[int], top_m: int, tasks: Sequence[str], **extra: Any) -> CompareResult:
    curves = [list(p.curve) for p in pools if p.curve]
    curve = M.mean_curve(curves) if curves else []
    summaries = []
    for name in strategies:
        mine = [o for o in outcomes if o.strategy == name]
        f1 = M.aggregate({(o.task, o.seed): o.fast_1 for o in mine})
        won = [o for o in mine if o.speedup is not None and (o.correct or 0) > 0]
        summaries.append(StrategySummary(
            strategy=name,
            fast_1=f1,
            mean_speedup=M.aggregate({(o.task, o.seed): o.speedup for o in won}),
            geomean_speedup=M.geomean(o.speedup for o in won),
            correctness=M.aggregate({(o.task, o.seed): o.correct for o in mine}),
            cost=M.aggregate({(o.task, o.seed): o.cost for o in mine if o.fast_1 is not None}),
            equivalent_k=M.equivalent_k(f1.mean, curve) if f1.mean is not None and curve else None,
            picks=tuple(mine),
        ))
    return CompareResult(k=k, seeds=tuple(seeds), top_m=top_m, tasks=tuple(tasks), strategies=tuple(summaries),
                         pools=tuple(pools), curve=tuple(curve), **extra)


# ---- the run ----


def task_label(task: Any, all_tasks: Sequence[Any]) -> str:
    """A short unique name for a task: its name, or its folder's name for `folder/task.py` files."""
    name = task.name
    if name == "task":
        name = Path(task.path).parent.name
    same = [t for t in all_tasks if t is not task and t.name == task.name and Path(t.path).parent.name == name]
    if same:
        name = f"{Path(task.path).parent.name}/{task.name}"
    return name


def samples_for(samples: Path | None, task: Any, label: str, target: str, n_tasks: int) -> Path | None:
    """The samples file for one task.

    `--samples FILE` serves a single task. `--samples DIR` holds one file per task: `DIR/<task>.jsonl`, or
    `DIR/<task>/samples_<target>.jsonl` (the layout of kopt's examples/), where <task> is the task's name
    or, for a `folder/task.py` file, the folder's name.
    """
    if samples is None:
        return None
    if samples.is_dir():
        names = dict.fromkeys([label, task.name, Path(task.path).parent.name])
        tried = []
        for n in names:
            for cand in (samples / f"{n}.jsonl", samples / n / f"samples_{target}.jsonl"):
                tried.append(cand)
                if cand.is_file():
                    return cand
        raise KoptError(f"no samples file for task {label!r} in {samples}",
                        f"expected one of: {', '.join(str(t) for t in tried[:2])}")
    if n_tasks > 1:
        raise KoptError(f"--samples {samples} is one file but there are {n_tasks} tasks",
                        "pass --samples DIR holding <task name>.jsonl for each task")
    return samples


def _check_ttt(run: Any, ttt: TTTOptions | None, strategies: Sequence[str]) -> int | None:
    """Refuse a TTT arm that cannot run before anything is sampled; return ttt_k (None without ttt)."""
    if TTT not in strategies:
        return None
    if ttt is None or ttt.ttt_steps < 1:
        raise KoptError("strategy ttt needs --ttt-steps", "add --ttt-steps 1 (or 2) with --sampler hf|vllm --model DIR")
    from kopt.samplers import default_sampler, sampler_class
    from kopt.ttt import require_trainable

    require_trainable(sampler_class(run.sampler or default_sampler(run.sampler_params())), run.model)
    return ttt_budget(run.k, ttt.ttt_steps, ttt.ttt_k)


def _ttt_dir(base_run_dir: Path, ttt: TTTOptions, ttt_k: int) -> Path:
    ident = json.dumps({"steps": ttt.ttt_steps, "lr": ttt.ttt_lr, "rank": ttt.lora_rank, "k": ttt_k,
                        "patience": ttt.ttt_patience}, sort_keys=True)
    import hashlib

    return base_run_dir / f"compare-ttt-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


def run_compare(
    tasks: Sequence[Any],
    run: Any,
    *,
    seeds: Sequence[int],
    strategies: Sequence[str],
    top_m: int = 3,
    progress: Progress = no_progress,
    cache: Any = None,
    ttt: TTTOptions | None = None,
    warn: Callable[[str], None] | None = None,
    baseline: str = M.DEFAULT_BASELINE,
) -> CompareResult:
    """Build each (task, seed) pool, check all of it and time every correct candidate once (the oracle and
    random need every verdict, so compare never stops early), then score every strategy on it.

    With "ttt" in `strategies`, TTT (kopt/ttt.py) then runs on a fork of the pool holding its first ttt_k
    samples (see the module docstring: matched rollout budget, outcome, cost)."""
    from kopt import ttt as ttt_mod
    from kopt.cache import Cache
    from kopt.evaluator import resolve_target
    from kopt.pool import Pool

    warn = warn or (lambda msg: None)
    if not tasks:
        raise KoptError("no tasks to compare", "pass task files, directories or --kernelbench DIR --ids ...")
    if top_m < 1:
        raise KoptError(f"--top-m must be at least 1, got {top_m}", "use --top-m 3 (the paper's setting)")
    ttt_k = _check_ttt(run, ttt, strategies)
    note = ttt_mod.oversharpening_note(ttt.ttt_steps) if ttt_k is not None and ttt is not None else None
    if note:
        warn(note)
    target = resolve_target(run.target)
    own_cache = cache is None
    cache = cache or Cache(enabled=not run.no_cache)
    labels = [task_label(t, tasks) for t in tasks]
    pools: list[PoolStats] = []
    outcomes: list[Outcome] = []
    evaluated = timed = 0
    try:
        for task, label in zip(tasks, labels):
            samples = samples_for(run.samples, task, label, target, len(tasks))
            for seed in seeds:
                opts = dataclasses.replace(run, seed=int(seed), samples=samples)
                # One pool (and sampler) per (task, seed): the sampler's parameters carry the seed.
                with Pool(task, opts, cache=cache, progress=progress) as pool:
                    pool.fill()
                    pool.check()
                    scored = pool.scored(mode=run.surprisal)
                    good = [s.index for s in eligible(scored)]
                    timings = pool.time(good) if good else {}
                    k = len(pool.samples)
                    stats, outs = score_pool(
                        label, int(seed), scored, timings,
                        [pool.result_for(i) for i in range(k)],
                        [s.surprisal(run.surprisal) for s in pool.samples],
                        [s.num_tokens for s in pool.samples],
                        strategies, top_m=top_m, samples_path=str(pool.samples_path), baseline=baseline,
                    )
                    evaluated += pool.evaluated_now
                    timed += pool.timed_now
                    if ttt_k is not None and ttt is not None:
                        tpool = pool.fork(ttt_k, _ttt_dir(pool.run_dir, ttt, ttt_k))
                        report = ttt_mod.adapt(tpool, dataclasses.replace(ttt, ttt_k=ttt_k), progress=progress,
                                               warn=warn)
                        n = len(tpool.candidates)
                        outs.append(score_ttt(
                            label, int(seed), report, [c.step for c in tpool.candidates],
                            [tpool.representative(i) for i in range(n)], dict(tpool.timed),
                            k=k, ttt_k=ttt_k, samples_path=str(tpool.samples_path), baseline=baseline))
                        evaluated += tpool.evaluated_now
                        timed += tpool.timed_now
                pools.append(stats)
                outcomes.extend(outs)
    finally:
        if own_cache:
            cache.close()
    params: dict[str, Any] = {"target": target, "surprisal": run.surprisal, "temperature": run.temperature,
                              "sampler": run.sampler, "model": run.model, "baseline": baseline,
                              "evaluation": "exhaustive (every strategy is scored on every verdict)"}
    if ttt_k is not None and ttt is not None:
        params["ttt"] = {"steps": ttt.ttt_steps, "ttt_k": ttt_k, "lr": ttt.ttt_lr, "lora_rank": ttt.lora_rank,
                         "patience": ttt.ttt_patience, "budget_samples": (ttt.ttt_steps + 1) * ttt_k, "k": run.k,
                         "rule": "(steps + 1) * ttt_k <= k"}
    return summarize(pools, outcomes, strategies, k=run.k, seeds=seeds, top_m=top_m, tasks=labels,
                     evaluated_now=evaluated, timed_now=timed, params=params)


# ---- report files ----


def write_report(result: CompareResult, out_dir: Path) -> list[Path]:
    """results.json, results.csv, the PNG plots and report.md embedding them, under `out_dir`."""
    import csv

    from kopt import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    written = []
    p = out_dir / "results.json"
    p.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    written.append(p)
    p = out_dir / "results.csv"
    with p.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["strategy", "task", "seed", "index", "speedup", "fast_1", "correct", "cost", "notes"])
        for s in result.strategies:
            for o in s.picks:
                w.writerow([o.strategy, o.task, o.seed, "" if o.pick is None else o.pick,
                            "" if o.speedup is None else f"{o.speedup:.6g}",
                            "" if o.fast_1 is None else f"{o.fast_1:.6g}",
                            "" if o.correct is None else f"{o.correct:.6g}", f"{o.cost:.6g}", "; ".join(o.notes)])
    written.append(p)
    scaling = plots.plot_scaling(result, out_dir / "scaling.png")
    bars = plots.plot_strategies(result, out_dir / "strategies.png")
    written += [scaling, bars]
    p = out_dir / "report.md"
    p.write_text(report_markdown(result, scaling.name, bars.name), encoding="utf-8")
    written.append(p)
    return written


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def report_markdown(result: CompareResult, scaling_png: str, bars_png: str) -> str:
    lines = [
        "# kopt compare",
        "",
        f"{len(result.tasks)} task(s) x {len(result.seeds)} seed(s) ({', '.join(map(str, result.seeds))}), "
        f"K={result.k}, top-m={result.top_m}, target {result.params.get('target', '')}. Every strategy is scored "
        "on the same pool; cost = candidates it had to time (random: expected; ttt: every correct candidate "
        "of every TTT step). Method: Barnes 2026, arXiv 2602.07670.",
        "",
        "| strategy | fast_1 | seed spread (std) | mean speedup | geomean speedup | correct | cost | equivalent K |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in result.strategies:
        lines.append(
            f"| {s.strategy} | {_fmt(s.fast_1.mean)} | {_fmt(s.fast_1.seed_std)} | {_fmt(s.mean_speedup.mean, '.2f')} | "
            f"{_fmt(s.geomean_speedup, '.2f')} | {_fmt(s.correctness.mean)} | {_fmt(s.cost.mean, '.2f')} | "
            f"{s.equivalent_k if s.equivalent_k else '-'} |")
    samples = result.to_json()["samples"]
    lines += [
        "",
        f"![Best-of-N scaling curve]({scaling_png})",
        "",
        f"![fast_1 and mean speedup per strategy]({bars_png})",
        "",
        "## Samples",
        "",
        f"- sample-level fast_1: {_fmt(samples['sample_fast_1']['mean'])}; correctness "
        f"{_fmt(samples['correctness']['mean'])}",
        f"- Spearman rho(NLL, speedup) over correct samples: {_fmt(samples['spearman_nll_speedup']['mean'])}; "
        f"partial, controlling for token count: {_fmt(samples['partial_nll_speedup_given_tokens']['mean'])}",
        "",
        "| surprisal quartile | samples | fast_1 | mean speedup | mean tokens |",
        "|---|---|---|---|---|",
    ]
    for q in samples["quartiles"]:
        lines.append(f"| Q{q['quartile']} | {q['n']} | {_fmt(q['fast_1'])} | {_fmt(q['mean_speedup'], '.2f')} | "
                     f"{_fmt(q['mean_tokens'], '.0f')} |")
    lines += ["", "## Pools", "", "| task | seed | K | unique | correct | logprob std | samples |",
              "|---|---|---|---|---|---|---|"]
    for p in result.pools:
        lines.append(f"| {p.task} | {p.seed} | {p.k} | {p.unique} | {p.correct} | {_fmt(p.logprob_std, '.2f')} | "
                     f"`{p.samples_path}` |")
    lines += ttt_markdown(result)
    lines += ["", "Picks per strategy, task and seed: results.csv / results.json (\"index\" = line in the samples file;",
              "for ttt, in the TTT run's own samples file, `samples_path` in its pick).", ""]
    return "\n".join(lines)


def ttt_markdown(result: CompareResult) -> list[str]:
    """The report's TTT section: the matched budget, how the outcome and cost are defined, per-step scores."""
    s = next((x for x in result.strategies if x.strategy == TTT), None)
    if s is None:
        return []
    b = result.params.get("ttt") or {}
    lines = [
        "",
        "## TTT with Best-of-Adaptation",
        "",
        f"Matched rollout budget: TTT draws no more samples than Best-of-N's K={result.k}. Step 0 (the base "
        f"model) is the first ttt_k={b.get('ttt_k')} samples of the same pool, and each of the "
        f"{b.get('steps')} step(s) trains one LoRA GRPO step (lr {b.get('lr')}, rank {b.get('lora_rank')}) on the "
        f"previous batch and draws ttt_k more: (steps + 1) x ttt_k = {b.get('budget_samples')} <= K. "
        f"Best-of-Adaptation (patience {b.get('patience')}) keeps the step whose batch has the best sample-level "
        "fast_1 (Barnes 2026 §3.5); the ttt pick is the fastest correct candidate of that step's batch. Its cost "
        "is every correct candidate timed across all steps run, which scoring the steps requires. TTT runs on "
        "its own copy of the pool, so the other strategies are scored on exactly the K base samples.",
        "",
        "| task | seed | ttt_k | samples used | step scores (fast_1) | chosen step | stopped | pick | speedup | cost |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in s.picks:
        d = o.detail or {}
        scores = ", ".join(f"{st['step']}: {_fmt(st['score'])}" for st in d.get("steps", []))
        lines.append(f"| {o.task} | {o.seed} | {d.get('budget', {}).get('ttt_k', '-')} | "
                     f"{d.get('budget', {}).get('samples_used', '-')} | {scores} | {d.get('chosen_step', '-')} | "
                     f"{d.get('stopped', '-')} | {'-' if o.pick is None else o.pick} | {_fmt(o.speedup, '.2f')} | "
                     f"{o.cost:g} |")
    return lines
