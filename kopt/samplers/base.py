"""The sampler interface: K completions of one prompt, each with its token log-probabilities.

Every backend draws sample i with its own seed, derive_seed(seed, i), so one index can be re-drawn alone (the
cache stores samples per index; an interrupted run re-draws only the missing ones) and the pools for two
seeds share nothing. Log-probs are the model's own at T=1 ("raw"): surprisal under the model, what the paper
ranks by (Barnes 2026, §4.5 "Selection Strategies"), not the tempered sampling distribution (vLLM's default, `raw_logprobs`).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from kopt import settings as S
from kopt.records import Sample

# The log-probs every model-backed sampler records: log_softmax of the raw logits (vLLM's "raw_logprobs").
RAW = "raw"


@dataclass(frozen=True)
class SamplerParams:
    model: str | None = None  # HF dir/name (hf, vllm) or served model name (openai)
    temperature: float = S.default("temperature")  # Barnes 2026 samples at T=0.25
    max_tokens: int = S.default("max_tokens")
    seed: int = S.default("seed")
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8000/v1 (as for the OpenAI SDK)
    api_key_env: str | None = None  # openai: the NAME of the env var that holds the key, never the key
    api: str = S.default("api")  # openai: "chat" | "completions" | "auto" (see kopt/samplers/openai.py)
    concurrency: int = 8  # openai: requests in flight
    samples_path: str | None = None  # replay
    enable_lora: bool = False  # vllm: build the engine with LoRA support (TTT)
    max_lora_rank: int = S.default("lora_rank")  # vllm: one of 1, 8, 16, 32, 64, ... (vLLM docs, features/lora)


def derive_seed(seed: int, index: int) -> int:
    """The seed for sample `index` of a pool drawn with `seed`: a hash of both, in [0, 2**31).

    A hash, not seed + index, so that seeds 42 and 43 give disjoint pools (42+1 == 43+0 would collide).
    """
    h = hashlib.sha256(f"kopt-sample:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(h[:8], "big") % (2**31)


class Sampler(ABC):
    """One backend. Subclasses set `name` and implement `sample`; heavy imports stay inside methods.

    Capabilities are class attributes, so kopt reads them without building (loading) the backend, and only
    `kopt.samplers.sampler_class` + these attributes decide what a backend is asked to do.
    """

    name: ClassVar[str]
    cacheable: ClassVar[bool] = True  # samples may be cached per index (replay: the file is the cache)
    token_ids: ClassVar[bool] = False  # returns the sampled and the prompt's token ids (TTT trains on them)
    adapters: ClassVar[bool] = False  # samples with a LoRA adapter directory (TTT)
    can_sleep: ClassVar[bool] = False  # frees accelerator memory on sleep() while TTT trains, wake_up() after
    chat: ClassVar[bool] = False  # renders the prompt as chat messages (a chat template or a chat API)
    # Answers follow-up turns (a Prompt with `turns`, kopt/refine.py): every chat backend, and replay (a
    # recorded refine run holds its rounds).
    follow_ups: ClassVar[bool] = False

    @classmethod
    def identity(cls, params: SamplerParams) -> str:
        """The model's name in run directories and reports, known before the backend is built."""
        return params.model or ""

    @classmethod
    def trainable(cls) -> bool:
        """Test-time training needs the sampler's own token ids and LoRA adapters."""
        return cls.token_ids and cls.adapters

    def __init__(self, params: SamplerParams):
        self.params = params

    def model_id(self) -> str:
        """What goes into samples.jsonl "model" and the cache key."""
        return self.params.model or ""

    def cache_params(self) -> dict[str, Any]:
        """Everything that changes the samples (the prompt hash, seed and index are added by the caller)."""
        return {
            "sampler": self.name,
            "model": self.model_id(),
            "temperature": self.params.temperature,
            "max_tokens": self.params.max_tokens,
            "logprobs_mode": RAW,
        }

    @abstractmethod
    def sample(self, prompt, indices: Sequence[int], adapter: str | None = None) -> Iterator[tuple[int, Sample]]:
        """Yield (index, Sample) for each requested index as it finishes (any order).

        `prompt` is a kopt.prompt.Prompt; `adapter` a peft LoRA adapter directory (TTT) or None.
        """

    def sample_turns(self, requests: Sequence[tuple[int, Any]]) -> Iterator[tuple[int, Sample]]:
        """Yield (index, Sample) for each (index, prompt) pair, any order: one sample per prompt, drawn under
        index's seed. Follow-up turns each have their own conversation; backends that batch override this."""
        for index, prompt in requests:
            yield from self.sample(prompt, [index])

    def sleep(self) -> None:  # noqa: B027 - only backends with can_sleep free anything
        """Free accelerator memory for a TTT training step."""

    def wake_up(self) -> None:  # noqa: B027
        """Take back what sleep() freed."""

    def close(self) -> None:  # noqa: B027 - optional hook; most backends hold nothing to free
        """Free the model / connections. Safe to call twice."""

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_sample(text: str, token_ids, token_logprobs, *, prompt_token_ids=None, finish_reason=None,
                model: str = "", logprobs_mode: str | None = RAW) -> Sample:
    """A Sample whose logprob is the sum of its token log-probs (None when the backend gave none)."""
    tl = None if token_logprobs is None else tuple(float(x) for x in token_logprobs)
    ti = None if token_ids is None else tuple(int(x) for x in token_ids)
    return Sample(
        text=text,
        logprob=None if tl is None else float(sum(tl)),
        num_tokens=len(tl) if tl is not None else (len(ti) if ti is not None else None),
        token_logprobs=tl,
        token_ids=ti,
        prompt_token_ids=None if prompt_token_ids is None else tuple(int(x) for x in prompt_token_ids),
        model=model,
        finish_reason=finish_reason,
        logprobs_mode=logprobs_mode if tl is not None else None,
    )


def encode_prompt(tokenizer, prompt) -> list[int]:
    """Prompt token ids for an HF tokenizer: its chat template when it has one, else the plain text.

    Shared by hf and vllm so both backends feed the model the same ids. The chat template is rendered to
    text and tokenised without special tokens (templates put BOS in themselves); plain text gets the
    tokenizer's own special tokens (BOS for Llama-style models), as a base model saw in training.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(prompt.as_messages(), tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt.as_text(), add_special_tokens=True)["input_ids"])


def local_model_id(model: str | None) -> str:
    """An absolute path for a local model dir (so two dirs with one name don't share a cache key), else as is."""
    import os

    if model and os.path.isdir(model):
        return os.path.abspath(model)
    return model or ""
