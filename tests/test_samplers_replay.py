"""The replay sampler and the registry (no model needed)."""

from __future__ import annotations

import json

import pytest

from kopt.errors import KoptError, SamplerError
from kopt.prompt import make_prompt
from kopt.samplers import SAMPLERS, default_sampler, derive_seed, get_sampler
from kopt.samplers.base import SamplerParams
from kopt.samplers.replay import ReplaySampler

PROMPT = make_prompt(None, "unused", "cpu")


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_first_k(tmp_path):
    rows = [{"text": f"s{i}", "logprob": -float(i), "num_tokens": 10, "model": "m", "finish_reason": "stop"}
            for i in range(5)]
    f = _write(tmp_path / "samples.jsonl", rows[:2] + [""] + rows[2:])  # a blank line is skipped
    s = get_sampler("replay", SamplerParams(samples_path=str(f)))
    assert isinstance(s, ReplaySampler) and not s.cacheable
    got = dict(s.sample(PROMPT, range(3)))
    assert [got[i].text for i in range(3)] == ["s0", "s1", "s2"]
    assert got[2].logprob == -2.0 and got[2].num_tokens == 10 and got[2].surprisal() == pytest.approx(0.2)
    assert dict(s.sample(PROMPT, [4]))[4].text == "s4"  # any index alone


def test_missing_logprob_and_token_logprobs(tmp_path):
    f = _write(tmp_path / "s.jsonl", [{"text": "a"}, {"text": "b", "token_logprobs": [-1.0, -0.5]}])
    got = dict(ReplaySampler(SamplerParams(samples_path=str(f))).sample(PROMPT, [0, 1]))
    assert got[0].logprob is None and got[0].surprisal() is None
    assert got[1].logprob == -1.5 and got[1].num_tokens == 2


def test_too_few_lines(tmp_path):
    f = _write(tmp_path / "s.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(KoptError) as e:
        list(ReplaySampler(SamplerParams(samples_path=str(f))).sample(PROMPT, range(4)))
    assert "has 2 samples" in e.value.message and "4" in e.value.message and "-k 2" in e.value.hint


@pytest.mark.parametrize(
    "bad, what",
    [("{not json", "not valid JSON"), ('{"logprob": -1}', '"text"'), ('{"text": "x", "logprob": "high"}', "logprob")],
)
def test_bad_line(tmp_path, bad, what):
    f = _write(tmp_path / "s.jsonl", [{"text": "a"}, bad, {"text": "c"}])
    s = ReplaySampler(SamplerParams(samples_path=str(f)))
    assert dict(s.sample(PROMPT, [0]))[0].text == "a"  # lines past K are not read
    with pytest.raises(KoptError) as e:
        list(s.sample(PROMPT, range(3)))
    assert f"{f}:2:" in e.value.message and what in e.value.message


def test_missing_file(tmp_path):
    s = ReplaySampler(SamplerParams(samples_path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(KoptError, match="cannot read samples file .*nope.jsonl"):
        list(s.sample(PROMPT, [0]))


def test_registry_and_default(monkeypatch):
    assert set(SAMPLERS) == {"vllm", "openai", "hf", "replay"}
    with pytest.raises(KoptError, match="unknown sampler 'gpt'"):
        get_sampler("gpt", SamplerParams())
    assert default_sampler(SamplerParams(samples_path="x.jsonl", base_url="http://h")) == "replay"
    assert default_sampler(SamplerParams(base_url="http://127.0.0.1:1/v1")) == "openai"
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SamplerError) as e:
            default_sampler(SamplerParams())
        assert "--base-url" in e.value.hint and "--samples" in e.value.hint and "--sampler hf --model" in e.value.hint


def test_derive_seed():
    seeds = {derive_seed(s, i) for s in (42, 43) for i in range(256)}
    assert len(seeds) == 512  # pools for seeds 42 and 43 share nothing
    assert all(0 <= x < 2**31 for x in seeds)
    assert derive_seed(42, 7) == derive_seed(42, 7)
