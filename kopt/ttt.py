"""Test-time training: 1-2 LoRA GRPO steps on the task's own samples, with Best-of-Adaptation.

Barnes 2026 (arXiv 2602.07670; TTT setup §3.4, Best-of-Adaptation §3.5 Algorithm 1, over-sharpening §5.1 of the draft; see docs/paper-citations.md):
- step 0 is the base model: its K samples, evaluated; a step's score is the sample-level fast_1 of the batch
  sampled *from* that step's weights (so S steps cost S+1 sampling rounds);
- each step trains on the previous step's samples: reward = speedup / (the task's median correct speedup)
  if correct else 0, capped; leave-one-out advantages within the task's group (RLOO, Ahmadian et al.
  arXiv 2402.14740 = TRLOO for single-turn, Dr. Kernel arXiv 2602.05885); Dr. GRPO REINFORCE loss
  (kopt/ttt_train.py); one AdamW step on a LoRA adapter; zero-variance groups are skipped;
- the adapter is saved to <run>/ttt/step<s>/ and K new candidates are sampled with it and evaluated;
- Best-of-Adaptation keeps the best-scoring step and stops after `patience` consecutive non-improvements
  (the paper's best step was 2, 1, 4 over seeds; performance peaks at 1-2 steps, then over-sharpens).
Every verdict (including hack rejections) is final before any reward is computed: rewards read only the
evaluator's results (TTT amplifies evaluator loopholes: Dr. Kernel, arXiv 2602.05885; docs/evaluator.md §1).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Sequence

from kopt import settings as S
from kopt.config import usable_cores
from kopt.errors import KoptError
from kopt.records import EvalResult, Progress, Status, no_progress

# Reward cap after dividing by the task's median correct speedup: one 200x outlier must not make the whole
# step.
REWARD_CAP = 4.0


@dataclass(frozen=True)
class TTTOptions:
    """The TTT settings of `kopt optimize` and `kopt compare` (declared in kopt/settings.py). In compare,
    `ttt_k` None means K // (steps + 1), the largest matched budget."""

    ttt_steps: int = S.default("ttt_steps")
    ttt_lr: float = S.default("ttt_lr")
    lora_rank: int = S.default("lora_rank")
    ttt_k: int | None = S.default("ttt_k")
    ttt_patience: int = S.default("ttt_patience")

    def __post_init__(self) -> None:
        S.check_fields(self, [f.name for f in fields(self)])

    @classmethod
    def from_settings(cls, values: dict[str, Any]) -> TTTOptions:
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def oversharpening_note(steps: int) -> str | None:
    """The warning for more steps than the paper finds useful, or None."""
    if steps > 2:
        return (f"--ttt-steps {steps}: the paper finds 1-2 steps best; more over-sharpens the model "
                "(Barnes 2026, best-of-adaptation results)")
    return None


def require_trainable(backend: Any, model: str | None) -> None:
    """Refuse TTT before anything is sampled when the sampler cannot serve it (its capabilities say so)."""
    if not backend.trainable():
        raise KoptError(
            f"test-time training needs a sampler that returns token ids and takes LoRA adapters; "
            f"{backend.name} does not",
            "use --sampler hf or --sampler vllm with --model DIR (or drop --ttt-steps / ttt from --strategies)")
    if not model:
        raise KoptError("--ttt-steps needs the model's weights", "pass --model DIR (a Hugging Face model dir)")


# ---- rewards and advantages (pure) ----------------------------------------------------------------


def median_correct_speedup(results: Sequence[EvalResult | None]) -> float | None:
    """The median speedup of the correct, timed results (the paper's per-task reward scale), or None."""
    xs = [r.speedup for r in results
          if r is not None and r.status is Status.CORRECT and r.speedup is not None and r.speedup > 0]
    return statistics.median(xs) if xs else None


