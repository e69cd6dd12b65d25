"""Surprisal-ordered evaluation picks exactly what exhaustive evaluation picks, and checks less.

The property test draws many random pools (random correctness, speed, log-probs with ties, duplicates,
missing log-probs, timing re-checks that fail, verdicts already cached at random places) and runs both
ways through the real selection code; only the evaluator is replaced by the pool's scripted verdicts.
"""

from __future__ import annotations

import random

import pytest

from kopt.lazy import evaluate_and_select, needed, next_batch, ranking, resolved_prefix
from kopt.records import Candidate, EvalResult, Sample, Scored, Status
from kopt.selection import select


def test_ranking_and_stop_rule():
    assert ranking({3: 1.0, 1: 2.0, 2: 1.0}) == [1, 2, 3]  # descending surprisal, ties to the lower index
    assert ranking({1: 1.0, 2: None}) is None
    order = [5, 2, 7, 1, 0]
    assert resolved_prefix(order, {5: True, 2: False, 1: True}) == [5, 2]
    assert next_batch(order, {}, need=2, jobs=2) == [5, 2]
    assert next_batch(order, {5: True, 2: False}, need=2, jobs=2) == [7, 1]
    assert next_batch(order, {5: True, 2: False, 7: True}, need=2, jobs=2) == []  # 2 correct, nothing before
    assert next_batch(order, {5: True, 7: True}, need=2, jobs=3) == [2]  # a more surprising one is pending
    assert next_batch(order, {i: False for i in order}, need=1, jobs=2) == []  # all known
    assert needed("surprisal-top-m", 3) == 3 and needed("surprisal", 3) == 1
    assert needed("oracle", 3) is None and needed("confidence", 3) is None
    assert needed("surprisal-top-m", 3, adaptive=True) is None


class ScriptedPool:
    """A pool whose evaluator is a table: verdicts and timings drawn at random, cached ones preloaded."""

    def __init__(self, rng: random.Random, n: int):
        self.verdict: dict[int, EvalResult] = {}
        self.timing: dict[int, EvalResult] = {}
        self.surprisal: dict[int, float | None] = {}
        self.candidates: list[Candidate] = []
        levels = [rng.choice([0.1, 0.5, 0.5, 1.0, 2.0, 3.0]) for _ in range(4)]  # few levels: many ties
        missing = rng.random() < 0.1
        p_correct = rng.choice([0.1, 0.5, 0.9])
        for i in range(n):
            dup = rng.randrange(i) if i and rng.random() < 0.15 else None
            lp = None if missing and rng.random() < 0.3 else -rng.choice(levels + [rng.uniform(0, 4)]) * 10
            sample = Sample(text="", logprob=lp, num_tokens=10)
            self.candidates.append(Candidate(index=i, sample=sample, code=f"k{i}" if dup is None else f"k{dup}",
                                             duplicate_of=dup))
            if dup is not None:
                continue
            self.surprisal[i] = sample.surprisal("mean")
            ok = rng.random() < p_correct
            self.verdict[i] = EvalResult(status=Status.CORRECT if ok else rng.choice(
                [Status.INCORRECT, Status.COMPILE_ERROR, Status.TIMEOUT]))
            if ok:
                flips = rng.random() < 0.25
                rt = rng.choice([1.0, 2.0, 2.0, 3.0, rng.uniform(0.5, 4)])
                self.timing[i] = (EvalResult(status=Status.INCORRECT, reason="timing re-check failed") if flips
                                  else EvalResult(status=Status.CORRECT, runtime_ms=rt, speedup=2.0 / rt))
        self.checked: dict[int, EvalResult] = {i: self.verdict[i] for i in self.verdict if rng.random() < 0.15}
        self.checks = 0

    def unique(self) -> list[int]:
        return sorted(self.verdict)

    def check(self, indices):
        for i in self.unique() if indices is None else indices:
            if i not in self.checked:
                self.checked[i] = self.verdict[i]
                self.checks += 1

    def scored(self, indices):
        chosen = self.unique() if indices is None else indices
        return [Scored(candidate=self.candidates[i], result=self.checked[i], surprisal=self.surprisal[i])
                for i in sorted(chosen) if i in self.checked]

    def time(self, indices):
        return {i: self.timing[i] for i in indices}


def exhaustive(pool: ScriptedPool, strategy: str, top_m: int):
    full = [Scored(candidate=pool.candidates[i], result=pool.verdict[i], surprisal=pool.surprisal[i])
            for i in pool.unique()]
    return select(strategy, full, pool.time, top_m=top_m, seed=0)


def outcome(fn):
    try:
        sel = fn()
    except Exception as e:  # noqa: BLE001 - both ways must refuse the same pools the same way
        return ("error", type(e).__name__)
    return (sel.winner, sel.timed)


@pytest.mark.parametrize("strategy", ["surprisal-top-m", "surprisal"])
def test_surprisal_ordered_pick_is_the_exhaustive_pick(strategy):
    rng = random.Random(f"lazy-{strategy}")
    saved = total = 0
    for trial in range(1500):
        n = rng.randrange(0, 40)
        top_m, jobs = rng.choice([1, 2, 3, 5]), rng.choice([1, 2, 4])
        pool = ScriptedPool(rng, n)
        want = outcome(lambda p=pool, m=top_m: exhaustive(p, strategy, m))
        got = outcome(lambda p=pool, m=top_m, j=jobs: evaluate_and_select(
            strategy, p.surprisal, p.checked, p.check, p.scored, p.time, top_m=m, jobs=j)[0])
        assert got == want, (trial, n, top_m, jobs)
        saved += len(pool.unique()) - len(pool.checked)
        total += len(pool.unique())
    assert saved > total * 0.2  # it does stop early, on these pools by a wide margin


def test_strategies_that_need_every_verdict_check_everything():
    rng = random.Random(7)
    for strategy in ("oracle", "confidence", "random"):
        pool = ScriptedPool(rng, 20)
        sel, why = evaluate_and_select(strategy, pool.surprisal, pool.checked, pool.check, pool.scored, pool.time,
                                       top_m=3)
        assert len(pool.checked) == len(pool.unique()) and "needs every verdict" in why
    pool = ScriptedPool(rng, 20)
    _, why = evaluate_and_select("surprisal-top-m", pool.surprisal, pool.checked, pool.check, pool.scored,
                                 pool.time, top_m=3, exhaustive=True)
    assert why == "--exhaustive" and len(pool.checked) == len(pool.unique())
