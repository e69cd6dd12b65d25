"""Selection strategies on hand-built pools where every pick is known in advance."""

from __future__ import annotations

import pytest

from kopt.errors import KoptError
from kopt.records import Candidate, EvalResult, Sample, Scored, Status
from kopt.selection import STRATEGIES, WEAK_SIGNAL_NOTE, logprob_std, select


def scored(index: int, status: Status, surprisal: float | None, logprob: float | None = None) -> Scored:
    if logprob is None and surprisal is not None:
        logprob = -surprisal * 100.0  # 100 tokens: summed log-prob spread is 100x the per-token one
    sample = Sample(text=f"sample {index}", logprob=logprob, num_tokens=100)
    return Scored(Candidate(index=index, sample=sample, code=f"code {index}"), EvalResult(status=status), surprisal)


def timer(runtimes: dict[int, float], flips: set[int] = frozenset()):
    """A time_fn over known runtimes; records every call so the tests can see what was timed."""
    calls: list[list[int]] = []

    def time_fn(indices: list[int]) -> dict[int, EvalResult]:
        calls.append(list(indices))
        out = {}
        for i in indices:
            if i in flips:
                out[i] = EvalResult(status=Status.INCORRECT, reason="timing re-check: output mismatch")
            else:
                out[i] = EvalResult(status=Status.CORRECT, runtime_ms=runtimes[i], reference_runtime_ms=4.0,
                                    speedup=4.0 / runtimes[i])
        return out

    time_fn.calls = calls
    return time_fn


# index: status, surprisal (nats/token), runtime when timed (ms)
POOL = [
    scored(0, Status.INCORRECT, 9.0),  # most surprising but wrong: never eligible
    scored(1, Status.CORRECT, 2.0),
    scored(2, Status.CORRECT, 1.5),
    scored(3, Status.CORRECT, 1.0),
    scored(4, Status.CORRECT, 0.5),
    scored(5, Status.COMPILE_ERROR, None),  # no logprob, but not eligible: must not trigger the refusal
    scored(6, Status.CORRECT, 0.2),
]
RUNTIMES = {1: 5.0, 2: 3.0, 3: 1.0, 4: 4.0, 6: 2.0}


def test_registry_has_the_five_strategies():
    assert set(STRATEGIES) == {"surprisal-top-m", "surprisal", "confidence", "random", "oracle"}
    assert {n for n, s in STRATEGIES.items() if s.needs_logprobs} == {"surprisal-top-m", "surprisal", "confidence"}
    assert all(s.name == n for n, s in STRATEGIES.items())


@pytest.mark.parametrize(
    "strategy, top_m, winner, timed",
    [
        ("surprisal-top-m", 3, 3, (1, 2, 3)),  # top 3 by surprisal are 1, 2, 3; 3 is fastest
        ("surprisal-top-m", 2, 2, (1, 2)),
        ("surprisal-top-m", 1, 1, (1,)),
        ("surprisal", 3, 1, (1,)),
        ("confidence", 3, 6, (6,)),
        ("oracle", 3, 3, (1, 2, 3, 4, 6)),
    ],
)
def test_known_picks(strategy, top_m, winner, timed):
    fn = timer(RUNTIMES)
    sel = select(strategy, POOL, fn, top_m=top_m)
    assert sel.strategy == strategy
    assert sel.winner == winner
    assert sel.timed == timed
    assert sel.notes == ()
    assert fn.calls == [list(timed)]


def test_plan_and_choose_directly():
    top = STRATEGIES["surprisal-top-m"]
    assert top.plan(POOL, top_m=3, seed=0) == [1, 2, 3]
    timed = timer(RUNTIMES)([1, 2, 3])
    assert top.choose(POOL, timed) == 3
    assert STRATEGIES["confidence"].plan(POOL, top_m=3, seed=0) == [6]
    # choose ignores timed results of candidates that were never eligible
    assert STRATEGIES["oracle"].choose(POOL, timer({0: 0.1, 2: 3.0})([0, 2])) == 2


def test_random_is_seeded_and_covers_the_correct_set():
    picks = {}
    for seed in range(60):
        fn = timer(RUNTIMES)
        sel = select("random", POOL, fn, seed=seed)
        assert sel.timed == (sel.winner,)
        again = select("random", POOL, timer(RUNTIMES), seed=seed)
        assert again.winner == sel.winner
        picks[seed] = sel.winner
    assert set(picks.values()) == {1, 2, 3, 4, 6}


def test_ties_go_to_the_lower_index():
    pool = [
        scored(7, Status.CORRECT, 1.0, logprob=-100.0),
        scored(3, Status.CORRECT, 1.0, logprob=-103.0),
        scored(5, Status.CORRECT, 0.1, logprob=-10.0),
    ]
    assert select("surprisal", pool, timer({3: 1.0, 5: 1.0, 7: 1.0})).winner == 3
    sel = select("surprisal-top-m", pool, timer({3: 2.0, 5: 1.0, 7: 2.0}), top_m=2)
    assert sel.timed == (3, 7) and sel.winner == 3  # equal runtime: lower index
    assert select("oracle", pool, timer({3: 2.0, 5: 2.0, 7: 2.0})).winner == 3
    assert select("confidence", pool, timer({3: 2.0, 5: 2.0, 7: 2.0})).winner == 5