def rewards(results: Sequence[EvalResult | None], median: float | None, cap: float = REWARD_CAP) -> list[float]:
    """reward_i = min(cap, speedup_i / median) if correct (and timed) else 0 (Barnes 2026 `rlvr_utils`)."""
    out = []
    for r in results:
        ok = r is not None and r.status is Status.CORRECT and r.speedup is not None and r.speedup > 0
        if not ok:
            out.append(0.0)
        else:
            scale = median if median and median > 0 else 1.0
            out.append(min(cap, r.speedup / scale))
    return out


def rloo_advantages(group_rewards: Sequence[float]) -> list[float]:
    """A_i = r_i - mean_{j≠i} r_j = K/(K-1)·(r_i - mean) (RLOO); all zero for a zero-variance group or K < 2.

    No std division (Dr. GRPO: it reweights prompts by difficulty). Zero-variance groups carry no signal
    and are skipped (TTT-Discover's remove_constant_reward_groups, arXiv 2601.16175).
    """
    k = len(group_rewards)
    if k < 2:
        return [0.0] * k
    if max(group_rewards) - min(group_rewards) <= 0.0:
        return [0.0] * k
    total = sum(group_rewards)
    return [r - (total - r) / (k - 1) for r in group_rewards]


# ---- Best-of-Adaptation (pure) --------------------------------------------------------------------


@dataclass
class BestOfAdaptation:
    """Keep the best-scoring step; stop after `patience` consecutive steps that do not beat it.

    A tie keeps the earlier step (less adaptation, same score); a missing or NaN score (a failed evaluation)
    counts as a regression. Barnes 2026's own test: [0.494, 0.550, 0.456, 0.419] -> step 1, stop at 2.
    """

    patience: int = 1
    best_step: int | None = None
    best_score: float = -math.inf
    misses: int = 0
    history: list[tuple[int, float | None]] = field(default_factory=list)

    def update(self, step: int, score: float | None) -> bool:
        """Record `step`'s score; return True to go on, False to stop here."""
        self.history.append((step, score))
        good = score is not None and not math.isnan(score)
        if good and (self.best_step is None or score > self.best_score):
            self.best_step, self.best_score, self.misses = step, float(score), 0
            return True
        if self.best_step is None:  # step 0 failed: keep it as the fallback choice anyway
            self.best_step = step
        self.misses += 1
        return self.misses < max(1, self.patience)


def best_of_adaptation(scores: Sequence[float | None], patience: int = 1) -> tuple[int, int]:
    """(chosen step, last step run) for scripted scores (step s = scores[s])."""
    boa = BestOfAdaptation(patience=patience)
    last = 0
    for s, score in enumerate(scores):
        last = s
        if not boa.update(s, score):
            break
    return boa.best_step if boa.best_step is not None else 0, last


# ---- per-step statistics ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StepReport:
    """One TTT step as report.json shows it (collapse shows as falling unique_kernels / logprob_std)."""

    step: int
    score: float | None  # sample-level fast_1 of this step's batch (Barnes 2026 metrics)
    adapter: str | None  # None for step 0 (the base model)
    samples: int
    correct: int
    unique_kernels: int  # distinct normalised codes among this step's samples
    mean_surprisal: float | None
    logprob_std: float | None  # std of the per-sample log-probability (same mode as surprisal)
    reward_mean: float | None = None  # of the batch this step *trained on* (the previous step's)
    trained_sequences: int = 0
    skipped_groups: int = 0
    loss: float | None = None
    grad_norm: float | None = None
    logprob_drift: float | None = None
    lora_b_changed: int | None = None
    sample_s: float = 0.0
    eval_s: float = 0.0
    train_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _std(xs: Sequence[float]) -> float | None:
    return statistics.pstdev(xs) if len(xs) >= 2 else None


# ---- the loop ---------------------------------------------------------------------------------------


def _step_indices(pool, step: int) -> list[int]:
    return [c.index for c in pool.candidates if c.step == step]


