"""The main job: task -> prompt -> sampler -> candidates -> evaluator -> selection -> output.

`build_pool` draws K samples (cached per sample), extracts and deduplicates their code, and checks every
unique candidate (cached per verdict). `optimize` then selects among the correct ones, timing only what
the strategy asks for (Barnes 2026, arXiv 2602.07670: timing the 3 most surprising matched the oracle at K = 64),
and writes the winner. `kopt compare` and `kopt hook` reuse `build_pool`, so every command shares one cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from kopt.cache import Cache
from kopt.config import kopt_home
from kopt.errors import KoptError
from kopt.records import Candidate, EvalResult, Progress, Sample, Scored, Selection, Status, no_progress
from kopt.task import Task

log = logging.getLogger("kopt")

# Warnings go to the CLI through this callback (the core never prints).
Warn = Callable[[str], None]


@dataclass(frozen=True)
class RunOptions:
    """Everything that decides which samples are drawn and how they are judged."""

    sampler: str | None = None
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    api: str = "auto"
    samples: Path | None = None
    k: int = 16
    temperature: float = 0.25  # the paper's sampling temperature (Barnes 2026; T=0.25 in its released code)
    max_tokens: int = 2048
    seed: int = 0
    target: str = "auto"
    jobs: int = 2
    timeout_s: float = 120.0
    compile_timeout_s: float = 300.0
    atol: float | None = None
    rtol: float | None = None
    threads: int | None = None
    no_cache: bool = False
    prompt_template: Path | None = None
    surprisal: str = "mean"  # "mean" per token (what the paper's code ranks by) or "sum"
    enable_lora: bool = False
    max_lora_rank: int = 16


@dataclass(frozen=True)
class OptimizeOptions:
    run: RunOptions = field(default_factory=RunOptions)
    select: str = "surprisal-top-m"
    top_m: int = 3
    adaptive: bool = False
    out: Path | None = None
    force: bool = False
    ttt_steps: int = 0
    ttt_lr: float = 1e-5
    lora_rank: int = 16
    ttt_k: int = 32
    ttt_patience: int = 1


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Pool:
    """K samples for one task, their candidates and verdicts; times candidates on demand (cached)."""

    def __init__(self, task: Task, options: RunOptions, target: str, cache: Cache, progress: Progress,
                 run_dir: Path, prompt: Any, sampler_name: str, model_id: str):
        self.task = task
        self.options = options
        self.target = target
        self.cache = cache
        self.progress = progress
        self.run_dir = run_dir
        self.prompt = prompt
        self.sampler_name = sampler_name
        self.model_id = model_id
        self.samples: list[Sample] = []
        self.candidates: list[Candidate] = []
        self.checked: dict[int, EvalResult] = {}  # unique candidate index -> verdict (no timing)
        self.timed: dict[int, EvalResult] = {}
        self._evaluator = None
        self._fingerprint: dict[str, str] | None = None
        self.evaluated_now = 0  # verdicts computed (not served from cache) in this process
        self.timed_now = 0

    # ---- evaluator access -------------------------------------------------------------------
    def eval_settings(self):
        from kopt.evaluator import EvalSettings

        o = self.options
        return EvalSettings(target=self.target, atol=o.atol, rtol=o.rtol, jobs=o.jobs, threads=o.threads,
                            run_timeout_s=o.timeout_s, compile_timeout_s=o.compile_timeout_s)

    @property
    def evaluator(self):
        if self._evaluator is None:
            from kopt.evaluator import Evaluator

            self._evaluator = Evaluator(self.task, self.eval_settings(), progress=self.progress)
        return self._evaluator

    def fingerprint(self) -> dict[str, str]:
        if self._fingerprint is None:
            from kopt.evaluator import machine_fingerprint

            self._fingerprint = machine_fingerprint(self.target)
        return self._fingerprint

    def _verdict_key(self, code: str) -> dict[str, Any]:
        return {"code": _sha(code), "task": self.task.hash, "target": self.target,
                "machine": self.fingerprint(), "settings": self.eval_settings().key()}

    # ---- views --------------------------------------------------------------------------------
    def representative(self, index: int) -> int:
        dup = self.candidates[index].duplicate_of
        return index if dup is None else dup

    def result_for(self, index: int) -> EvalResult:
        """The verdict for sample `index` (a duplicate gets its first's; timing included once timed)."""
        rep = self.representative(index)
        if rep in self.timed:
            return self.timed[rep]
        if rep in self.checked:
            return self.checked[rep]
        return EvalResult(status=Status.NO_CODE, reason="the sample has no ```python block defining ModelNew")

    def scored(self, mode: str | None = None) -> list[Scored]:
        """The unique candidates with their correctness verdicts, as the selection strategies see them."""
        mode = mode or self.options.surprisal
        out = []
        for c in self.candidates:
            if c.duplicate_of is not None or c.code is None:
                continue
            out.append(Scored(candidate=c, result=self.checked[c.index], surprisal=c.sample.surprisal(mode)))
        return out

    @property
    def samples_path(self) -> Path:
        return self.run_dir / "samples.jsonl"

    # ---- timing -------------------------------------------------------------------------------
    def time(self, indices: Sequence[int]) -> dict[int, EvalResult]:
        """Time the given (correct) candidates, one at a time; a rerun is served from the cache."""
        out: dict[int, EvalResult] = {}
        todo: list[int] = []
        for i in indices:
            rep = self.representative(i)
            if rep in self.timed:
                out[i] = self.timed[rep]
                continue
            cached = self.cache.get("time", self._verdict_key(self.candidates[rep].code))
            if cached is not None:
                self.timed[rep] = EvalResult.from_json(cached)
                out[i] = self.timed[rep]
            else:
                todo.append(rep)
        todo = list(dict.fromkeys(todo))
        if todo:
            sources = [self.candidates[i].code for i in todo]

            def done(j: int, result: EvalResult) -> None:
                rep = todo[j]
                self.timed[rep] = result
                self.timed_now += 1
                self.cache.set("time", self._verdict_key(sources[j]), result.to_json())

            results = self.evaluator.time(sources, [self.checked[i] for i in todo], on_result=done)
            for j, result in enumerate(results):
                if todo[j] not in self.timed:
                    done(j, result)
        for i in indices:
            out[i] = self.timed[self.representative(i)]
        return out

    def close(self) -> None:
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None


def resolve_target(target: str) -> str:
    if target not in ("auto", "cpu", "cuda"):
        raise KoptError(f"unknown --target {target!r}", "use auto, cuda or cpu")
    if target != "auto":
        return target
    from kopt.evaluator import resolve_target as _resolve

    return _resolve(target)


def _run_dir(task: Task, options: RunOptions, sampler_name: str, model_id: str, prompt_hash: str, target: str) -> Path:
    ident = json.dumps({"task": task.hash, "sampler": sampler_name, "model": model_id, "prompt": prompt_hash,
                        "k": options.k, "seed": options.seed, "T": options.temperature,
                        "max_tokens": options.max_tokens, "target": target,
                        "samples": str(options.samples.resolve()) if options.samples else None}, sort_keys=True)
    return kopt_home() / "runs" / task.name / _sha(ident)[:12]


def _write_jsonl_atomic(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)


def draw_samples(prompt: Any, options: RunOptions, sampler_name: str, sampler_params: Any, cache: Cache,
                 progress: Progress, indices: Sequence[int], adapter: str | None = None,
                 sampler_holder: dict | None = None) -> dict[int, Sample]:
    """Samples for `indices`: from the cache when present, else drawn (each cached as it arrives).

    The sampler itself is built only when something is missing, so a rerun never loads a model.
    """
    from kopt.samplers import get_sampler

    holder = sampler_holder if sampler_holder is not None else {}
    got: dict[int, Sample] = {}
    sampler = holder.get("sampler")
    if sampler is None and sampler_name == "replay":
        sampler = holder["sampler"] = get_sampler(sampler_name, sampler_params)
    cacheable = sampler is None or getattr(sampler, "cacheable", True)
    key_base: dict[str, Any] | None = None
    missing: list[int] = []
    if cacheable and sampler_name != "replay":
        key_base = {"sampler": sampler_name, "model": options.model, "base_url": options.base_url,
                    "prompt": prompt.hash, "T": options.temperature, "max_tokens": options.max_tokens,
                    "seed": options.seed, "api": options.api, "adapter": _adapter_id(adapter)}
        for i in indices:
            cached = cache.get("sample", {**key_base, "index": i})
            if cached is not None:
                got[i] = Sample.from_json(cached)
            else:
                missing.append(i)
    else:
        missing = list(indices)
    total = len(indices)
    progress("sampling", len(got), total)
    if missing:
        if sampler is None:
            sampler = holder["sampler"] = get_sampler(sampler_name, sampler_params)
        for i, sample in sampler.sample(prompt, missing, adapter=adapter):
            got[i] = sample
            if key_base is not None and getattr(sampler, "cacheable", True):
                cache.set("sample", {**key_base, "index": i}, sample.to_json())
            progress("sampling", len(got), total)
    return got


def _adapter_id(adapter: str | None) -> str | None:
    """An adapter is identified by its weights' content, not its path (paths are reused across runs)."""
    if adapter is None:
        return None
    h = hashlib.sha256()
    for p in sorted(Path(adapter).glob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def make_candidates(samples: Sequence[Sample], start: int = 0, step: int = 0,
                    seen: dict[str, int] | None = None) -> list[Candidate]:
    """Extract each sample's code and mark duplicates (same code after normalising whitespace and comments)."""
    from kopt.prompt import extract_code, normalize_code

    seen = {} if seen is None else seen
    out = []
    for offset, sample in enumerate(samples):
        index = start + offset
        code = extract_code(sample.text)
        if code is None:
            out.append(Candidate(index=index, sample=sample, code=None, step=step))
            continue
        norm = _sha(normalize_code(code))
        dup = seen.get(norm)
        if dup is None:
            seen[norm] = index
        out.append(Candidate(index=index, sample=sample, code=code, code_sha256=_sha(code), duplicate_of=dup, step=step))
    return out


def sampler_params_for(options: RunOptions):
    from kopt.samplers import SamplerParams

    return SamplerParams(model=options.model, temperature=options.temperature, max_tokens=options.max_tokens,
                         seed=options.seed, base_url=options.base_url, api_key_env=options.api_key_env,
                         api=options.api, samples_path=str(options.samples) if options.samples else None,
                         enable_lora=options.enable_lora, max_lora_rank=options.max_lora_rank)


def build_pool(task: Task, options: RunOptions, progress: Progress = no_progress, cache: Cache | None = None,
               sampler_holder: dict | None = None) -> Pool:
    """Draw K samples (cached), extract and dedupe their code, check every unique candidate (cached)."""
    from kopt.prompt import build_prompt
    from kopt.samplers import default_sampler

    if options.k < 1:
        raise KoptError(f"--k must be at least 1, got {options.k}", "e.g. --k 16")
    target = resolve_target(options.target)
    cache = cache or Cache(enabled=not options.no_cache)
    params = sampler_params_for(options)
    sampler_name = options.sampler or default_sampler(params)
    prompt = build_prompt(task, target, options.prompt_template)
    model_id = options.model or ("replay" if sampler_name == "replay" else "")
    run_dir = _run_dir(task, options, sampler_name, model_id, prompt.hash, target)
    pool = Pool(task, options, target, cache, progress, run_dir, prompt, sampler_name, model_id)

    got = draw_samples(prompt, options, sampler_name, params, cache, progress, range(options.k),
                       sampler_holder=sampler_holder)
    pool.samples = [got[i] for i in range(options.k)]
    _write_jsonl_atomic(pool.samples_path, [s.to_json() for s in pool.samples])
    pool.candidates = make_candidates(pool.samples)
    evaluate_candidates(pool, pool.candidates)
    return pool


def evaluate_candidates(pool: Pool, candidates: Sequence[Candidate]) -> None:
    """Check every unique candidate: cached verdicts first, the rest through the evaluator."""
    todo: list[Candidate] = []
    unique = [c for c in candidates if c.code is not None and c.duplicate_of is None]
    for c in unique:
        cached = pool.cache.get("check", pool._verdict_key(c.code))
        if cached is not None:
            pool.checked[c.index] = EvalResult.from_json(cached)
        else:
            todo.append(c)
    if not todo:
        return
    sources = [c.code for c in todo]

    def done(j: int, result: EvalResult) -> None:
        if todo[j].index in pool.checked:
            return
        pool.checked[todo[j].index] = result
        pool.evaluated_now += 1
        pool.cache.set("check", pool._verdict_key(sources[j]), result.to_json())

    results = pool.evaluator.check(sources, on_result=done)
    for j, result in enumerate(results):
        done(j, result)


@dataclass(frozen=True)
class OptimizeResult:
    """What `kopt optimize` did: the report (report.json's content) and where it was written."""

    report: dict[str, Any]
    out_dir: Path | None
    selection: Selection
    exit_code: int


def _status_counts(pool: Pool) -> Counter[str]:
    return Counter(pool.result_for(i).status.value for i in range(len(pool.candidates)))


def _most_common_compile_error(pool: Pool) -> str | None:
    errors = Counter(r.reason.splitlines()[0] if r.reason else "" for i, r in pool.checked.items()
                     if r.status is Status.COMPILE_ERROR)
    return errors.most_common(1)[0][0] if errors else None


def optimize(task: Task, options: OptimizeOptions, progress: Progress = no_progress, warn: Warn = log.warning,
             cache: Cache | None = None) -> OptimizeResult:
    """The whole job for one task. Raises KoptError for anything the user can fix."""
    from kopt import output, selection

    strategy = selection.STRATEGIES.get(options.select)
    if strategy is None:
        raise KoptError(f"unknown --select {options.select!r}", f"use one of {', '.join(selection.STRATEGIES)}")
    if options.top_m < 1:
        raise KoptError(f"--top-m must be at least 1, got {options.top_m}", "the paper's default is 3")
    out_dir = options.out or Path("kernels") / task.name
    output.check_writable(out_dir, options.force)  # refuse before spending anything
    if options.ttt_steps > 2:
        warn(f"--ttt-steps {options.ttt_steps}: the paper finds 1-2 steps best; more over-sharpens the model "
             "(Barnes 2026, best-of-adaptation results)")
    cache = cache or Cache(enabled=not options.run.no_cache)
    holder: dict[str, Any] = {}
    pool = build_pool(task, options.run, progress, cache, sampler_holder=holder)
    ttt_report = None
    try:
        if options.ttt_steps > 0:
            from kopt import ttt

            ttt_report = ttt.adapt(pool, options, progress=progress, warn=warn, sampler_holder=holder)
        scored = pool.scored()
        sel = selection.select(options.select, scored, pool.time, top_m=options.top_m, seed=options.run.seed,
                               adaptive=options.adaptive)
        for note in sel.notes:
            warn(note)
        report = output.build_report(pool, options, sel, ttt_report)
        cache.save_run_stats(f"optimize {task.target}")
        if sel.winner is None:
            counts = _status_counts(pool)
            summary = ", ".join(f"{n} {s}" for s, n in counts.most_common())
            err = _most_common_compile_error(pool)
            hint = f"most common compile error: {err}" if err else "try a larger --k or a different model"
            output.write_failure(pool, report)
            raise KoptError(f"no correct candidate among {len(pool.candidates)} samples ({summary})", hint)
        written = output.write_kernel_dir(out_dir, pool, report, force=options.force)
        report = json.loads((written / "report.json").read_text())
        winner = report["winner"]
        if winner.get("speedup") is not None and winner["speedup"] <= 1.0:
            warn(f"the winner is slower than the reference ({winner['speedup']:.2f}x); it is recorded, "
                 "keep the PyTorch module unless you need the kernel for another reason")
        return OptimizeResult(report=report, out_dir=written, selection=sel, exit_code=0)
    finally:
        pool.close()
        sampler = holder.get("sampler")
        if sampler is not None:
            sampler.close()
        cache.close()


__all__ = ["RunOptions", "OptimizeOptions", "Pool", "build_pool", "optimize", "OptimizeResult"]
