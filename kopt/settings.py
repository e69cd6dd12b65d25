"""Every user setting of `kopt optimize` and `kopt compare`, declared once.

A declaration holds the default, the help text, the allowed range or choices and the commands that take it.
From it come the command-line options (kopt/cli/options.py), the keys kopt.toml and `[tool.kopt]` accept
(kopt/config.py) and the validation, so a setting cannot work in one place and be unknown in another.
Names are the snake_case spelling; the flag is `--` plus the name with dashes unless `flag` says otherwise
(`timeout_s` is `--timeout`, `target` keeps `--target`). Commands read the resolved values by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from kopt.errors import ConfigError

OPTIMIZE = "optimize"
COMPARE = "compare"
BOTH = frozenset({OPTIMIZE, COMPARE})

BASELINES = ("eager", "compile", "best")


@dataclass(frozen=True)
class Setting:
    name: str
    type: type  # str, int, float, bool or "path" (str holding a path)
    default: Any
    help: str
    commands: frozenset[str] = BOTH
    flag: str | None = None  # default: "--" + name with dashes
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    path: bool = False  # a file or folder (typer shows it as a path; relative to the working directory)
    per_command: Mapping[str, Any] = field(default_factory=dict)  # a different default for one command
    hint: str = ""  # the next step when the value is out of range

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def default_for(self, command: str) -> Any:
        return self.per_command.get(command, self.default)

    def check(self, value: Any) -> Any:
        """The value converted to the declared type, or a ConfigError naming the flag and the range."""
        if value is None:
            return None
        try:
            if self.type is bool:
                if not isinstance(value, bool):
                    raise TypeError
                v = value
            elif self.type is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise TypeError
                v = int(value)
            elif self.type is float:
                if isinstance(value, bool):
                    raise TypeError
                v = float(value)
                if not math.isfinite(v):
                    raise TypeError
            else:
                v = str(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{self.option} must be {self.type.__name__}, got {value!r}",
                              self.hint or f"{self.option}: {self.help}") from None
        if self.choices is not None and v not in self.choices:
            raise ConfigError(f"{self.option} must be one of {', '.join(self.choices)}, got {v!r}",
                              self.hint or self.help)
        if self.min is not None and v < self.min:
            raise ConfigError(f"{self.option} must be at least {self.min:g}, got {v}", self.hint or self.help)
        if self.max is not None and v > self.max:
            raise ConfigError(f"{self.option} must be at most {self.max:g}, got {v}", self.hint or self.help)
        return v


def _s(name: str, type_: type, default: Any, help_: str, **kw: Any) -> Setting:
    return Setting(name=name, type=type_, default=default, help=help_, **kw)


SETTINGS: tuple[Setting, ...] = (
    # ---- sampling ----
    _s("sampler", str, None, "vllm | openai | hf | replay (default: replay with --samples, openai with "
       "--base-url, else vllm on a GPU).", choices=("vllm", "openai", "hf", "replay")),
    _s("model", str, None, "Model name or local directory (vllm, hf) or served model name (openai)."),
    _s("base_url", str, None, "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (vllm serve)."),
    _s("api_key_env", str, None, "Name of the environment variable that holds the API key."),
    _s("api", str, "auto", "openai sampler: chat | completions | auto.", choices=("auto", "chat", "completions")),
    _s("samples", str, None, "Samples file (JSONL) for --sampler replay; compare: a folder of "
       "<task name>.jsonl too.", path=True),
    # K: the paper draws 64; optimize defaults to 16 so a first run is cheap.
    _s("k", int, 16, "Samples to draw per task (optimize default 16; compare 64, as in the paper).", min=1,
       per_command={COMPARE: 64}, hint="e.g. --k 16"),
    # Barnes 2026 samples at T = 0.25 (its released code).
    _s("temperature", float, 0.25, "Sampling temperature (default 0.25, as in the paper).", min=0.0),
    _s("max_tokens", int, 2048, "Maximum tokens per sample (default 2048).", min=1),
    _s("seed", int, 0, "Sampling seed (default 0).", commands=frozenset({OPTIMIZE})),
    _s("seeds", str, "42", "Comma-separated sampling seeds, e.g. 42,43,44.", commands=frozenset({COMPARE})),
    _s("prompt_template", str, None, "Prompt template file (see templates/prompt_cpu.txt).", path=True),
    # ---- evaluation ----
    _s("target", str, "auto", "Where kernels run: auto (cuda if present, else cpu), cuda or cpu."),
    _s("jobs", int, 2, "Parallel compiles and checks (default 2).", min=1),
    _s("executor", str, "local", "Where candidates are evaluated: local (this machine, --jobs at a time) or ray "
       "(a Ray cluster; pip install 'kopt[ray]', see docs/cluster.md).", choices=("local", "ray")),
    _s("devices", str, None, "GPUs to evaluate on, e.g. 0,1 (nvidia-smi's indices; default every visible GPU): "
       "checks run one per device, timing is exclusive per device, kinds are never mixed."),
    _s("ray_address", str, None, "--executor ray: the cluster to join, auto (the one this machine belongs to, "
       "the default) or HOST:PORT of its head node."),
    _s("timeout_s", float, 120.0, "Seconds each check or timing process may run (default 120).", flag="--timeout",
       min=1.0),
    _s("compile_timeout_s", float, 300.0, "Seconds one compile may run (default 300).", flag="--compile-timeout",
       min=1.0),
    _s("atol", float, None, "Absolute tolerance (default 1e-4 for fp32, 1e-2 for half types).", min=0.0),
    _s("rtol", float, None, "Relative tolerance (default 1e-4 for fp32, 1e-2 for half types).", min=0.0),
    _s("threads", int, None, "CPU threads for the reference and every candidate (default: all cores but one, kept for kopt).", min=1),
    _s("no_cache", bool, False, "Ignore the cache: sample and evaluate everything again."),
    _s("baseline", str, "best", "What 'faster than the reference' means: eager, compile (torch.compile) or "
       "best (the faster of the two, as KernelBench-v3 scores).", choices=BASELINES),
    # ---- selection ----
    _s("select", str, "surprisal-top-m", "surprisal-top-m (default) | surprisal | confidence | random | oracle.",
       commands=frozenset({OPTIMIZE}), choices=("surprisal-top-m", "surprisal", "confidence", "random", "oracle")),
    _s("strategies", str, "all", "all, or a comma-separated list: oracle,random,confidence,surprisal,"
       "surprisal-top-m,ttt,refine (all includes ttt only with --ttt-steps, refine only when listed).",
       commands=frozenset({COMPARE})),
    _s("top_m", int, 3, "How many of the most surprising correct candidates to time (default 3).", min=1,
       hint="the paper's default is 3"),
    _s("surprisal", str, "mean", "mean (per token, the paper's ranking) or sum.", choices=("mean", "sum")),
    _s("adaptive", bool, False, "Time every correct candidate when the log-prob spread is below 1.0 "
       "(evaluates the whole pool).", commands=frozenset({OPTIMIZE})),
    _s("exhaustive", bool, False, "Compile and check every candidate, not only the most surprising ones "
       "the selection needs (compare, oracle, random, confidence and --adaptive always do).",
       commands=frozenset({OPTIMIZE})),
    # ---- test-time training (Barnes 2026 §3.4: lr 1e-5, LoRA rank 16, 32 samples per step) ----
    _s("ttt_steps", int, 0, "LoRA test-time-training steps (0: off; 1-2 recommended; compare adds the ttt "
       "strategy).", min=0, hint="e.g. --ttt-steps 1"),
    _s("ttt_lr", float, 1e-5, "TTT learning rate (paper: 1e-5).", min=0.0),
    _s("lora_rank", int, 16, "TTT LoRA rank (paper: 16).", min=1, max=512),
    _s("ttt_k", int, 32, "Samples per TTT step (paper: 32; compare: default K // (ttt-steps + 1), the "
       "matched budget).", min=2, per_command={COMPARE: None},
       hint="advantages are leave-one-out, so each step needs at least 2 samples (the paper uses 32)"),
    _s("ttt_patience", int, 1, "Stop TTT after this many consecutive regressions.", min=1),
    # ---- repair rounds (kopt/refine.py): the evaluator's verdict goes back to the model for another turn ----
    _s("refine", int, 0, "Repair rounds after the pool is evaluated: failures and the fastest correct "
       "candidates get a follow-up turn with kopt's verdict (0: off; compare: the refine strategy's rounds, "
       "at least 1).", min=0, hint="e.g. --refine 1"),
    _s("refine_k", int, None, "Follow-up turns per repair round (optimize default K/2; compare: "
       "K // (rounds + 1), the matched budget).", min=1),
    _s("refine_template", str, None, "Feedback template file for --refine (see templates/refine.txt).",
       path=True, commands=frozenset({OPTIMIZE})),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def for_command(command: str) -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if command in s.commands)


def defaults(command: str) -> dict[str, Any]:
    return {s.name: s.default_for(command) for s in for_command(command)}


def default(name: str, command: str = OPTIMIZE) -> Any:
    """The declared default, for dataclass fields that mirror a setting."""
    return BY_NAME[name].default_for(command)


def check(name: str, value: Any) -> Any:
    """Validate one value against its declaration (library callers and the CLI share this)."""
    return BY_NAME[name].check(value)


def check_fields(obj: Any, names: Iterable[str]) -> None:
    """Validate the attributes of `obj` that mirror declared settings."""
    for n in names:
        if n in BY_NAME:
            BY_NAME[n].check(getattr(obj, n))


def resolve(command: str, flags: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Default < config file < flag (a flag left at None was not given), validated, for one command.

    A config key declared for another command only is ignored here (`select` in kopt.toml does not break
    `kopt compare`); a key declared for none is an error, so a typo does not silently do nothing.
    """
    unknown = sorted(k for k in config if k not in BY_NAME)
    if unknown:
        raise ConfigError(f"unknown setting(s) in kopt.toml/[tool.kopt]: {', '.join(unknown)}",
                          f"known settings: {', '.join(sorted(BY_NAME))}")
    out = defaults(command)
    for k, v in config.items():
        if k in out:
            out[k] = BY_NAME[k].check(v)
    for k, v in flags.items():
        if k in out and v is not None:
            out[k] = BY_NAME[k].check(v)
    return out


__all__ = ["BASELINES", "BY_NAME", "COMPARE", "OPTIMIZE", "SETTINGS", "Setting", "check", "check_fields",
           "default", "defaults", "for_command", "resolve"]