def _score_step(pool, indices: Sequence[int]) -> tuple[float | None, list[EvalResult]]:
    """Time this step's correct candidates (cached), then fast_1 over its samples (duplicates included)."""
    from kopt.metrics import sample_fast_1

    correct = [i for i in indices if pool.result_for(i).status is Status.CORRECT]
    timed = pool.time(correct) if correct else {}
    results = [timed.get(i) or pool.result_for(i) for i in indices]
    return sample_fast_1(results), results


def _describe(pool, step: int, indices: Sequence[int], score: float | None, results, adapter: str | None = None,
              **extra) -> StepReport:
    surprisals = [s for s in (pool.surprisal(i) for i in indices) if s is not None]
    reps = {pool.representative(i) for i in indices if pool.candidates[i].code is not None}
    return StepReport(
        step=step, score=score, adapter=adapter, samples=len(indices),
        correct=sum(r.status is Status.CORRECT for r in results),
        unique_kernels=len(reps),
        mean_surprisal=statistics.fmean(surprisals) if surprisals else None,
        logprob_std=_std([-s for s in surprisals]),
        **extra,
    )


def _check_token_ids(pool, indices: Sequence[int]) -> None:
    for i in indices:
        s = pool.candidates[i].sample
        if s.token_ids is None or s.prompt_token_ids is None:
            raise KoptError(
                f"--ttt-steps needs the sampler's token ids, and sample {i} ({pool.sampler_name}) has none",
                "use --sampler hf or --sampler vllm (the samples are never re-tokenised for training)")


def _sleeping(pool):
    """A context that frees the sampler's accelerator memory during the backward pass, if it can.

    A backend with `can_sleep` (vLLM: `LLM.sleep(level=1)` needs `enable_sleep_mode=True` at engine start)
    sleeps; without it nothing happens: on CPU and small models the engine and the trainer fit together.
    """
    import contextlib

    @contextlib.contextmanager
    def ctx():
        sampler = pool.sampler_if_built
        if sampler is None or not pool.backend.can_sleep:
            yield
            return
        sampler.sleep()
        try:
            yield
        finally:
            sampler.wake_up()

    return ctx()


