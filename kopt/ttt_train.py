"""One GRPO step on a peft LoRA adapter: the trainer half of kopt's test-time training (kopt/ttt.py).

Loss: plain REINFORCE on the completion tokens' log-probabilities at the
sampling temperature, summed over tokens and divided by a constant (Dr. GRPO, Liu et al. arXiv 2503.20783:
no 1/|o| length normalisation, no std division), with the advantages computed by the caller (RLOO). With one
on-policy optimizer step the PPO ratio is exactly 1 and clipping never fires, so REINFORCE *is* the clipped
objective's gradient (checked to 1e-7). No KL term (β = 0; BoA keeps the base as a candidate).

The batch is built from the token ids the sampler returned (prompt_token_ids + token_ids), never from
re-tokenised text. Base weights are frozen; LoRA targets the attention and MLP projections only,
never lm_head or embeddings (vLLM rejects adapters carrying full tensors).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from kopt.errors import KoptError

# Llama / Qwen2/3 / Mistral projection names; peft's own default would be q/v only.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainItem:
    """One sampled completion with its advantage: exactly the ids the sampler fed and produced."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    advantage: float
    sampler_logprobs: tuple[float, ...] | None = None  # raw (T=1) per-token log-probs, for the drift check


@dataclass(frozen=True)
class TrainStats:
    loss: float
    sequences: int  # sequences with a non-zero advantage (those that carry gradient)
    tokens: int
    grad_norm: float
    # mean |log p_trainer - log p_sampler| at T=1 over the completion tokens: ~0 when the ids, template and
    # weights agree (it cheaply catches template, token-id or temperature bugs); None if unknown.
    logprob_drift: float | None
    lora_b_changed: int  # how many lora_B tensors the step moved (A stays put on step 1: B starts at 0)


def completion_logprobs(model, prompt_ids: Sequence[int], completion_ids: Sequence[int], temperature: float):
    """(log p at `temperature`, log p at T=1) of each completion token, from one forward pass.

    `logits_to_keep` keeps only the positions that predict completion tokens (identical to the
    full-logits result), which bounds the logits memory by the completion length.
    """
    import torch

    dev = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)], device=dev)
    t = len(completion_ids)
    logits = model(input_ids=ids, logits_to_keep=t + 1).logits[0, :-1].float()  # [t, V]
    tgt = ids[0, -t:]
    scaled = logits / temperature
    lp_t = scaled.gather(-1, tgt[:, None]).squeeze(-1) - scaled.logsumexp(-1)
    with torch.no_grad():
        lp_1 = logits.gather(-1, tgt[:, None]).squeeze(-1) - logits.logsumexp(-1)
    return lp_t, lp_1


class LoraTrainer:
    """A frozen base model with a fresh LoRA adapter and one AdamW optimizer kept across the TTT steps."""

    def __init__(self, model: str, rank: int = 16, lr: float = 1e-5, temperature: float = 0.25,
                 seed: int = 0, device: str | None = None):
        try:
            import torch
            from peft import LoraConfig, get_peft_model
            from transformers import AutoModelForCausalLM
        except ImportError as e:
            raise KoptError(f"--ttt-steps needs transformers and peft ({e})", "pip install 'kopt[hf]'") from None
        if rank < 1:
            raise KoptError(f"--lora-rank must be at least 1, got {rank}", "the paper uses 16")
        if not lr > 0:
            raise KoptError(f"--ttt-lr must be positive, got {lr}", "the paper uses 1e-5")
        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # T=0 (greedy) has no sampling distribution to follow; train on the model's own (T=1) then.
        self.temperature = temperature if temperature > 0 else 1.0
        dtype = torch.float32 if self.device == "cpu" else torch.bfloat16
        try:
            base = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device)
        except (OSError, ValueError) as e:
            raise KoptError(f"cannot load {model!r} for TTT: {str(e).splitlines()[0]}",
                            "pass --model a local Hugging Face model dir or a hub name") from None
        names = {n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
        targets = [t for t in LORA_TARGETS if t in names]
        if not targets:
            raise KoptError(f"no LoRA target in {model!r}: none of {', '.join(LORA_TARGETS)} is a Linear layer",
                            "TTT supports Llama/Qwen/Mistral-style models; use --ttt-steps 0 for this one")
        torch.manual_seed(seed)  # LoRA A's init; B starts at zero, so the adapter starts as the identity
        cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets,
                         bias="none", task_type="CAUSAL_LM")
        self.model = get_peft_model(base, cfg)
        if self.device != "cpu":
            # Long completions: recompute activations rather than keep them (verified with peft).
            self.model.gradient_checkpointing_enable()
            self.model.enable_input_require_grads()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.targets = tuple(targets)

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.params)

    def lora_b(self) -> dict[str, object]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if "lora_B" in n}

    def step(self, items: Sequence[TrainItem], norm_tokens: int) -> TrainStats:
        """One optimizer step on loss = -Σ_i A_i Σ_t log π(o_it) / norm_tokens (Dr. GRPO's constant).

        Items with A = 0 carry no gradient and are not run. Sequences go through one at a time and their
        gradients accumulate (no padding, no attention-mask subtleties; memory bounded by one sequence).
        """
        torch = self._torch
        if norm_tokens < 1:
            raise ValueError("norm_tokens must be positive")
        self.model.train()
        before = self.lora_b()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        tokens = 0
        used = 0
        drift_sum = 0.0
        drift_n = 0
        for it in items:
            if it.advantage == 0.0 or not it.completion_ids:
                continue
            lp_t, lp_1 = completion_logprobs(self.model, it.prompt_ids, it.completion_ids, self.temperature)
            loss = -(it.advantage * lp_t.sum()) / norm_tokens
            loss.backward()
            total += float(loss.detach())
            tokens += len(it.completion_ids)
            used += 1
            if it.sampler_logprobs is not None and len(it.sampler_logprobs) == len(it.completion_ids):
                ref = torch.tensor(it.sampler_logprobs, dtype=lp_1.dtype, device=lp_1.device)
                drift_sum += float((lp_1 - ref).abs().sum())
                drift_n += len(it.completion_ids)
        grad_norm = 0.0
        if used:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm=math.inf))
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        after = self.lora_b()
        changed = sum(not torch.equal(before[n], after[n]) for n in before)
        return TrainStats(loss=total, sequences=used, tokens=tokens, grad_norm=grad_norm,
                          logprob_drift=drift_sum / drift_n if drift_n else None, lora_b_changed=changed)

    def save(self, directory: Path) -> Path:
        """adapter_config.json + adapter_model.safetensors, the layout vLLM's LoRARequest and peft load."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory))
        return directory

    def close(self) -> None:
        self.model = None
        self.optimizer = None
        self.params = []
        if self.device != "cpu":
            self._torch.cuda.empty_cache()


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with `n` torch threads, then restore the count (vLLM sets 1 in its process)."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
