"""The pool: samples -> candidates (deduplicated across TTT steps), forks, cache keys, backend lifetime.

Real parts: the replay sampler on the examples' gelu pool, the real cache in a temp KOPT_HOME. Checking and
timing through the evaluator are exercised end to end in tests/test_optimize.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kopt.cache import Cache
from kopt.pool import Pool, RunOptions
from kopt.records import Sample, Status
from kopt.samplers import sampler_class
from kopt.task import load_task

GELU = Path(__file__).resolve().parent.parent / "examples" / "gelu"
K = 11


@pytest.fixture()
def task():
    return load_task(str(GELU / "task.py"))


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KOPT_HOME", str(tmp_path / "home"))
    with Cache(tmp_path / "cache") as c:
        yield c


def replay(**kw) -> RunOptions:
    return RunOptions(samples=GELU / "samples_cpu.jsonl", k=K, target="cpu", **kw)


def test_fill_marks_duplicates_and_code_less_samples(task, cache):
    with Pool(task, replay(), cache=cache) as pool:
        assert pool.sampler_if_built is None  # nothing built before something is drawn
        pool.fill()
        assert pool.sampler_if_built is not None
        assert len(pool.candidates) == K and pool.candidates[9].duplicate_of == 1
        assert pool.candidates[10].code is None
        assert pool.unique() == list(range(9))
        assert pool.result_for(10).status is Status.NO_CODE
        assert pool.result_for(9).status is Status.SKIPPED  # not evaluated yet, as its first
        assert pool.counts()["skipped"] == 9 and pool.counts()["checked"] == 0
        assert len(pool.samples_path.read_text().splitlines()) == K
        assert pool.model_id == "replay" and pool.sampler_name == "replay"
    assert pool.sampler_if_built is None  # the pool closed the sampler it owned


def test_extend_dedupes_across_steps_and_a_fork_leaves_its_parent_alone(task, cache, tmp_path):
    with Pool(task, replay(), cache=cache) as pool:
        pool.fill()
        again = Sample(text=pool.samples[2].text + "\n# a comment\n", logprob=-1.0, num_tokens=3)
        fresh = Sample(text="no code here", logprob=-2.0, num_tokens=3)
        new = pool.extend([again, fresh], step=1)
        assert [c.index for c in new] == [K, K + 1] and all(c.step == 1 for c in new)
        assert new[0].duplicate_of == 2 and new[1].code is None
        assert len(pool.samples_path.read_text().splitlines()) == K + 2

        fork = pool.fork(4, tmp_path / "fork")
        assert len(fork.candidates) == 4 and fork.samples_path.parent == tmp_path / "fork"
        dup = fork.extend([Sample(text=pool.samples[1].text, logprob=-3.0, num_tokens=3)], step=1)
        assert dup[0].duplicate_of == 1 and dup[0].index == 4
        assert len(pool.candidates) == K + 2  # the parent is untouched
        fork.close()  # a fork does not own the backends
        assert pool.sampler_if_built is not None


def test_only_the_pool_builds_cache_keys(task, cache):
    with Pool(task, replay(), cache=cache) as pool:
        assert pool._sample_key(0, None) is None  # replay: the file is the cache
    opts = RunOptions(sampler="openai", model="m", base_url="http://127.0.0.1:9/v1", k=2, target="cpu")
    with Pool(task, opts, cache=cache) as pool:
        key = pool._sample_key(3, None)
        assert key["index"] == 3 and key["prompt"] == pool.prompt.hash and key["model"] == "m"
        assert key["adapter"] is None and key["T"] == opts.temperature
        v = pool._verdict_key("code")
        assert v["task"] == task.hash and v["target"] == "cpu" and v["machine"] == pool.fingerprint()
        assert pool.sampler_if_built is None  # keys never build the backend (no connection was made)


def test_capabilities_are_read_without_building_a_backend():
    assert not sampler_class("replay").cacheable and not sampler_class("replay").trainable()
    assert not sampler_class("openai").trainable() and sampler_class("openai").chat
    assert sampler_class("hf").trainable() and not sampler_class("hf").can_sleep
    assert sampler_class("vllm").trainable() and sampler_class("vllm").can_sleep


def test_run_options_come_from_the_declared_settings(tmp_path):
    from kopt import settings as S

    values = {**S.defaults("optimize"), "k": 5, "samples": str(tmp_path / "s.jsonl"), "timeout_s": 9.0}
    run = RunOptions.from_settings(values)
    assert run.k == 5 and run.samples == tmp_path / "s.jsonl" and run.timeout_s == 9.0
    params = run.sampler_params()
    assert params.samples_path == str(tmp_path / "s.jsonl") and params.temperature == S.default("temperature")
    assert json.dumps(params.__dict__)  # plain values only
