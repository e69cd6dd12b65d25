"""Test-time training (kopt/ttt.py, kopt/ttt_train.py): maths, the LoRA step, and whole runs on CPU.

The model is tests/trained_tiny.py's: a tiny Llama trained to answer the gelu CPU prompt with three
hand-written kernels (fast and correct, slow and correct, wrong), so sampling gives real candidates that
the real evaluator compiles, checks and times, and TTT rewards come from its verdicts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.register_assert_rewrite("trained_tiny", "tinymodel")

from tinymodel import teacher_forced_logprobs  # noqa: E402
from trained_tiny import CANDIDATES, GELU, answer_text, gelu_prompt  # noqa: E402

from kopt.records import EvalResult, Status  # noqa: E402
from kopt.ttt import (  # noqa: E402
    BestOfAdaptation,
    best_of_adaptation,
    median_correct_speedup,
    rewards,
    rloo_advantages,
)

pytest_plugins = ["trained_tiny"]

K = 8
MAX_TOKENS = 16  # answers are 4-6 tokens + </s>


# ---- pure maths ---------------------------------------------------------------------------------------


def test_rloo_matches_hand_computed_values():
    # A_i = r_i - mean of the others: [1, 0, 0, 3] -> 1-1, 0-4/3, 0-4/3, 3-1/3
    adv = rloo_advantages([1.0, 0.0, 0.0, 3.0])
    assert adv == pytest.approx([0.0, -4 / 3, -4 / 3, 8 / 3])
    r = [0.5, 2.0, 1.0]
    mean = sum(r) / 3
    assert rloo_advantages(r) == pytest.approx([3 / 2 * (x - mean) for x in r])  # K/(K-1)·(r - mean)
    assert sum(rloo_advantages([0.2, 0.9, 0.0, 4.0, 1.1])) == pytest.approx(0.0)


def test_zero_variance_and_singleton_groups_give_zero_advantages():
    assert rloo_advantages([0.0] * 5) == [0.0] * 5
    assert rloo_advantages([1.3] * 4) == [0.0] * 4
    assert rloo_advantages([2.0]) == [0.0]


def test_rewards_scale_by_median_cap_and_zero_for_incorrect():
    ok = lambda s: EvalResult(status=Status.CORRECT, speedup=s)  # noqa: E731
    res = [ok(1.0), ok(3.0), ok(100.0), EvalResult(status=Status.INCORRECT, speedup=9.0),
           EvalResult(status=Status.REJECTED), None, EvalResult(status=Status.CORRECT)]  # last: not timed
    med = median_correct_speedup(res)
    assert med == 3.0
    assert rewards(res, med, cap=4.0) == pytest.approx([1 / 3, 1.0, 4.0, 0.0, 0.0, 0.0, 0.0])
    assert median_correct_speedup([EvalResult(status=Status.INCORRECT, speedup=2.0)]) is None


def test_best_of_adaptation_scripted_scores():
    assert best_of_adaptation([0.494, 0.550, 0.456, 0.419]) == (1, 2)  # Barnes's own test: stop at 2
    assert best_of_adaptation([0.375, 0.400, 0.425, 0.363, 0.5]) == (2, 3)
    assert best_of_adaptation([0.5, 0.4]) == (0, 1)  # the base wins
    assert best_of_adaptation([0.5, 0.5, 0.6]) == (0, 1)  # a tie keeps the earlier step and is no progress
    assert best_of_adaptation([0.3, float("nan"), 0.9]) == (0, 1)  # a failed step is a regression
    assert best_of_adaptation([0.3, None, 0.9], patience=2) == (2, 2)
    assert best_of_adaptation([0.1, 0.05, 0.04, 0.2], patience=2) == (0, 2)
    boa = BestOfAdaptation(patience=1)
    assert boa.update(0, 0.2) and boa.update(1, 0.3) and not boa.update(2, 0.1)
    assert boa.best_step == 1


# ---- the LoRA step on the trained tiny model (no evaluator) ------------------------------------------


def _answer_ids(model_dir):
    from transformers import AutoTokenizer

    from kopt.samplers.base import encode_prompt

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = encode_prompt(tok, gelu_prompt())
    answers = {n: tok(answer_text(n), add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for n in CANDIDATES}
    return prompt_ids, answers


def _seq_logprob(model_dir, prompt_ids, ids, adapter=None) -> float:
    return sum(teacher_forced_logprobs(model_dir, prompt_ids, ids, adapter=adapter))


def test_lora_step_freezes_base_moves_lora_b_and_round_trips(trained_tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from kopt.ttt_train import LoraTrainer, TrainItem, completion_logprobs

    d = trained_tiny_model_dir
    prompt_ids, answers = _answer_ids(d)
    tr = LoraTrainer(d, rank=16, lr=1e-2, temperature=0.25, seed=0)
    base_before = {n: p.detach().clone() for n, p in tr.model.named_parameters() if "lora_" not in n}
    assert all(not p.requires_grad for n, p in tr.model.named_parameters() if "lora_" not in n)

    # Zero advantages (a zero-variance group): no gradient, nothing moves.
    zero = [TrainItem(tuple(prompt_ids), tuple(a), 0.0) for a in answers.values()]
    st = tr.step(zero, norm_tokens=3 * MAX_TOKENS)
    assert st.sequences == 0 and st.grad_norm == 0.0 and st.lora_b_changed == 0

    # Training log-probs are log_softmax(logits / T) (the sampling distribution, as TRL does).
    with torch.no_grad():
        lp_t, lp_1 = completion_logprobs(tr.model, prompt_ids, answers[CANDIDATES[0]], 0.25)
        full = tr.model(input_ids=torch.tensor([prompt_ids + answers[CANDIDATES[0]]])).logits[0].float()
    n = len(prompt_ids)
    tgt = torch.tensor(answers[CANDIDATES[0]])
    ref = torch.log_softmax(full[n - 1:-1] / 0.25, -1).gather(-1, tgt[:, None]).squeeze(-1)
    assert torch.allclose(lp_t, ref, atol=1e-5)
    assert torch.allclose(lp_1, torch.log_softmax(full[n - 1:-1], -1).gather(-1, tgt[:, None]).squeeze(-1), atol=1e-5)

    items = [TrainItem(tuple(prompt_ids), tuple(answers[CANDIDATES[0]]), 1.0),
             TrainItem(tuple(prompt_ids), tuple(answers[CANDIDATES[2]]), -1.0)]
    st = tr.step(items, norm_tokens=2 * MAX_TOKENS)
    assert st.sequences == 2 and st.grad_norm > 0
    assert st.lora_b_changed > 0  # step 1 moves B only: B starts at 0, so A gets no gradient
    for name, p in tr.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base_before[name]), f"base weight {name} changed"

    out = tr.save(tmp_path / "step1")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"}
    keys = list(load_file(str(out / "adapter_model.safetensors")))
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)
    assert not any("lm_head" in k or "embed" in k for k in keys)

    ids = torch.tensor([prompt_ids + answers[CANDIDATES[1]]])
    with torch.no_grad():
        trained = tr.model(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32),
                                             str(out)).eval()(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)(input_ids=ids).logits
    assert torch.equal(trained, reloaded)
    assert not torch.equal(trained, base)
    tr.close()


# ---- whole runs: real sampler, real evaluator ----------------------------------------------------------


def _optimize(model_dir, sampler, out, steps=2, lr=2e-3):
    from kopt.pipeline import OptimizeOptions, RunOptions, optimize
    from kopt.task import load_task
    from kopt.ttt import TTTOptions

    run = RunOptions(sampler=sampler, model=model_dir, k=K, max_tokens=MAX_TOKENS, temperature=0.25, seed=0,
                     target="cpu", jobs=2, enable_lora=True)
    ttt = TTTOptions(ttt_steps=steps, ttt_lr=lr, ttt_k=K, ttt_patience=1)
    opts = OptimizeOptions(run=run, out=out, force=True, ttt=ttt)
    warnings: list[str] = []
    res = optimize(load_task(str(GELU / "task.py")), opts, warn=warnings.append)
    return res, warnings


@pytest.fixture(scope="module")
def hf_run(trained_tiny_model_dir, shared_kopt_home, tmp_path_factory):
    # One KOPT_HOME for this module's runs: the hf and vLLM runs then share compiled verdicts.
    mp = pytest.MonkeyPatch()
    mp.setenv("KOPT_HOME", str(shared_kopt_home))
    try:
        yield _optimize(trained_tiny_model_dir, "hf", tmp_path_factory.mktemp("out") / "gelu")
    finally:
        mp.undo()


def _check_ttt_report(report, steps_run_min=2):
    ttt = report["ttt"]
    steps = ttt["steps"]
    assert [s["step"] for s in steps] == list(range(len(steps))) and len(steps) >= steps_run_min
    assert steps[0]["adapter"] is None
    for s in steps:
        for key in ("score", "mean_surprisal", "unique_kernels", "logprob_std", "sample_s", "eval_s", "train_s"):
            assert key in s
        if s["step"] > 0:
            a = Path(s["adapter"])
            assert a.name == f"step{s['step']}" and a.parent.name == "ttt"
            assert (a / "adapter_model.safetensors").is_file() and (a / "adapter_config.json").is_file()
            assert s["samples"] == K and s["lora_b_changed"] > 0
    scores = [s["score"] for s in steps]
    assert ttt["chosen_step"] == max(range(len(scores)), key=lambda i: (scores[i], -i))
    # Selection ran over every step's candidates.
    cand_steps = {c["step"] for c in report["candidates"]}
    assert cand_steps == set(range(len(steps)))
    assert len(report["candidates"]) == K * len(steps)
    assert report["winner"] is not None and report["winner"]["step"] in cand_steps


def test_hf_ttt_end_to_end(hf_run):
    res, _warnings = hf_run
    report = res.report
    _check_ttt_report(report)
    json.dumps(report)  # what --json prints
    steps = report["ttt"]["steps"]
    # The samples are the known kernels, judged by the real evaluator.
    by_text = {answer_text(n): n for n in CANDIDATES}
    rows = {c["index"]: c for c in report["candidates"]}
    samples = [json.loads(x) for x in (Path(report["run_dir"]) / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == K * len(steps)
    known = [by_text.get(s["text"]) for s in samples]
    assert sum(k is not None for k in known) >= len(samples) - 2
    for i, name in enumerate(known):
        if name == "05_wrong_constant.py":
            assert rows[i]["status"] == "incorrect"
        elif name is not None:
            assert rows[i]["status"] == "correct"
    # hf trains on exactly the ids and distribution it sampled: trainer and sampler agree at T=1.
    assert steps[1]["logprob_drift"] is not None and steps[1]["logprob_drift"] < 1e-4


def test_ttt_step_raises_rewarded_and_lowers_penalised(hf_run, trained_tiny_model_dir):
    """Step 1 trained on step 0's samples with the evaluator's rewards: the fastest correct kernel gained
    log-probability, the wrong one lost it (teacher-forced under base and step-1 adapter)."""
    res, _ = hf_run
    report = res.report
    d = trained_tiny_model_dir
    by_text = {answer_text(n): n for n in CANDIDATES}
    samples = [json.loads(x) for x in (Path(report["run_dir"]) / "samples.jsonl").read_text().splitlines()]
    rows = report["candidates"]
    rep = {r["index"]: (r["duplicate_of"] if r["duplicate_of"] is not None else r["index"]) for r in rows}
    speed = {by_text.get(samples[i]["text"]): rows[rep[i]]["speedup"] for i in range(K)
             if rows[rep[i]]["status"] == "correct" and rows[rep[i]]["speedup"] is not None}
    names0 = {by_text.get(samples[i]["text"]) for i in range(K)}
    if "05_wrong_constant.py" not in names0 or not speed:
        pytest.skip(f"step 0 drew {names0}: no reward contrast to learn from with this seed")
    best = max(speed, key=speed.get)
    prompt_ids, answers = _answer_ids(d)
    adapter = report["ttt"]["steps"][1]["adapter"]
    up = _seq_logprob(d, prompt_ids, answers[best], adapter) - _seq_logprob(d, prompt_ids, answers[best])
    down = (_seq_logprob(d, prompt_ids, answers["05_wrong_constant.py"], adapter)
            - _seq_logprob(d, prompt_ids, answers["05_wrong_constant.py"]))
    assert up > 0 > down, (best, up, down)


@pytest.fixture(scope="module")
def vllm_run(hf_run, trained_tiny_model_dir, shared_kopt_home, tmp_path_factory):
    pytest.importorskip("vllm")
    mp = pytest.MonkeyPatch()
    mp.setenv("KOPT_HOME", str(shared_kopt_home))
    mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        yield _optimize(trained_tiny_model_dir, "vllm", tmp_path_factory.mktemp("out-vllm") / "gelu")
    finally:
        mp.undo()


def test_vllm_ttt_samples_with_each_steps_adapter(vllm_run, trained_tiny_model_dir):
    res, _ = vllm_run
    report = res.report
    assert report["sampler"] == "vllm"
    _check_ttt_report(report)
    samples = [json.loads(x) for x in (Path(report["run_dir"]) / "samples.jsonl").read_text().splitlines()]
    steps = report["ttt"]["steps"]
    # The same completion drawn by the base (step 0) and by the step-1 adapter has different log-probs,
    # and the adapter's match HF + peft teacher forcing with that adapter: vLLM really applied it.
    adapter = steps[1]["adapter"]
    base_lp = {tuple(s["token_ids"]): s["logprob"] for s in samples[:K]}
    compared = 0
    for s in samples[K:2 * K]:
        ids = tuple(s["token_ids"])
        if ids in base_lp:
            assert not math.isclose(s["logprob"], base_lp[ids], abs_tol=1e-4)
            compared += 1
        ref = teacher_forced_logprobs(trained_tiny_model_dir, s["prompt_token_ids"], ids, adapter=adapter)
        assert s["token_logprobs"] == pytest.approx(ref, abs=2e-3)
    assert compared > 0
