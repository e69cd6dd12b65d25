"""Sampling with transformers `generate` (CPU or GPU): the fallback backend and the reference for the others.

Log-probs come from the raw logits (`output_logits=True`), log_softmax at T=1, so they equal vLLM's
`raw_logprobs` (`out.scores` are after temperature and warpers; `out.logits` are not). Sampling
is plain temperature sampling (top_k=0, top_p=1, no repetition penalty: a fresh GenerationConfig, so a model's
own generation_config.json defaults do not leak in), one sequence per index under its own seed, so any index
can be re-drawn alone with identical tokens.
"""

from __future__ import annotations

import contextlib
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


class HFSampler(Sampler):
    name = "hf"
    token_ids = True
    adapters = True
    chat = True
    follow_ups = True  # the chat template renders the turns (Prompt.as_text without one)

    def __init__(self, params: SamplerParams):
        super().__init__(params)
        if not params.model:
            raise SamplerError("the hf sampler needs a model", "pass --model DIR (a Hugging Face model dir or name)")
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise SamplerError(f"the hf sampler needs transformers ({e})", "pip install 'kopt[hf]'") from None
        self._torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(params.model)
            # fp32 on CPU (bf16 matmuls are slow there and blur log-probs); the checkpoint's dtype on GPU.
            dtype = torch.float32 if self.device == "cpu" else "auto"
            self.model = AutoModelForCausalLM.from_pretrained(params.model, dtype=dtype).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise SamplerError(f"cannot load model {params.model!r}: {str(e).splitlines()[0]}",
                               "pass --model a local Hugging Face model dir or a hub name") from None
        self._peft = None  # PeftModel wrapping self.model, once an adapter is used
        self._adapters: dict[str, str] = {}  # adapter path -> peft adapter name

    def model_id(self) -> str:
        return local_model_id(self.params.model)

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos]))

    @contextlib.contextmanager
    def _using(self, adapter: str | None):
        """The model to generate with: the base, or the base with the LoRA adapter at `adapter` (loaded once)."""
        if adapter is None:
            if self._peft is None:
                yield self.model
            else:
                with self._peft.disable_adapter():
                    yield self._peft
            return
        try:
            from peft import PeftModel
        except ImportError as e:
            raise SamplerError(f"LoRA adapters need peft ({e})", "pip install 'kopt[hf]'") from None
        if adapter not in self._adapters:
            name = f"kopt{len(self._adapters)}"
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(self.model, adapter, adapter_name=name).eval()
                else:
                    self._peft.load_adapter(adapter, adapter_name=name)
            except (OSError, ValueError) as e:
                raise SamplerError(f"cannot load LoRA adapter {adapter}: {str(e).splitlines()[0]}",
                                   "pass a directory written by peft's save_pretrained") from None
            self._adapters[adapter] = name
        self._peft.set_adapter(self._adapters[adapter])
        yield self._peft

    def _generation_config(self):
        from transformers import GenerationConfig

        t = self.params.temperature
        kw = dict(max_new_tokens=self.params.max_tokens, output_logits=True, return_dict_in_generate=True,
                  eos_token_id=sorted(self._eos_ids()) or None,
                  pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                  else self.tokenizer.eos_token_id)
        if t > 0:
            kw.update(do_sample=True, temperature=t, top_k=0, top_p=1.0)
        else:  # T=0: greedy; the recorded log-probs are still the raw T=1 ones
            kw.update(do_sample=False)
        return GenerationConfig(**kw)

    def sample(self, prompt, indices: Sequence[int], adapter: str | None = None) -> Iterator[tuple[int, Sample]]:
        torch = self._torch
        prompt_ids = encode_prompt(self.tokenizer, prompt)
        ids = torch.tensor([prompt_ids], device=self.device)
        mask = torch.ones_like(ids)
        gen_cfg = self._generation_config()
        eos = self._eos_ids()
        devices = [torch.cuda.current_device()] if self.device == "cuda" else []
        with self._using(adapter) as model:
            for i in indices:
                # Each index under its own seed; fork_rng leaves the caller's RNG state as it was.
                with torch.random.fork_rng(devices=devices), torch.no_grad():
                    torch.manual_seed(derive_seed(self.params.seed, i))
                    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
                gen = out.sequences[0, len(prompt_ids):].tolist()
                logits = torch.stack(out.logits, dim=0)[:, 0, :].float()  # [steps, vocab], raw (pre-temperature)
                lp = torch.log_softmax(logits, dim=-1)
                token_lp = lp[torch.arange(len(gen), device=lp.device), torch.tensor(gen, device=lp.device)].tolist()
                finish = "stop" if gen and gen[-1] in eos else "length"
                text = self.tokenizer.decode(gen, skip_special_tokens=True)
                yield i, make_sample(text, gen, token_lp, prompt_token_ids=prompt_ids, finish_reason=finish,
                                     model=self.model_id(), logprobs_mode=RAW)

    def close(self) -> None:
        self._peft = None
        self.model = None
        if self.device == "cuda":
            self._torch.cuda.empty_cache()
