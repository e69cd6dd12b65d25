"""kopt compare's ttt strategy: the matched-budget arithmetic, the outcome of a scripted TTT report, the
refusals, and one end-to-end `kopt compare --ttt-steps 1` with tests/trained_tiny.py's model (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.register_assert_rewrite("trained_tiny")

from trained_tiny import GELU

from kopt.compare_report import report_markdown, summarize
from kopt.comparison import run_compare
from kopt.errors import KoptError
from kopt.records import EvalResult, Status
from kopt.scoring import ALL_STRATEGIES, TTT, parse_strategies, score_pool, score_ttt, ttt_budget
from kopt.ttt import TTTOptions

pytest_plugins = ["trained_tiny"]

REPO = Path(__file__).resolve().parent.parent


def timed(speedup):
    return EvalResult(status=Status.CORRECT, runtime_ms=10.0 / speedup, reference_runtime_ms=10.0, speedup=speedup)


# ---- budget and strategy names ------------------------------------------------------------------------


def test_matched_budget_arithmetic():
    # default ttt_k = K // (N + 1): the base step and every TTT step get the same share of K
    assert ttt_budget(8, 1) == 4
    assert ttt_budget(64, 1) == 32  # the paper's K=64 vs TTT's 32 per step, one step
    assert ttt_budget(64, 2) == 21  # 3 x 21 = 63 <= 64
    assert ttt_budget(9, 2) == 3
    assert ttt_budget(64, 1, 20) == 20  # a smaller explicit ttt_k is allowed
    assert ttt_budget(64, 1, 32) == 32
    with pytest.raises(KoptError, match="more than --k 64") as e:
        ttt_budget(64, 1, 33)  # 2 x 33 = 66 > 64
    assert "--ttt-k 32" in e.value.hint
    with pytest.raises(KoptError, match="leaves 1 sample") as e:
        ttt_budget(5, 2)  # 5 // 3 = 1 < 2
    assert "--k 6" in e.value.hint
    with pytest.raises(KoptError, match="at least 2"):
        ttt_budget(8, 1, 1)
    with pytest.raises(KoptError, match="--ttt-steps"):
        ttt_budget(8, 0)


def test_strategy_names_with_ttt():
    assert parse_strategies("all") == list(ALL_STRATEGIES)
    assert parse_strategies("all", ttt_steps=1) == list(ALL_STRATEGIES) + [TTT]
    assert parse_strategies("ttt,oracle", ttt_steps=2) == ["oracle", "ttt"]
    with pytest.raises(KoptError, match="needs --ttt-steps") as e:
        parse_strategies("oracle,ttt")
    assert "--ttt-steps 1" in e.value.hint


def test_ttt_refused_before_sampling():
    from kopt.pool import RunOptions
    from kopt.task import load_task

    task = load_task(str(GELU / "task.py"))
    names = list(ALL_STRATEGIES) + [TTT]
    replay = RunOptions(samples=GELU / "samples_cpu.jsonl", k=8, target="cpu")
    with pytest.raises(KoptError, match="replay does not") as e:
        run_compare([task], replay, seeds=[0], strategies=names, ttt=TTTOptions(ttt_steps=1, ttt_k=None))
    assert "--sampler hf" in e.value.hint
    openai = RunOptions(sampler="openai", model="m", base_url="http://127.0.0.1:9/v1", k=8, target="cpu")
    with pytest.raises(KoptError, match="openai does not"):
        run_compare([task], openai, seeds=[0], strategies=names, ttt=TTTOptions(ttt_steps=1, ttt_k=None))
    hf = RunOptions(sampler="hf", model="/nonexistent", k=8, target="cpu")
    with pytest.raises(KoptError, match="needs --ttt-steps"):
        run_compare([task], hf, seeds=[0], strategies=names, ttt=None)
    with pytest.raises(KoptError, match="leaves 1 sample"):
        run_compare([task], RunOptions(sampler="hf", model="/nonexistent", k=3, target="cpu"), seeds=[0],
                    strategies=names, ttt=TTTOptions(ttt_steps=1, ttt_k=None))


# ---- the outcome of a scripted TTT run ----------------------------------------------------------------

# ttt_k = 4, one step. Step 0 = samples 0-3 (3 duplicates 1, 2 has no correct verdict), step 1 = samples 4-7:
# 4 is new and fast, 5 duplicates step 0's sample 1 (the fastest kernel), 6 flipped when timed, 7 wrong.
STEPS = [0, 0, 0, 0, 1, 1, 1, 1]
REPS = [0, 1, 2, 1, 4, 1, 6, 7]
TIMED = {0: timed(0.8), 1: timed(3.0), 4: timed(2.5),
         6: EvalResult(status=Status.INCORRECT, reason="timing re-check failed")}


def report(chosen, scores=(0.5, 0.75), stopped="steps"):
    return {"steps": [{"step": s, "score": x, "samples": 4, "correct": 2, "unique_kernels": 3,
                       "adapter": None if s == 0 else f"/r/ttt/step{s}"} for s, x in enumerate(scores)],
            "chosen_step": chosen, "chosen_score": scores[chosen], "chosen_adapter": None, "stopped": stopped,
            "params": {"steps": 1, "lr": 2e-3, "lora_rank": 16, "k": 4, "patience": 1}}


def test_ttt_outcome_from_a_scripted_report():
    o = score_ttt("t", 42, report(1), STEPS, REPS, TIMED, k=8, ttt_k=4, samples_path="/r/ttt/samples.jsonl")
    # BoA chose step 1; within its batch the fastest still-correct kernel is sample 5 (a duplicate of sample 1,
    # 3.0x): the pick is its own line in the TTT samples file, and its step is 1.
    assert (o.strategy, o.pick, o.step, o.speedup, o.fast_1, o.correct) == ("ttt", 5, 1, 3.0, 1.0, 1.0)
    assert o.cost == 4.0  # every correct candidate timed across both steps: 0, 1, 4 and the flipped 6
    d = o.to_json()
    assert d["index"] == 5 and d["step"] == 1 and d["samples_path"] == "/r/ttt/samples.jsonl"
    run = o.detail
    assert run["budget"] == {"k": 8, "ttt_k": 4, "steps": 1, "budget_samples": 8, "samples_used": 8,
                             "rule": "(steps + 1) * ttt_k <= k"}
    assert [(s["step"], s["score"], s["best_index"], s["best_speedup"]) for s in run["steps"]] == [
        (0, 0.5, 1, 3.0), (1, 0.75, 5, 3.0)]
    assert run["chosen_step"] == 1 and run["stopped"] == "steps"

    # BoA kept the base step: the pick comes from samples 0-3 only
    o0 = score_ttt("t", 42, report(0, (0.5, 0.25), "patience"), STEPS, REPS, TIMED, k=8, ttt_k=4)
    assert (o0.pick, o0.step, o0.speedup) == (1, 0, 3.0) and o0.cost == 4.0

    # the chosen step has no kernel that stayed correct: no pick, fast_1 = correct = 0, the cost still counts
    flipped = {**TIMED, 1: EvalResult(status=Status.INCORRECT), 4: EvalResult(status=Status.INCORRECT)}
    none = score_ttt("t", 42, report(1), STEPS, REPS, flipped, k=8, ttt_k=4)
    assert (none.pick, none.step, none.fast_1, none.correct, none.cost) == (None, None, 0.0, 0.0, 4.0)
    assert any("no candidate of step 1" in n for n in none.notes)


def test_ttt_in_the_summary_and_report():
    from kopt.records import Candidate, Sample, Scored

    pool = [Scored(Candidate(i, Sample(text=f"s{i}", logprob=-10.0 * (i + 1), num_tokens=10), f"c{i}"),
                   EvalResult(status=Status.CORRECT), float(i + 1)) for i in range(4)]
    timings = {0: timed(0.5), 1: timed(0.9), 2: timed(1.5), 3: timed(0.7)}
    names = list(ALL_STRATEGIES) + [TTT]
    results = [timings[i] for i in range(4)] * 2
    stats, outs = score_pool("t", 42, pool, timings, results, [1.0, 2, 3, 4] * 2, [10] * 8, names, top_m=2)
    assert TTT not in {o.strategy for o in outs}  # scored on its own pool, by score_ttt
    outs.append(score_ttt("t", 42, report(1), STEPS, REPS, TIMED, k=8, ttt_k=4, samples_path="/r/s.jsonl"))
    res = summarize([stats], outs, names, k=8, seeds=[42], top_m=2, tasks=["t"],
                    params={"target": "cpu", "ttt": {"steps": 1, "ttt_k": 4, "lr": 2e-3, "lora_rank": 16,
                                                     "patience": 1, "budget_samples": 8, "k": 8}})
    t = res.strategy(TTT)
    assert t.fast_1.mean == 1.0 and t.cost.mean == 4.0
    assert t.equivalent_k is not None  # read off the same Best-of-N curve
    data = res.to_json()
    assert list(data["strategies"]) == names
    assert data["strategies"]["ttt"]["picks"][0]["index"] == 5
    assert data["strategies"]["ttt"]["runs"][0]["steps"][1]["score"] == 0.75
    assert "runs" not in data["strategies"]["oracle"] and "step" not in data["strategies"]["oracle"]["picks"][0]
    md = report_markdown(res, "s.png", "b.png")
    assert "## TTT with Best-of-Adaptation" in md and "(steps + 1) x ttt_k = 8 <= K" in md
    assert "| t | 42 | 4 | 8 | 0: 0.500, 1: 0.750 | 1 | steps | 5 | 3.00 | 4 |" in md


# ---- end to end: the trained tiny model, the real evaluator ------------------------------------------


@pytest.mark.slow
def test_compare_cli_with_ttt_end_to_end(trained_tiny_model_dir, shared_kopt_home, tmp_path):
    k = 8
    cmd = [sys.executable, "-m", "kopt", "compare", str(GELU / "task.py"), "--sampler", "hf", "--model",
           trained_tiny_model_dir, "--k", str(k), "--ttt-steps", "1", "--ttt-lr", "2e-3", "--max-tokens", "16",
           "--target", "cpu", "--seeds", "0", "--json", "--report", str(tmp_path / "report")]
    # shared_kopt_home: compiled verdicts are shared with tests/test_ttt.py when both run in one session
    env = {**os.environ, "KOPT_HOME": str(shared_kopt_home), "MAX_JOBS": "2"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert list(data["strategies"]) == list(ALL_STRATEGIES) + [TTT]
    assert data["params"]["ttt"]["ttt_k"] == k // 2 and data["params"]["ttt"]["budget_samples"] <= k

    ttt = data["strategies"]["ttt"]
    (pick,) = ttt["picks"]
    (run,) = ttt["runs"]
    assert pick["task"] == "gelu" and pick["seed"] == 0 and pick["cost"] >= 1
    assert ttt["cost"]["mean"] == pick["cost"] and ttt["equivalent_k"] is not None
    assert run["budget"]["ttt_k"] == 4 and run["budget"]["samples_used"] <= k
    scores = [s["score"] for s in run["steps"]]
    assert [s["step"] for s in run["steps"]] == list(range(len(scores))) and len(scores) >= 1
    assert run["chosen_step"] == max(range(len(scores)), key=lambda i: (scores[i], -i))

    # the base pool still has its K samples; the TTT pool starts with the same first ttt_k lines
    base = (data["pools"][0]["k"], Path(data["pools"][0]["samples_path"]))
    assert base[0] == k and len(base[1].read_text().splitlines()) == k
    ttt_lines = Path(run["samples_path"]).read_text().splitlines()
    assert len(ttt_lines) == run["budget"]["samples_used"]
    assert ttt_lines[:4] == base[1].read_text().splitlines()[:4]
    if pick["index"] is not None:  # the gelu kernels are correct 2 times in 3: a pick in the chosen step
        assert pick["step"] == run["chosen_step"] and pick["correct"] == 1.0
        assert run["chosen_step"] * 4 <= pick["index"] < (run["chosen_step"] + 1) * 4
    assert "## TTT with Best-of-Adaptation" in (tmp_path / "report" / "report.md").read_text()
