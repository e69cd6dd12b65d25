"""Surprisal-ordered, early-stopping evaluation: compile and check only what the selection needs.

The m most surprising correct candidates are exactly the first m correct ones met when walking the pool in
order of descending surprisal (ties: lower index first, as kopt/selection.py ranks). So the candidates are
checked in that order, `jobs` at a time, and checking stops as soon as the first m correct ones are known
with nothing more surprising still pending (Barnes 2026, arXiv 2602.07670, names "surprisal-guided pipelines
with early filtering" as future work). Selection then runs on the *resolved prefix*, the longest prefix of
the ranking whose verdicts are all known: its top m correct candidates are the pool's, in the same order,
so it times the same candidates and picks the same winner as exhaustive evaluation. When every timed
candidate fails its timing re-check, selection goes on down its ranking; here the prefix then grows by one
more correct candidate and selection runs again (timings are cached, so nothing is timed twice).

Which strategies can stop early: surprisal-top-m (needs m) and surprisal (needs 1). The others, `--adaptive`
(the spread over every correct candidate decides) and `kopt compare` (it scores the oracle) need every
verdict. A pool where some candidate has no log-probability has no complete ranking: it is evaluated in full
(the strategies then refuse it exactly as they would have).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from kopt.records import EvalResult, Scored, Selection, Status

NEEDS = {"surprisal-top-m": None, "surprisal": 1}  # None: top_m


def needed(strategy: str, top_m: int, *, adaptive: bool = False) -> int | None:
    """How many of the most surprising correct candidates `strategy` needs, or None when it needs all."""
    if adaptive or strategy not in NEEDS:
        return None
    n = NEEDS[strategy]
    return top_m if n is None else n


def ranking(surprisal: Mapping[int, float | None]) -> list[int] | None:
    """Candidate indices by descending surprisal, ties to the lower index; None if any has no surprisal."""
    if any(s is None for s in surprisal.values()):
        return None
    return sorted(surprisal, key=lambda i: (-float(surprisal[i]), i))


def resolved_prefix(order: Sequence[int], correct: Mapping[int, bool]) -> list[int]:
    """The longest prefix of `order` whose verdicts are all known."""
    out = []
    for i in order:
        if i not in correct:
            break
        out.append(i)
    return out


def next_batch(order: Sequence[int], correct: Mapping[int, bool], need: int, jobs: int) -> list[int]:
    """The next candidates to check (at most `jobs`, the most surprising unknown ones), or [] once the `need`
    most surprising correct candidates are known with nothing more surprising unknown (or all are known)."""
    found = 0
    pending: list[int] = []
    for i in order:
        if i in correct:
            if correct[i]:
                found += 1
                if found >= need:
                    break
        else:
            pending.append(i)
            if len(pending) >= max(1, jobs):
                break
    return pending


def select_lazily(
    strategy: str,
    order: Sequence[int],
    verdicts: Mapping[int, EvalResult],
    check: Callable[[list[int]], object],
    scored: Callable[[list[int]], list[Scored]],
    time_fn: Callable[[list[int]], Mapping[int, EvalResult]],
    *,
    need: int,
    top_m: int,
    seed: int = 0,
    jobs: int = 2,
) -> Selection:
    """Check candidates of `order` in order until `strategy` can pick, then pick as exhaustive evaluation would.

    `verdicts` is the live map the `check` callback fills (already holding any cached verdicts); `scored(indices)`
    turns checked indices into what the strategies see; `time_fn` times (cached). Returns the Selection.
    """
    from kopt.errors import KoptError
    from kopt.selection import select

    def known() -> dict[int, bool]:
        return {i: verdicts[i].status is Status.CORRECT for i in order if i in verdicts}

    while True:
        while True:
            batch = next_batch(order, known(), need, jobs)
            if not batch:
                break
            check(batch)
            lost = [i for i in batch if i not in verdicts]
            if lost:
                raise KoptError(f"the evaluator returned no verdict for candidate(s) {lost}",
                                "this is a kopt bug; please report it")
        correct = known()
        prefix = resolved_prefix(order, correct)
        sel = select(strategy, scored(prefix), time_fn, top_m=top_m, seed=seed)
        if sel.winner is not None or len(prefix) == len(order):
            return sel
        need = sum(correct[i] for i in prefix) + 1  # everything timed flipped: one more correct candidate


def evaluate_and_select(
    strategy: str,
    surprisal: Mapping[int, float | None],
    verdicts: Mapping[int, EvalResult],
    check: Callable[[list[int] | None], object],
    scored: Callable[[list[int] | None], list[Scored]],
    time_fn: Callable[[list[int]], Mapping[int, EvalResult]],
    *,
    top_m: int,
    seed: int = 0,
    jobs: int = 2,
    adaptive: bool = False,
    exhaustive: bool = False,
) -> tuple[Selection, str]:
    """Check what `strategy` needs and select: surprisal-ordered with early stopping where that gives the
    exhaustive pick, else everything. `surprisal` maps every unique candidate to its surprisal; `check(None)`
    and `scored(None)` mean all of them. Returns (selection, "surprisal-ordered" | why everything was checked)."""
    from kopt.selection import select

    need = None if exhaustive else needed(strategy, top_m, adaptive=adaptive)
    order = ranking(surprisal) if need is not None else None
    if need is None or order is None:
        check(None)
        sel = select(strategy, scored(None), time_fn, top_m=top_m, seed=seed, adaptive=adaptive)
        why = ("--exhaustive" if exhaustive else
               "--adaptive measures the log-prob spread over every correct candidate" if adaptive else
               f"--select {strategy} needs every verdict" if need is None else
               "some candidates have no log-probability")
        return sel, why
    sel = select_lazily(strategy, order, verdicts, check, scored, time_fn, need=need, top_m=top_m, seed=seed,
                        jobs=jobs)
    return sel, SURPRISAL_ORDERED


SURPRISAL_ORDERED = "surprisal-ordered"

__all__ = ["SURPRISAL_ORDERED", "evaluate_and_select", "needed", "next_batch", "ranking", "resolved_prefix",
           "select_lazily"]
