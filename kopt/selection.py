"""Selection strategies: which correct candidates to time, and which one wins.

Barnes 2026, "Surprisal-Guided Selection" (arXiv 2602.07670): among K correct-or-not samples of one task,
the *most surprising* correct sample (highest surprisal = lowest log-probability) was fast and correct on
80% of KernelBench L1 eval tasks at K=64, the most confident one on 50%; timing the 3 most surprising and
keeping the fastest matched the oracle (which times every correct sample). So the default strategy,
`surprisal-top-m` with m=3, times 3 candidates instead of all of them.

Every strategy works on the same `pool`: the unique (deduplicated) candidates with their untimed
correctness verdicts and their surprisal. Only `Status.CORRECT` candidates are eligible. Indices are
candidate indices (`Scored.index`, the sample's line in samples.jsonl), never positions in `pool`.
Ties (equal surprisal, equal runtime) go to the lower index, so a selection is a pure function of the pool.

A candidate whose timing re-check fails (its timed status is no longer correct) cannot win. When every
candidate a strategy timed has flipped, the strategy continues down its own ranking one candidate at a
time until one stays correct or the ranking is exhausted; `Selection.timed` records every one it timed.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Mapping, Protocol, Sequence

from kopt.errors import KoptError
from kopt.records import EvalResult, Scored, Selection, Status

# Barnes 2026, applicability limit of surprisal-guided selection: the signal needs spread in the
# log-probabilities of the correct samples; with a standard deviation below about 1 nat the ranking is
# close to arbitrary and the paper recommends falling back to timing everything (oracle).
MIN_LOGPROB_STD_NATS = 1.0

WEAK_SIGNAL_NOTE = "surprisal signal weak for this task"


def eligible(pool: Sequence[Scored]) -> list[Scored]:
    """The candidates a strategy may pick: correct before timing, in index order."""
    return sorted((s for s in pool if s.result.status is Status.CORRECT), key=lambda s: s.index)


def logprob_std(pool: Sequence[Scored]) -> float | None:
    """Standard deviation (population, nats) of the *summed* log-probability among correct candidates.

    Why: surprisal-guided selection ranks candidates by how unlikely the model found them. When the correct
    candidates all have nearly the same log-probability, that ranking carries no information and picking by
    it is a coin toss. Barnes 2026 states the method's applicability limit as sigma >= 1.0 nat of summed
    log-probability among the correct samples (`MIN_LOGPROB_STD_NATS`). None when fewer than two correct
    candidates have a log-probability (no spread can be measured).
    """
    values = [s.candidate.sample.logprob for s in eligible(pool)]
    xs = [float(v) for v in values if v is not None]
    if len(xs) < 2:
        return None
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))


def _runtime_key(index: int, result: EvalResult) -> tuple[float, int]:
    # Fastest = lowest median runtime; a correct result without a runtime sorts last. Ties: lower index.
    rt = result.runtime_ms
    return (rt if rt is not None and math.isfinite(rt) else math.inf, index)


def _still_correct(timed: Mapping[int, EvalResult]) -> dict[int, EvalResult]:
    return {i: r for i, r in timed.items() if r.status is Status.CORRECT}


def _require_logprobs(pool: Sequence[Scored], strategy: str) -> None:
    good = eligible(pool)
    missing = [s.index for s in good if s.surprisal is None]
    if missing:
        raise KoptError(
            f"{len(missing)} of {len(good)} correct samples have no log-probabilities "
            f"(strategy {strategy!r} ranks by surprisal)",
            "use --select oracle or random, or a sampler that records them",
        )


class Strategy(Protocol):
    """One selection strategy. `plan` says what to time first; `choose` picks among what was timed."""

    name: str
    needs_logprobs: bool

    def plan(self, pool: Sequence[Scored], *, top_m: int, seed: int) -> list[int]: ...

    def choose(self, pool: Sequence[Scored], timed: Mapping[int, EvalResult]) -> int | None: ...


class _Ranked:
    """Shared machinery: a strategy is a ranking of the eligible candidates plus how many to time first.

    `choose` keeps the fastest still-correct timed candidate (`pick_fastest`) or the best-ranked one
    (single-pick strategies, where speed is only measured for the report).
    """

    name = ""
    needs_logprobs = False
    pick_fastest = False

    def rank(self, pool: Sequence[Scored], *, seed: int) -> list[int]:
        raise NotImplementedError

    def first(self, top_m: int) -> int | None:
        """How many of the ranking to time up front (None = all)."""
        return 1

    def plan(self, pool: Sequence[Scored], *, top_m: int, seed: int) -> list[int]:
        if self.needs_logprobs:
            _require_logprobs(pool, self.name)
        order = self.rank(pool, seed=seed)
        n = self.first(top_m)
        return order if n is None else order[:n]

    def choose(self, pool: Sequence[Scored], timed: Mapping[int, EvalResult]) -> int | None:
        ok = _still_correct(timed)
        allowed = {s.index for s in eligible(pool)}
        ok = {i: r for i, r in ok.items() if i in allowed}
        if not ok:
            return None
        if self.pick_fastest:
            return min(ok, key=lambda i: _runtime_key(i, ok[i]))
        return self.best_ranked(pool, ok)

    def best_ranked(self, pool: Sequence[Scored], ok: Mapping[int, EvalResult]) -> int:
        order = self.rank(pool, seed=0)
        return next(i for i in order if i in ok)


def _by_surprisal(pool: Sequence[Scored], highest_first: bool) -> list[int]:
    good = [s for s in eligible(pool) if s.surprisal is not None]
    sign = -1.0 if highest_first else 1.0
    return [s.index for s in sorted(good, key=lambda s: (sign * float(s.surprisal), s.index))]


class SurprisalTopM(_Ranked):
    """Default. Rank by surprisal, highest first; time the top m; the fastest still-correct one wins."""

    name = "surprisal-top-m"
    needs_logprobs = True
    pick_fastest = True

    def rank(self, pool, *, seed):
        return _by_surprisal(pool, highest_first=True)

    def first(self, top_m):
        if top_m < 1:
            raise KoptError(f"--top-m must be at least 1, got {top_m}", "use --top-m 3 (the paper's setting)")
        return top_m


class Surprisal(_Ranked):
    """The single highest-surprisal (least likely) correct candidate."""

    name = "surprisal"
    needs_logprobs = True

    def rank(self, pool, *, seed):
        return _by_surprisal(pool, highest_first=True)


class Confidence(_Ranked):
    """The single lowest-surprisal (most likely) correct candidate: the usual 'most confident' baseline."""

    name = "confidence"
    needs_logprobs = True

    def rank(self, pool, *, seed):
        return _by_surprisal(pool, highest_first=False)


class RandomCorrect(_Ranked):
    """A seeded random correct candidate (timed for the report only)."""

    name = "random"

    def rank(self, pool, *, seed):
        order = [s.index for s in eligible(pool)]
        random.Random(seed).shuffle(order)
        return order

    def best_ranked(self, pool, ok):
        # The seed is not known here; the timing order (the mapping's order) is the seeded ranking.
        return next(iter(ok))


class Oracle(_Ranked):
    """Time every correct candidate; the fastest still-correct one wins (the upper bound, at full cost)."""

    name = "oracle"
    pick_fastest = True

    def rank(self, pool, *, seed):
        return [s.index for s in eligible(pool)]

    def first(self, top_m):
        return None


STRATEGIES: dict[str, Strategy] = {
    s.name: s for s in (SurprisalTopM(), Surprisal(), Confidence(), RandomCorrect(), Oracle())
}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KoptError(
            f"unknown selection strategy {name!r}", f"use one of: {', '.join(STRATEGIES)}"
        ) from None


def select(
    strategy: str,
    pool: Sequence[Scored],
    time_fn: Callable[[list[int]], Mapping[int, EvalResult]],
    *,
    top_m: int = 3,
    seed: int = 0,
    adaptive: bool = False,
) -> Selection:
    """Run one strategy on a pool: time what it plans, continue down its ranking if everything flipped.

    `time_fn(indices)` times those candidates and returns their timed EvalResults. With `adaptive=True` and a
    weak surprisal signal (logprob_std < 1.0 nat), every correct candidate is timed instead (oracle
    behaviour); the Selection keeps the strategy's name and says so in its notes.
    """
    strat = get_strategy(strategy)
    good = eligible(pool)
    std = logprob_std(pool)
    if not good:
        return Selection(strategy=strategy, winner=None, timed=(), logprob_std=std,
                         notes=("no correct candidate",))
    notes: list[str] = []
    first = strat.plan(pool, top_m=top_m, seed=seed)  # raises when logprobs are needed and missing
    chooser: Strategy = strat
    order = strat.rank(pool, seed=seed) if isinstance(strat, _Ranked) else list(first)
    if strat.needs_logprobs and std is not None and std < MIN_LOGPROB_STD_NATS:
        note = f"{WEAK_SIGNAL_NOTE} (log-prob std {std:.2f} < {MIN_LOGPROB_STD_NATS:.1f} nats)"
        if adaptive:
            note += "; adaptive: timed every correct candidate"
            chooser = STRATEGIES["oracle"]
            first = chooser.plan(pool, top_m=top_m, seed=seed)
            order = list(first)
        notes.append(note)

    timed: dict[int, EvalResult] = {}
    timed_order: list[int] = []

    def run(indices: list[int]) -> None:
        todo = [i for i in indices if i not in timed]
        if not todo:
            return
        got = time_fn(todo)
        for i in todo:
            if i not in got:
                raise KoptError(f"timing returned no result for candidate {i}", "this is a kopt bug; please report it")
            timed[i] = got[i]
            timed_order.append(i)

    run(list(first))
    winner = chooser.choose(pool, timed)
    for i in order:  # everything timed flipped: continue down the ranking, one at a time
        if winner is not None:
            break
        if i in timed:
            continue
        run([i])
        winner = chooser.choose(pool, timed)
    flipped = [i for i in timed_order if timed[i].status is not Status.CORRECT]
    if flipped:
        notes.append(f"timing re-check failed for candidate(s) {', '.join(map(str, flipped))}")
    if winner is None:
        notes.append("no candidate stayed correct when timed")
    return Selection(strategy=strategy, winner=winner, timed=tuple(timed_order), logprob_std=std,
                     notes=tuple(notes))