def test_missing_logprobs_refused_for_surprisal_strategies_only():
    pool = POOL + [scored(8, Status.CORRECT, None)]
    runtimes = {**RUNTIMES, 8: 0.5}
    for name in ("surprisal-top-m", "surprisal", "confidence"):
        with pytest.raises(KoptError) as e:
            select(name, pool, timer(runtimes))
        assert "1 of 6 correct samples have no log-probabilities" in e.value.message
        assert "--select oracle or random" in e.value.hint
    assert select("oracle", pool, timer(runtimes)).winner == 8
    assert select("random", pool, timer(runtimes), seed=1).winner in {1, 2, 3, 4, 6, 8}


def test_no_correct_candidate():
    pool = [scored(0, Status.INCORRECT, 1.0), scored(1, Status.TIMEOUT, 2.0), scored(2, Status.NO_CODE, None)]
    for name in STRATEGIES:
        fn = timer({})
        sel = select(name, pool, fn)
        assert sel.winner is None and sel.timed == () and fn.calls == []
    assert select("oracle", [], timer({})).winner is None


def test_timing_flips_continue_down_the_ranking():
    fn = timer(RUNTIMES, flips={1, 2, 3})
    sel = select("surprisal-top-m", POOL, fn, top_m=3)
    assert sel.winner == 4 and sel.timed == (1, 2, 3, 4)
    assert fn.calls == [[1, 2, 3], [4]]
    assert any("1, 2, 3" in n for n in sel.notes)
    # one flip among the top m: the fastest of the rest wins, nothing more is timed
    sel = select("surprisal-top-m", POOL, timer(RUNTIMES, flips={3}), top_m=3)
    assert sel.winner == 2 and sel.timed == (1, 2, 3)
    assert select("surprisal", POOL, timer(RUNTIMES, flips={1})).winner == 2
    assert select("confidence", POOL, timer(RUNTIMES, flips={6, 4})).timed == (6, 4, 3)
    sel = select("oracle", POOL, timer(RUNTIMES, flips={3}))
    assert sel.winner == 6
    sel = select("surprisal-top-m", POOL, timer(RUNTIMES, flips={1, 2, 3, 4, 6}))
    assert sel.winner is None and sel.timed == (1, 2, 3, 4, 6)
    assert "no candidate stayed correct when timed" in sel.notes


def test_logprob_std_by_hand():
    pool = [scored(0, Status.CORRECT, 1.0, logprob=-10.0), scored(1, Status.CORRECT, 1.2, logprob=-12.0),
            scored(2, Status.INCORRECT, 5.0, logprob=-500.0)]  # incorrect: not counted
    assert logprob_std(pool) == pytest.approx(1.0)  # population std of {-10, -12}
    assert logprob_std(pool[:1]) is None
    assert logprob_std([scored(0, Status.CORRECT, None), scored(1, Status.CORRECT, None)]) is None
    # POOL: summed log-probs -200, -150, -100, -50, -20
    xs = [-200.0, -150.0, -100.0, -50.0, -20.0]
    m = sum(xs) / 5
    assert logprob_std(POOL) == pytest.approx((sum((x - m) ** 2 for x in xs) / 5) ** 0.5)


def weak_pool():
    # summed log-probs -100.0, -100.4, -100.8, -101.2: std 0.447 nats < 1.0
    return [scored(i, Status.CORRECT, 1.0 + i * 0.004, logprob=-100.0 - 0.4 * i) for i in range(4)]


def test_weak_signal_note_and_adaptive():
    runtimes = {0: 4.0, 1: 3.0, 2: 1.0, 3: 2.0}
    sel = select("surprisal", weak_pool(), timer(runtimes))
    assert sel.winner == 3 and sel.timed == (3,)
    assert sel.logprob_std == pytest.approx(0.4472, abs=1e-3)
    assert any(n.startswith(WEAK_SIGNAL_NOTE) for n in sel.notes)
    fn = timer(runtimes)
    sel = select("surprisal-top-m", weak_pool(), fn, adaptive=True)
    assert sel.strategy == "surprisal-top-m"
    assert sel.winner == 2 and sel.timed == (0, 1, 2, 3)
    assert any("adaptive: timed every correct candidate" in n for n in sel.notes)
    # a strong signal is left alone even with adaptive=True
    sel = select("surprisal-top-m", POOL, timer(RUNTIMES), adaptive=True)
    assert sel.timed == (1, 2, 3) and sel.notes == ()
    # strategies that do not rank by surprisal get no note
    assert select("oracle", weak_pool(), timer(runtimes)).notes == ()


def test_bad_arguments():
    with pytest.raises(KoptError):
        select("best", POOL, timer(RUNTIMES))
    with pytest.raises(KoptError):
        select("surprisal-top-m", POOL, timer(RUNTIMES), top_m=0)
