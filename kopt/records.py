"""Records passed between the pipeline stages: frozen dataclasses, units in field names, statuses as enums.

Data flow: task -> prompt -> sampler (Sample) -> candidates (Candidate) -> evaluator (EvalResult)
-> selection (Selection) -> output.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import Any, Callable


class Status(str, enum.Enum):
    """An evaluator verdict. The values are what reports and `--json` print."""

    CORRECT = "correct"
    INCORRECT = "incorrect"
    COMPILE_ERROR = "compile_error"
    RUNTIME_ERROR = "runtime_error"
    TIMEOUT = "timeout"
    CRASHED = "crashed"
    REJECTED = "rejected"
    # Not evaluator verdicts: the sample had no code block defining ModelNew; or the candidate was never
    # evaluated because surprisal-ordered evaluation found what the selection needs first.
    NO_CODE = "no_code"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


# A progress callback: (stage, done, total). The CLI turns these into rich progress bars; the core never
# imports rich. `total` may be 0 when unknown.
Progress = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    """The default progress callback: report nothing."""


@dataclass(frozen=True)
class Sample:
    """One completion from a sampler, as stored in samples.jsonl (one JSON object per line).

    `logprob` is the sum of the completion tokens' log-probabilities under the model at T=1 (vLLM's
    `raw_logprobs`), so surprisal = -logprob (Barnes 2026, arXiv 2602.07670, "surprisal-guided selection").
    """

    text: str
    logprob: float | None = None
    num_tokens: int | None = None
    token_logprobs: tuple[float, ...] | None = None
    token_ids: tuple[int, ...] | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    model: str = ""
    finish_reason: str | None = None
    # Which distribution the log-probs come from: "raw" (T=1, the model's own) or "processed".
    logprobs_mode: str | None = None
    # Repair rounds (kopt/refine.py): 0 for a first-turn sample; round r > 0 answers a follow-up turn about
    # sample `parent` (its index in samples.jsonl), and the log-probs are those of this answer alone.
    round: int = 0
    parent: int | None = None

    def surprisal(self, mode: str = "mean") -> float | None:
        """Minus the log-probability: per token ("mean", what the paper's code ranks by) or summed ("sum")."""
        if self.logprob is None:
            return None
        if mode == "sum":
            return -self.logprob
        n = self.num_tokens or (len(self.token_logprobs) if self.token_logprobs else 0)
        return -self.logprob / n if n > 0 else None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "text": self.text,
            "logprob": self.logprob,
            "num_tokens": self.num_tokens,
            "model": self.model,
            "finish_reason": self.finish_reason,
        }
        if self.token_logprobs is not None:
            d["token_logprobs"] = list(self.token_logprobs)
        if self.token_ids is not None:
            d["token_ids"] = list(self.token_ids)
        if self.prompt_token_ids is not None:
            d["prompt_token_ids"] = list(self.prompt_token_ids)
        if self.logprobs_mode is not None:
            d["logprobs_mode"] = self.logprobs_mode
        if self.round:  # a first-turn line stays as it always was
            d["round"] = self.round
            d["parent"] = self.parent
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Sample":
        if not isinstance(d, dict) or not isinstance(d.get("text"), str):
            raise ValueError('each line must be a JSON object with a string "text"')
        lp = d.get("logprob")
        if lp is not None and not (isinstance(lp, (int, float)) and math.isfinite(lp)):
            raise ValueError('"logprob" must be a finite number')
        tl = d.get("token_logprobs")
        ti = d.get("token_ids")
        pti = d.get("prompt_token_ids")
        n = d.get("num_tokens")
        if n is None and tl is not None:
            n = len(tl)
        if lp is None and tl is not None:
            lp = float(sum(tl))
        rnd, parent = d.get("round") or 0, d.get("parent")
        if not isinstance(rnd, int) or rnd < 0 or (rnd > 0) != isinstance(parent, int) or isinstance(parent, bool):
            raise ValueError('"round" must be a whole number >= 0, and "parent" a sample index exactly when it is > 0')
        return cls(
            text=d["text"],
            logprob=None if lp is None else float(lp),
            num_tokens=None if n is None else int(n),
            token_logprobs=None if tl is None else tuple(float(x) for x in tl),
            token_ids=None if ti is None else tuple(int(x) for x in ti),
            prompt_token_ids=None if pti is None else tuple(int(x) for x in pti),
            model=str(d.get("model") or ""),
            finish_reason=d.get("finish_reason"),
            logprobs_mode=d.get("logprobs_mode"),
            round=rnd,
            parent=parent if rnd else None,
        )


@dataclass(frozen=True)
class EvalResult:
    """The evaluator's verdict on one candidate. Times are medians in milliseconds."""

    status: Status
    reason: str = ""
    source_sha256: str = ""
    binary_sha256: str | None = None
    runtime_ms: float | None = None
    runtime_iqr_ms: float | None = None
    reference_runtime_ms: float | None = None
    speedup: float | None = None  # vs eager PyTorch (the reference as written)
    speedup_vs_compile: float | None = None  # vs the reference under torch.compile (None: not measured)
    compile_reference_runtime_ms: float | None = None  # the reference under torch.compile (compile time excluded)
    trials_passed: int = 0
    trials_total: int = 0
    timed_calls: int = 0
    compile_s: float | None = None
    target: str = ""
    device: str = ""
    isolation: str = ""
    warnings: tuple[str, ...] = ()
    toolchain: tuple[tuple[str, str], ...] = ()
    # The machine, not the candidate, ended it (a SIGKILL kopt did not send: the kernel's OOM killer on a
    # machine short of memory): reported, never cached, so a rerun evaluates it again.
    transient: bool = False

    @property
    def correct(self) -> bool:
        return self.status is Status.CORRECT

    @property
    def timed(self) -> bool:
        return self.runtime_ms is not None

    def replace(self, **changes: Any) -> "EvalResult":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["status"] = self.status.value
        d["warnings"] = list(self.warnings)
        d["toolchain"] = dict(self.toolchain)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "EvalResult":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["status"] = Status(d["status"])
        kw["warnings"] = tuple(d.get("warnings") or ())
        kw["toolchain"] = tuple(sorted((str(k), str(v)) for k, v in (d.get("toolchain") or {}).items()))
        return cls(**kw)


@dataclass(frozen=True)
class Candidate:
    """One sample's extracted code, with where it came from.

    `index` is the sample's line in samples.jsonl (from 0). `duplicate_of` is the index of the first sample
    whose code is the same after normalising whitespace and comments: it is evaluated once.
    """

    index: int
    sample: Sample
    code: str | None
    code_sha256: str | None = None
    duplicate_of: int | None = None
    step: int = 0  # TTT step that produced it (0 = the base model)


@dataclass(frozen=True)
class Scored:
    """A candidate with its verdict, as the selection strategies see it."""

    candidate: Candidate
    result: EvalResult
    surprisal: float | None = None

    @property
    def index(self) -> int:
        return self.candidate.index


@dataclass(frozen=True)
class Selection:
    """What a strategy chose, and what it had to time to choose it."""

    strategy: str
    winner: int | None  # candidate index, or None when no candidate is correct
    timed: tuple[int, ...] = ()  # candidate indices the strategy timed, in the order it timed them
    logprob_std: float | None = None  # std of log-probability among correct candidates
    notes: tuple[str, ...] = field(default_factory=tuple)
