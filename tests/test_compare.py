"""kopt compare: scoring on a hand-built pool, the report files, target expansion, and end to end."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kopt import metrics as M
from kopt.cli.compare_cmd import expand_targets, kernelbench_targets
from kopt.compare_report import summarize, write_report
from kopt.comparison import samples_for
from kopt.errors import KoptError
from kopt.records import Candidate, EvalResult, Sample, Scored, Status
from kopt.scoring import ALL_STRATEGIES, parse_strategies, score_pool

REPO = Path(__file__).resolve().parent.parent


def scored(index, status, surprisal, logprob=None):
    lp = None if surprisal is None else (logprob if logprob is not None else -surprisal * 100)
    s = Sample(text=f"s{index}", logprob=lp, num_tokens=100 + 10 * index)
    return Scored(Candidate(index, s, f"code{index}"), EvalResult(status=status), surprisal)


def timed(speedup):
    return EvalResult(status=Status.CORRECT, runtime_ms=10.0 / speedup, reference_runtime_ms=10.0, speedup=speedup)


# unique candidates 0..4; sample 5 duplicates candidate 1. Surprisal ranking of the correct ones: 0, 4, 1, 3.
POOL = [
    scored(0, Status.CORRECT, 0.9),
    scored(1, Status.CORRECT, 0.5),
    scored(2, Status.INCORRECT, 1.2),
    scored(3, Status.CORRECT, 0.3),
    scored(4, Status.CORRECT, 0.7),
]
TIMINGS = {0: timed(0.8), 1: timed(2.0), 3: timed(1.0), 4: timed(1.5)}
SAMPLE_RESULTS = [TIMINGS[0], TIMINGS[1], EvalResult(status=Status.INCORRECT), TIMINGS[3], TIMINGS[4], TIMINGS[1]]
SAMPLE_SURPRISAL = [0.9, 0.5, 1.2, 0.3, 0.7, 0.5]
SAMPLE_TOKENS = [100, 110, 120, 130, 140, 150]


def score(pool=POOL, timings=TIMINGS, strategies=ALL_STRATEGIES, seed=42):
    return score_pool("t", seed, pool, timings, SAMPLE_RESULTS, SAMPLE_SURPRISAL, SAMPLE_TOKENS, strategies,
                      top_m=2, samples_path="/x/samples.jsonl")


def test_each_strategy_on_a_known_pool():
    stats, outs = score()
    by = {o.strategy: o for o in outs}
    assert [o.strategy for o in outs] == list(ALL_STRATEGIES)
    assert (by["oracle"].pick, by["oracle"].speedup, by["oracle"].fast_1, by["oracle"].cost) == (1, 2.0, 1.0, 4.0)
    assert (by["surprisal"].pick, by["surprisal"].fast_1, by["surprisal"].cost) == (0, 0.0, 1.0)
    # the most confident one runs at exactly 1.00x: correct but not fast
    assert (by["confidence"].pick, by["confidence"].speedup, by["confidence"].fast_1) == (3, 1.0, 0.0)
    assert (by["surprisal-top-m"].pick, by["surprisal-top-m"].fast_1, by["surprisal-top-m"].cost) == (4, 1.0, 2.0)
    # random: expected value over the 4 correct candidates, not one draw
    r = by["random"]
    assert r.fast_1 == pytest.approx(0.5) and r.speedup == pytest.approx((0.8 + 2.0 + 1.0 + 1.5) / 4)
    assert r.cost == pytest.approx(1.0) and r.pick in {0, 1, 3, 4}

    assert stats.k == 6 and stats.unique == 5 and stats.correct == 4
    assert stats.sample_fast_1 == pytest.approx(0.5)  # samples 1, 4 and the duplicate 5
    assert stats.sample_correctness == pytest.approx(5 / 6)
    assert [k for k, _ in stats.curve] == [1, 2, 4, 6]
    assert [v for _, v in stats.curve] == pytest.approx([0.5, 1 - 3 / 15, 1.0, 1.0])
    # ranks of NLL [5, 2.5, 1, 4, 2.5] vs speedup [1, 4.5, 2, 3, 4.5]: sxy = -3.5, sxx = syy = 9.5
    assert stats.spearman == pytest.approx(-3.5 / 9.5)
    assert stats.partial is not None
    assert sum(q.n for q in stats.quartiles) == 5


def test_random_expected_cost_when_timing_flips():
    timings = {**TIMINGS, 0: EvalResult(status=Status.INCORRECT, reason="re-check failed")}
    _, outs = score(timings=timings)
    by = {o.strategy: o for o in outs}
    r = by["random"]
    # 4 eligible, 3 stay correct: expected draws (4 + 1) / (3 + 1)
    assert r.cost == pytest.approx(5 / 4)
    assert r.fast_1 == pytest.approx(2 / 3)
    # surprisal's first pick flipped: it continues to the next most surprising (4)
    assert by["surprisal"].pick == 4 and by["surprisal"].cost == 2.0


def test_missing_logprobs_and_no_correct_pool():
    pool = POOL[:4] + [scored(4, Status.CORRECT, None)]
    _, outs = score(pool=pool)
    by = {o.strategy: o for o in outs}
    for name in ("confidence", "surprisal", "surprisal-top-m"):
        assert by[name].fast_1 is None and "no log-probabilities" in by[name].notes[0]
    assert by["oracle"].fast_1 == 1.0
    bad = [scored(0, Status.INCORRECT, 1.0)]
    stats, outs = score_pool("t", 1, bad, {}, [EvalResult(status=Status.INCORRECT)], [1.0], [10], ALL_STRATEGIES)
    assert all(o.fast_1 == 0.0 and o.pick is None for o in outs)
    assert stats.spearman is None and stats.quartiles == ()


def two_seed_result():
    s1, o1 = score(seed=42)
    # seed 43: the same pool, but surprisal-top-m misses (its two picks are slow)
    t43 = {0: timed(0.8), 1: timed(2.0), 3: timed(1.0), 4: timed(0.9)}
    s2, o2 = score_pool("t", 43, POOL, t43, SAMPLE_RESULTS, SAMPLE_SURPRISAL, SAMPLE_TOKENS, ALL_STRATEGIES,
                        top_m=2)
    return summarize([s1, s2], o1 + o2, ALL_STRATEGIES, k=6, seeds=[42, 43], top_m=2, tasks=["t"],
                     params={"target": "cpu"})


def test_summary_aggregates_and_equivalent_k():
    res = two_seed_result()
    top = res.strategy("surprisal-top-m")
    assert top.fast_1.mean == 0.5 and top.fast_1.per_seed == ((42, 1.0), (43, 0.0))
    assert top.fast_1.seed_std == pytest.approx(0.5)
    assert top.cost.mean == 2.0
    oracle = res.strategy("oracle")
    assert oracle.fast_1.mean == 1.0
    assert oracle.equivalent_k == M.EquivalentK(4.0, "=")  # the curve first reaches 1.0 at k=4
    assert res.strategy("surprisal").equivalent_k == M.EquivalentK(1.0, "<")  # worse than one sample
    data = res.to_json()
    assert list(data["strategies"]) == list(ALL_STRATEGIES)
    assert data["strategies"]["oracle"]["picks"][0] == {
        "task": "t", "seed": 42, "index": 1, "speedup": 2.0, "fast_1": 1.0, "correct": 1.0, "cost": 4.0, "notes": []}
    json.dumps(data)  # serialisable


def test_report_files(tmp_path):
    res = two_seed_result()
    written = write_report(res, tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == ["report.md", "results.csv", "results.json", "scaling.png", "strategies.png"]
    import matplotlib.image as mpimg

    for png in ("scaling.png", "strategies.png"):
        img = mpimg.imread(tmp_path / "out" / png)
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert img.std() > 0  # not a blank canvas
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert len(rows) == 5 * 2
    assert {r["strategy"] for r in rows} == set(ALL_STRATEGIES)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "![Best-of-N scaling curve](scaling.png)" in md and "strategies.png" in md
    assert "| surprisal-top-m | 0.500 |" in md
    assert json.loads((tmp_path / "out" / "results.json").read_text())["k"] == 6


def test_parse_strategies():
    assert parse_strategies("all") == list(ALL_STRATEGIES)
    assert parse_strategies("surprisal-top-m,oracle") == ["oracle", "surprisal-top-m"]
    with pytest.raises(KoptError):
        parse_strategies("oracle,best")


def test_kernelbench_targets(kernelbench):
    files = kernelbench_targets(kernelbench, "4,5,12", None, None)
    assert [Path(f).name.split("_")[0] for f in files] == ["4", "5", "12"]
    ev = kernelbench_targets(kernelbench.parent, None, "eval", None)
    assert len(ev) == 20 and Path(ev[-1]).name == "98_KLDivLoss.py"
    with pytest.raises(KoptError):
        kernelbench_targets(kernelbench, "999", None, None)
    with pytest.raises(KoptError):
        kernelbench_targets(kernelbench, None, None, None)


def test_targets_and_samples_resolution(tmp_path):
    (tmp_path / "tasks").mkdir()
    for n in ("b.py", "a.py", "_helper.py"):
        (tmp_path / "tasks" / n).write_text("")
    assert [Path(p).name for p in expand_targets([str(tmp_path / "tasks"), "x.py:Cls"])] == ["a.py", "b.py", "x.py:Cls"]

    class T:
        def __init__(self, name, path):
            self.name, self.path = name, path

    sd = tmp_path / "samples"
    (sd / "gelu").mkdir(parents=True)
    (sd / "gelu" / "samples_cpu.jsonl").write_text("")
    (sd / "relu.jsonl").write_text("")
    gelu = T("task", str(tmp_path / "gelu" / "task.py"))
    assert samples_for(sd, gelu, "gelu", "cpu", 2) == sd / "gelu" / "samples_cpu.jsonl"
    assert samples_for(sd, T("relu", "/r/relu.py"), "relu", "cpu", 2) == sd / "relu.jsonl"
    with pytest.raises(KoptError):
        samples_for(sd, T("tanh", "/r/tanh.py"), "tanh", "cpu", 2)
    with pytest.raises(KoptError):
        samples_for(sd / "relu.jsonl", T("relu", "/r/relu.py"), "relu", "cpu", 2)
    assert samples_for(sd / "relu.jsonl", T("relu", "/r/relu.py"), "relu", "cpu", 1) == sd / "relu.jsonl"


def _pipeline_ready() -> bool:
    try:
        from kopt.evaluator import Evaluator, machine_fingerprint  # noqa: F401
        from kopt.pool import Pool  # noqa: F401
    except ImportError:
        return False
    return (REPO / "examples" / "gelu" / "samples_cpu.jsonl").is_file()


@pytest.mark.skipif(not _pipeline_ready(), reason="kopt.pool / kopt.evaluator or the examples have not landed")
@pytest.mark.slow
def test_end_to_end_cpu_compare_and_cached_rerun(tmp_path):
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "kopt", "compare", "examples/gelu", "examples/swish", "--samples", "examples",
           "--k", "9", "--target", "cpu", "--strategies", "all", "--json", "--report", str(out)]
    env = {**os.environ, "MAX_JOBS": "1"}
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert first.returncode == 0, first.stderr[-3000:]
    data = json.loads(first.stdout)
    assert set(data["strategies"]) == set(ALL_STRATEGIES)
    assert data["tasks"] == ["gelu", "swish"]
    assert data["evaluated_now"] > 0 and data["timed_now"] > 0
    oracle = data["strategies"]["oracle"]
    assert oracle["fast_1"]["n"] == 2 and len(oracle["picks"]) == 2
    for f in ("results.json", "results.csv", "scaling.png", "strategies.png", "report.md"):
        assert (out / f).stat().st_size > 0
    import matplotlib.image as mpimg

    assert mpimg.imread(out / "scaling.png").shape[0] > 100
    # the same compare again: every sample, verdict and timing comes from the cache
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout)
    assert again["evaluated_now"] == 0 and again["timed_now"] == 0
    assert again["strategies"]["oracle"]["picks"] == oracle["picks"]
