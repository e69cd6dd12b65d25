"""The openai sampler: against a real vLLM OpenAI-compatible server on 127.0.0.1, and against a local stub
server (http.server in a thread) for the error paths a real server will not produce on demand."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.register_assert_rewrite("tinymodel")  # it is also loaded as a plugin below

from tinymodel import teacher_forced_logprobs

from kopt.errors import SamplerError
from kopt.prompt import make_prompt
from kopt.samplers import get_sampler
from kopt.samplers.base import SamplerParams
from kopt.samplers.openai import OpenAISampler

# tiny_model_dir / tiny_chat_model_dir: session fixtures shared by every module that loads this plugin.
pytest_plugins = ["tinymodel"]

PROMPT = make_prompt("You write kernels.", "class ModelNew(nn.Module):", "cpu")
KEY = "sk-test-5f3a9c0d"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- a real vLLM server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_server(tiny_chat_model_dir, tmp_path_factory):
    pytest.importorskip("vllm")
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = dict(os.environ)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs its engine its own way
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_chat_model_dir,
           "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--kv-cache-memory-bytes", str(64 * 2**20), "--enforce-eager", "--max-model-len", "512",
           "--max-num-seqs", "8", "--seed", "0"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not healthy after 240 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _check_against_hf(samples, model_dir):
    for s in samples.values():
        assert s.token_ids and s.prompt_token_ids, "the server returned no token ids"
        assert len(s.token_logprobs) == len(s.token_ids) == s.num_tokens
        assert s.logprob == sum(s.token_logprobs) and s.model == "tiny" and s.logprobs_mode == "server"
        ref = teacher_forced_logprobs(model_dir, s.prompt_token_ids, s.token_ids)
        assert max(abs(a - b) for a, b in zip(s.token_logprobs, ref)) < 1e-4


@pytest.mark.vllm
def test_real_server_completions(vllm_server, tiny_chat_model_dir):
    s = get_sampler("openai", SamplerParams(base_url=vllm_server, api="completions", temperature=0.8,
                                            max_tokens=16, seed=3, concurrency=3))
    assert s.model_id() == "tiny"  # discovered from /v1/models
    got = dict(s.sample(PROMPT, range(3)))
    assert sorted(got) == [0, 1, 2]
    _check_against_hf(got, tiny_chat_model_dir)
    assert len({g.token_ids for g in got.values()}) > 1
    assert dict(s.sample(PROMPT, [1]))[1] == got[1]  # per-index seed: index 1 re-drawn alone is the same
    s.close()


@pytest.mark.vllm
def test_real_server_auto_uses_chat(vllm_server, tiny_chat_model_dir):
    s = get_sampler("openai", SamplerParams(base_url=vllm_server, model="tiny", temperature=0.8, max_tokens=16))
    got = dict(s.sample(PROMPT, [0, 1]))
    assert s._mode == "chat"  # the tiny model has a chat template, so auto keeps chat
    _check_against_hf(got, tiny_chat_model_dir)
    # The server rendered our chat template: the prompt ids are what the tokenizer's template gives.
    from transformers import AutoTokenizer

    from kopt.samplers.base import encode_prompt

    assert got[0].prompt_token_ids == tuple(encode_prompt(AutoTokenizer.from_pretrained(tiny_chat_model_dir), PROMPT))
    s.close()


# ---- a stub server for the error paths --------------------------------------------------------------------


def _completion(text="x = 1", lps=(-0.5, -1.25), ids=(5, 6), logprobs=True):
    choice = {"index": 0, "text": text, "finish_reason": "length"}
    if logprobs:
        choice["logprobs"] = {"token_logprobs": list(lps), "tokens": ["a", "b"]}
        choice["token_ids"] = list(ids)
        choice["prompt_token_ids"] = [0, 1, 2]
    return {"choices": [choice]}


class Stub:
    """Answers each POST with the next scripted (status, headers, body) for its path; records the requests."""

    def __init__(self):
        self.script: dict[str, list] = {}
        self.requests: list[tuple[str, dict, dict]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                path = self.path.removeprefix("/v1")
                stub.requests.append((path, dict(self.headers), body))
                queue = stub.script.get(path) or [(404, {}, {"error": "no such route"})]
                status, headers, payload = queue.pop(0) if len(queue) > 1 else queue[0]
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_POST = do_GET = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    s = Stub()
    yield s
    s.close()


def _sampler(stub, **kw) -> OpenAISampler:
    kw.setdefault("api", "completions")
    s = OpenAISampler(SamplerParams(base_url=stub.url, model="m", **kw))
    s.backoff_s = 0.01
    return s


def test_retries_429_then_succeeds_with_key(stub, monkeypatch):
    monkeypatch.setenv("KOPT_TEST_KEY", KEY)
    stub.script["/completions"] = [(429, {"Retry-After": "0"}, {"error": "slow down"}), (200, {}, _completion())]
    s = _sampler(stub, api_key_env="KOPT_TEST_KEY", seed=5)
    ((i, got),) = list(s.sample(PROMPT, [4]))
    assert i == 4 and got.text == "x = 1" and got.logprob == -1.75 and got.num_tokens == 2
    assert got.token_ids == (5, 6) and got.prompt_token_ids == (0, 1, 2) and got.finish_reason == "length"
    assert len(stub.requests) == 2  # retried once
    _, headers, body = stub.requests[-1]
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert body["logprobs"] == 0 and body["return_token_ids"] is True and body["prompt"] == PROMPT.as_text()
    from kopt.samplers import derive_seed

    assert body["seed"] == derive_seed(5, 4) and body["temperature"] == 0.25 and body["model"] == "m"


def test_no_logprobs_is_a_clear_error(stub):
    stub.script["/completions"] = [(200, {}, _completion(logprobs=False))]
    with pytest.raises(SamplerError) as e:
        list(_sampler(stub).sample(PROMPT, [0]))
    assert "returned no log-probabilities; kopt needs them to rank by surprisal" in e.value.message
    assert "--select oracle|random" in e.value.hint
    stub.script["/chat/completions"] = [(200, {}, {"choices": [{"message": {"content": "hi"}, "logprobs": None}]})]
    with pytest.raises(SamplerError, match="no log-probabilities"):
        list(_sampler(stub, api="chat").sample(PROMPT, [0]))


def test_malformed_json_is_a_clear_error(stub):
    stub.script["/completions"] = [(200, {}, b"<html>not json{")]
    with pytest.raises(SamplerError, match="malformed JSON"):
        list(_sampler(stub).sample(PROMPT, [0]))
    stub.script["/completions"] = [(200, {}, {"choices": "nope"})]
    with pytest.raises(SamplerError, match="unexpected response shape"):
        list(_sampler(stub).sample(PROMPT, [0]))


def test_missing_key_env_var(stub, monkeypatch):
    monkeypatch.delenv("KOPT_NO_SUCH_KEY", raising=False)
    with pytest.raises(SamplerError) as e:
        _sampler(stub, api_key_env="KOPT_NO_SUCH_KEY")
    assert "KOPT_NO_SUCH_KEY" in e.value.message and "export KOPT_NO_SUCH_KEY" in e.value.hint


def test_key_never_in_errors(stub, monkeypatch):
    monkeypatch.setenv("KOPT_TEST_KEY", KEY)
    stub.script["/completions"] = [(401, {}, {"error": f"bad key {KEY}"})]
    with pytest.raises(SamplerError) as e:
        list(_sampler(stub, api_key_env="KOPT_TEST_KEY").sample(PROMPT, [0]))
    assert "HTTP 401" in str(e.value) and KEY not in str(e.value) and "***" in str(e.value)
    stub.script["/completions"] = [(503, {}, {"error": f"down {KEY}"})]
    s = _sampler(stub, api_key_env="KOPT_TEST_KEY")
    s.max_attempts = 3
    n = len(stub.requests)
    with pytest.raises(SamplerError) as e:
        list(s.sample(PROMPT, [0]))
    assert "after 3 attempts" in e.value.message and "HTTP 503" in e.value.message and KEY not in str(e.value)
    assert len(stub.requests) - n == 3  # bounded


def test_connection_refused_retries_then_fails():
    s = OpenAISampler(SamplerParams(base_url=f"http://127.0.0.1:{_free_port()}/v1", model="m"))
    s.backoff_s, s.max_attempts = 0.01, 2
    with pytest.raises(SamplerError, match="failed after 2 attempts: cannot connect"):
        list(s.sample(PROMPT, [0]))


def test_auto_falls_back_to_completions_and_drops_unknown_field(stub):
    stub.script["/chat/completions"] = [(400, {}, {"error": "this model has no chat template"})]
    stub.script["/completions"] = [(400, {}, {"error": "extra inputs are not permitted: return_token_ids"}),
                                   (200, {}, _completion())]
    s = _sampler(stub, api="auto", concurrency=4)
    got = dict(s.sample(PROMPT, range(5)))
    assert sorted(got) == list(range(5)) and s._mode == "completions" and s._token_ids_extra is False
    paths = [p for p, _, _ in stub.requests]
    assert paths.count("/chat/completions") == 1  # decided once, not per sample
    assert "return_token_ids" not in stub.requests[-1][2]
    # Different indices are requested with different seeds.
    assert len({b["seed"] for p, _, b in stub.requests if p == "/completions"}) == 5


def test_model_discovery_and_adapter(stub):
    stub.script["/models"] = [(200, {}, {"data": [{"id": "a"}, {"id": "b"}]})]
    s = OpenAISampler(SamplerParams(base_url=stub.url))
    with pytest.raises(SamplerError, match="serves 2 models"):
        s.model_id()
    with pytest.raises(SamplerError, match="cannot apply a LoRA adapter"):
        list(_sampler(stub).sample(PROMPT, [0], adapter="/some/dir"))