def adapt(pool, options: TTTOptions, progress: Progress = no_progress,
          warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run up to `options.ttt_steps` TTT steps on `pool` (a kopt.pool.Pool, sampled and checked: step 0).

    New samples and candidates are appended to `pool` (their `step` field says which step made them), so the
    selection afterwards runs over every step's candidates (the paper finds the best kernels in the tail).
    Returns report["ttt"]: {"steps": [...], "chosen_step", "chosen_adapter", "stopped", "params", ...}.
    """
    from kopt.ttt_train import LoraTrainer, TrainItem, torch_threads

    warn = warn or (lambda msg: None)
    run = pool.options
    if options.ttt_steps < 1:
        raise KoptError(f"--ttt-steps must be at least 1 here, got {options.ttt_steps}", "e.g. --ttt-steps 2")
    if options.ttt_k is None:
        raise KoptError("--ttt-k is not set", "pass --ttt-k 32 (the paper's)")
    require_trainable(pool.backend, run.model)
    base = _step_indices(pool, 0)
    _check_token_ids(pool, base)

    ttt_dir = pool.run_dir / "ttt"
    t0 = time.monotonic()
    score0, results0 = _score_step(pool, base)
    steps = [_describe(pool, 0, base, score0, results0, eval_s=time.monotonic() - t0)]
    boa = BestOfAdaptation(patience=options.ttt_patience)
    boa.update(0, score0)
    stopped = "steps"
    all_results: list[EvalResult] = list(results0)
    prev_indices, prev_results = base, results0
    trainer = None
    adapters: dict[int, str] = {}
    try:
        for s in range(1, options.ttt_steps + 1):
            progress("ttt", s - 1, options.ttt_steps)
            # Rewards from the finished verdicts of the previous step's batch (one task = one group).
            median = median_correct_speedup(all_results)
            r = rewards(prev_results, median)
            adv = rloo_advantages(r)
            if not any(adv):
                warn(f"TTT step {s}: every sample of step {s - 1} earned the same reward ({r[0]:.3g}); "
                     "no learning signal, stopping (Best-of-Adaptation keeps the best step so far)")
                stopped = "zero_variance"
                break
            items = [TrainItem(prompt_ids=pool.candidates[i].sample.prompt_token_ids,
                               completion_ids=pool.candidates[i].sample.token_ids, advantage=a,
                               sampler_logprobs=pool.candidates[i].sample.token_logprobs)
                     for i, a in zip(prev_indices, adv)]
            t_train = time.monotonic()
            with torch_threads(usable_cores()):
                if trainer is None:
                    trainer = LoraTrainer(run.model, rank=options.lora_rank, lr=options.ttt_lr,
                                          temperature=run.temperature, seed=run.seed)
                # Dr. GRPO's constant: batch size × max completion length (arXiv 2503.20783).
                with _sleeping(pool):
                    stats = trainer.step(items, norm_tokens=len(items) * max(1, run.max_tokens))
                step_dir = trainer.save(ttt_dir / f"step{s}")
            train_s = time.monotonic() - t_train
            adapters[s] = str(step_dir)

            t_sample = time.monotonic()
            start = len(pool.samples)
            idx = list(range(start, start + options.ttt_k))
            new_samples = pool.draw(idx, adapter=str(step_dir))
            sample_s = time.monotonic() - t_sample
            _check_token_ids_samples(new_samples, pool.sampler_name)
            new = pool.extend(new_samples, step=s)

            t_eval = time.monotonic()
            pool.check([c.index for c in new])
            score, results = _score_step(pool, idx)
            eval_s = time.monotonic() - t_eval
            all_results.extend(results)
            steps.append(_describe(
                pool, s, idx, score, results, adapter=str(step_dir), reward_mean=statistics.fmean(r),
                trained_sequences=stats.sequences, skipped_groups=0, loss=stats.loss, grad_norm=stats.grad_norm,
                logprob_drift=stats.logprob_drift, lora_b_changed=stats.lora_b_changed,
                sample_s=sample_s, eval_s=eval_s, train_s=train_s))
            progress("ttt", s, options.ttt_steps)
            prev_indices, prev_results = idx, results
            if not boa.update(s, score):
                stopped = "patience"
                break
    finally:
        if trainer is not None:
            trainer.close()
    chosen = boa.best_step if boa.best_step is not None else 0
    return {
        "steps": [st.to_json() for st in steps],
        "chosen_step": chosen,
        "chosen_adapter": adapters.get(chosen),
        "chosen_score": dict(boa.history).get(chosen),
        "stopped": stopped,  # "steps" (all run) | "patience" (BoA) | "zero_variance" (no signal)
        "params": {"steps": options.ttt_steps, "lr": options.ttt_lr, "lora_rank": options.lora_rank,
                   "k": options.ttt_k, "patience": options.ttt_patience, "reward_cap": REWARD_CAP,
                   "advantages": "rloo", "loss": "dr_grpo", "kl": 0.0, "temperature": run.temperature},
        "dir": str(ttt_dir),
    }


def _check_token_ids_samples(samples, sampler_name: str) -> None:
    for s in samples:
        if s.token_ids is None or s.prompt_token_ids is None:
            raise KoptError(f"--ttt-steps needs the sampler's token ids, and {sampler_name} returned none",
                            "use --sampler hf or --sampler vllm")


__all__ = ["REWARD_CAP", "BestOfAdaptation", "StepReport", "TTTOptions", "adapt", "best_of_adaptation",
           "median_correct_speedup", "oversharpening_note", "require_trainable", "rewards", "rloo_advantages"]
