"""The hf sampler on a tiny random Llama: raw T=1 log-probs, per-index seeds, LoRA adapters."""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("tinymodel")  # it is also loaded as a plugin below

from tinymodel import make_random_lora, teacher_forced_logprobs

from kopt.errors import SamplerError
from kopt.prompt import make_prompt
from kopt.samplers import get_sampler
from kopt.samplers.base import SamplerParams

# tiny_model_dir / tiny_chat_model_dir: session fixtures shared by every module that loads this plugin.
pytest_plugins = ["tinymodel"]

PROMPT = make_prompt("You write kernels.", "class ModelNew(nn.Module):", "cpu")


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    s = get_sampler("hf", SamplerParams(model=tiny_model_dir, temperature=0.8, max_tokens=24, seed=7))
    yield s
    s.close()


@pytest.fixture(scope="module")
def pool(hf):
    return dict(hf.sample(PROMPT, range(4)))


def test_logprobs_match_teacher_forcing(hf, pool, tiny_model_dir):
    assert sorted(pool) == [0, 1, 2, 3]
    for s in pool.values():
        assert s.token_ids and len(s.token_logprobs) == len(s.token_ids) == s.num_tokens
        assert s.logprob == pytest.approx(sum(s.token_logprobs), abs=1e-9)
        assert s.model == hf.model_id() and s.logprobs_mode == "raw" and s.finish_reason in ("stop", "length")
        assert s.prompt_token_ids[0] == hf.tokenizer.bos_token_id  # plain text: BOS, as the base model expects
        ref = teacher_forced_logprobs(tiny_model_dir, s.prompt_token_ids, s.token_ids)
        assert max(abs(a - b) for a, b in zip(s.token_logprobs, ref)) < 1e-4
        assert s.text == hf.tokenizer.decode(s.token_ids, skip_special_tokens=True)
    assert len({s.token_ids for s in pool.values()}) > 1  # indices draw different samples


def test_seeded_reproducible_per_index(hf, pool, tiny_model_dir):
    again = dict(hf.sample(PROMPT, [3, 1]))  # other indices, other order: each index is its own draw
    assert again[3] == pool[3] and again[1] == pool[1]
    other = get_sampler("hf", SamplerParams(model=tiny_model_dir, temperature=0.8, max_tokens=24, seed=8))
    diff = dict(other.sample(PROMPT, range(4)))
    assert all(diff[i].token_ids != pool[i].token_ids for i in range(4))


def test_cache_params(hf, tiny_model_dir):
    cp = hf.cache_params()
    assert cp["sampler"] == "hf" and cp["temperature"] == 0.8 and cp["max_tokens"] == 24
    assert cp["logprobs_mode"] == "raw" and cp["model"] == hf.model_id()


def test_lora_adapter_changes_logprobs(hf, pool, tiny_model_dir, tmp_path):
    adapter = make_random_lora(tiny_model_dir, tmp_path / "lora")
    lo = dict(hf.sample(PROMPT, [0, 1], adapter=adapter))
    assert [lo[i].logprob for i in (0, 1)] != [pool[i].logprob for i in (0, 1)]
    ref = teacher_forced_logprobs(tiny_model_dir, lo[0].prompt_token_ids, lo[0].token_ids, adapter=adapter)
    assert max(abs(a - b) for a, b in zip(lo[0].token_logprobs, ref)) < 1e-4
    assert dict(hf.sample(PROMPT, [0]))[0] == pool[0]  # adapter=None is the base model again


def test_chat_template_and_greedy(tiny_chat_model_dir):
    s = get_sampler("hf", SamplerParams(model=tiny_chat_model_dir, temperature=0.0, max_tokens=8))
    a, b = dict(s.sample(PROMPT, [0, 1])).values()
    text = s.tokenizer.decode(a.prompt_token_ids)
    assert text.startswith("<s><|system|>\nYou write kernels.\n<|user|>\nclass ModelNew") and text.endswith("<|assistant|>\n")
    assert a.token_ids == b.token_ids  # T=0 is greedy whatever the seed
    s.close()


def test_needs_model(tmp_path):
    with pytest.raises(SamplerError, match="needs a model"):
        get_sampler("hf", SamplerParams())
    with pytest.raises(SamplerError, match="cannot load model"):
        get_sampler("hf", SamplerParams(model=str(tmp_path / "nothing")))
