"""Sampling from any OpenAI-compatible HTTP endpoint (vLLM's server, hosted APIs), with plain httpx.

Modes (`SamplerParams.api`):
- "completions": POST /completions with the prompt as plain text, `logprobs: 0` (just the sampled token's).
- "chat": POST /chat/completions with the prompt's messages, `logprobs: true`.
- "auto" (default): chat first, since nearly every served model today is a chat model and hosted APIs offer
  logprobs only on chat; if the server refuses the chat request outright (HTTP 400/404/422, e.g. vLLM's
  "no chat template" for a base model), fall back to completions once and keep that for the sampler's life.
Both send vLLM's extra `return_token_ids: true`, so token ids come from the server (never re-tokenised text);
a server that rejects the field (HTTP 400/422 naming it) is asked again without it, and samples then carry
no token ids.

Log-probs are whatever the server returns: vLLM's server defaults to raw_logprobs (T=1, `logprobs_mode`), the
surprisal the paper ranks by; `logprobs_mode` records "server" because kopt cannot check which. A server that
returns none is an error: ranking by surprisal needs them.

Requests run `concurrency` at a time. 429, 5xx and connection errors are retried with exponential backoff
(bounded; Retry-After honoured, capped). The API key is read from the env var named by `api_key_env` and is
scrubbed from every error message.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from kopt.errors import SamplerError
from kopt.records import Sample
from kopt.samplers.base import Sampler, SamplerParams, derive_seed, make_sample

SERVER = "server"  # logprobs_mode: the server's own choice (vLLM: raw_logprobs)
APIS = ("auto", "chat", "completions")
NO_LOGPROBS_HINT = "use a server that supports logprobs, or --select oracle|random"


class _HTTPStatus(Exception):
    """A non-retryable HTTP error status; the caller decides between a fallback and a SamplerError."""

    def __init__(self, status: int, body: str):
        super().__init__(status, body)
        self.status = status
        self.body = body


class OpenAISampler(Sampler):
    name = "openai"
    chat = True  # token ids only when the server is vLLM: not promised, so no token_ids capability
    follow_ups = True  # chat: the turns as messages; completions: the plain rendering (Prompt.as_text)
    max_attempts = 6  # 1 try + 5 retries: 0.5+1+2+4+8 s of backoff at most, unless Retry-After says otherwise
    backoff_s = 0.5
    max_backoff_s = 30.0
    max_retry_after_s = 60.0
    timeout_s = 600.0  # one long completion on a busy server

    def __init__(self, params: SamplerParams):
        super().__init__(params)
        import httpx

        if not params.base_url:
            raise SamplerError("the openai sampler needs a server URL",
                               "pass --base-url URL, e.g. http://127.0.0.1:8000/v1")
        if params.api not in APIS:
            raise SamplerError(f"unknown --api {params.api!r}", f"use one of {', '.join(APIS)}")
        self._key = ""
        if params.api_key_env:
            self._key = os.environ.get(params.api_key_env, "")
            if not self._key:
                raise SamplerError(f"environment variable {params.api_key_env} is not set (it should hold the API key)",
                                   f"export {params.api_key_env}=..., or drop --api-key-env for a server without keys")
        self.base_url = params.base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(self.timeout_s, connect=10.0))
        self._httpx = httpx
        self._mode: str | None = None if params.api == "auto" else params.api
        self._token_ids_extra = True  # send return_token_ids until the server rejects it
        self._model: str | None = params.model
        self._lock = threading.Lock()

    # ---- identity -------------------------------------------------------------------------------------

    def model_id(self) -> str:
        if self._model is None:
            self._model = self._discover_model()
        return self._model

    def cache_params(self) -> dict:
        d = super().cache_params()
        d.update(base_url=self.base_url, api=self.params.api, logprobs_mode=SERVER)
        return d

    def _discover_model(self) -> str:
        """The one model a server serves (GET /models), when --model was not given."""
        try:
            data = self._request("GET", "/models")
        except _HTTPStatus as e:
            raise SamplerError(f"{self.base_url}/models answered HTTP {e.status}: {e.body[:200]}",
                               "pass --model NAME (the served model name) and check --api-key-env") from None
        try:
            ids = [m["id"] for m in data["data"]]
        except (KeyError, TypeError):
            raise SamplerError(f"{self.base_url}/models returned an unexpected response",
                               "pass --model NAME (the served model name)") from None
        if len(ids) != 1:
            raise SamplerError(f"{self.base_url} serves {len(ids)} models ({', '.join(ids[:5])})",
                               "pass --model NAME to pick one")
        return ids[0]

    # ---- HTTP -----------------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _delay(self, attempt: int, response=None) -> float:
        if response is not None:
            ra = response.headers.get("retry-after")
            if ra is not None:
                try:
                    return min(max(float(ra), 0.0), self.max_retry_after_s)
                except ValueError:
                    pass  # an HTTP date: fall back to our own backoff
        return min(self.backoff_s * 2**attempt, self.max_backoff_s)

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        url = self.base_url + path
        last = ""
        for attempt in range(self.max_attempts):
            response = None
            try:
                response = self._client.request(method, url, json=body)
            except self._httpx.TransportError as e:
                last = f"cannot connect ({type(e).__name__})"
            else:
                if response.status_code == 429 or response.status_code >= 500:
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                elif response.status_code >= 400:
                    raise _HTTPStatus(response.status_code, self._redact(response.text[:500]))
                else:
                    try:
                        return response.json()
                    except ValueError:
                        raise SamplerError(
                            f"{url} returned malformed JSON: {self._redact(response.text[:120])!r}",
                            "check --base-url points at an OpenAI-compatible API (usually ending in /v1)",
                        ) from None
            if attempt + 1 < self.max_attempts:
                time.sleep(self._delay(attempt, response))
        raise SamplerError(f"{url} failed after {self.max_attempts} attempts: {self._redact(last)}",
                           "check that the server is up and --base-url is right, then run again (finished samples are cached)")

    # ---- one sample -----------------------------------------------------------------------------------

    def _body(self, mode: str, prompt, index: int) -> dict:
        body: dict = {
            "model": self.model_id(),
            "max_tokens": self.params.max_tokens,
            "temperature": self.params.temperature,
            "seed": derive_seed(self.params.seed, index),
            "n": 1,
        }
        if mode == "chat":
            body.update(messages=prompt.as_messages(), logprobs=True)
        else:
            body.update(prompt=prompt.as_text(), logprobs=0)
        if self._token_ids_extra:
            body["return_token_ids"] = True
        return body

    def _post(self, mode: str, prompt, index: int) -> dict:
        path = "/chat/completions" if mode == "chat" else "/completions"
        try:
            return self._request("POST", path, self._body(mode, prompt, index))
        except _HTTPStatus as e:
            if e.status in (400, 422) and "return_token_ids" in e.body and self._token_ids_extra:
                self._token_ids_extra = False  # not vLLM: ask again without the extra field
                return self._request("POST", path, self._body(mode, prompt, index))
            raise

    def _http_error(self, e: _HTTPStatus, mode: str) -> SamplerError:
        hint = "check --model and --api-key-env" if e.status in (401, 403, 404) else "check --model, --api and --max-tokens"
        return SamplerError(f"{self.base_url} refused the {mode} request: HTTP {e.status}: {e.body[:300]}", hint)

    def _one(self, prompt, index: int) -> Sample:
        mode = self._mode
        if mode is None:  # auto, first request: try chat, fall back to completions (see module doc)
            try:
                data = self._post("chat", prompt, index)
                mode = "chat"
            except _HTTPStatus as e:
                if e.status not in (400, 404, 422):
                    raise self._http_error(e, "chat") from None
                try:
                    data = self._post("completions", prompt, index)
                except _HTTPStatus as e2:
                    raise self._http_error(e2, "completions") from None
                mode = "completions"
            with self._lock:
                self._mode = mode
        else:
            try:
                data = self._post(mode, prompt, index)
            except _HTTPStatus as e:
                raise self._http_error(e, mode) from None
        return self._parse(mode, data)

    def _parse(self, mode: str, data: dict) -> Sample:
        no_lp = SamplerError(f"{self.base_url} returned no log-probabilities; kopt needs them to rank by surprisal",
                             NO_LOGPROBS_HINT)
        try:
            choice = data["choices"][0]
            lp = choice.get("logprobs")
            if mode == "chat":
                text = choice["message"].get("content") or ""
                content = lp.get("content") if isinstance(lp, dict) else None
                if content is None:
                    raise no_lp
                token_lp = [float(c["logprob"]) for c in content]
            else:
                text = choice["text"]
                token_lp = lp.get("token_logprobs") if isinstance(lp, dict) else None
                if token_lp is None or any(x is None for x in token_lp):
                    raise no_lp
                token_lp = [float(x) for x in token_lp]
            token_ids = choice.get("token_ids")
            prompt_ids = choice.get("prompt_token_ids") or data.get("prompt_token_ids")
            finish = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            raise SamplerError(f"{self.base_url} returned an unexpected response shape: {self._redact(str(data)[:200])}",
                               "check --base-url points at an OpenAI-compatible API and --api matches it") from None
        if token_ids is not None and len(token_ids) != len(token_lp):
            token_ids = None  # ids that don't line up with the log-probs are worse than none
        return make_sample(text, token_ids, token_lp, prompt_token_ids=prompt_ids, finish_reason=finish,
                           model=self.model_id(), logprobs_mode=SERVER)

    # ---- the interface --------------------------------------------------------------------------------

    def sample(self, prompt, indices: Sequence[int], adapter: str | None = None) -> Iterator[tuple[int, Sample]]:
        if adapter is not None:
            raise SamplerError("the openai sampler cannot apply a LoRA adapter",
                               "use --sampler vllm or --sampler hf for test-time training")
        yield from self.sample_turns([(i, prompt) for i in indices])

    def sample_turns(self, requests: Sequence[tuple[int, object]]) -> Iterator[tuple[int, Sample]]:
        """(index, prompt) pairs, `concurrency` requests in flight (a follow-up turn is one more request)."""
        todo = list(requests)
        if not todo:
            return
        self.model_id()  # resolve the model name once, before the threads start
        if self._mode is None:  # settle auto's chat/completions choice on the first sample
            first, prompt = todo.pop(0)
            yield first, self._one(prompt, first)
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.params.concurrency, len(todo) or 1)))
        try:
            futures = {pool.submit(self._one, p, i): i for i, p in todo}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield futures[f], f.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self._client.close()
