"""The pool: one task's samples, their candidates and verdicts, and the backends that make them.

`Pool` is what `kopt optimize`, `kopt compare` and test-time training share:
- samples are drawn through the pool (each cached under a key only the pool builds), candidates are the
  samples' code with duplicates marked (same code after normalising whitespace and comments), verdicts
  come from the evaluator (cached per candidate under a key only the pool builds) and timings likewise;
- TTT grows it with `extend(samples, step)`; the duplicate map spans every step, so a kernel seen at step 0
  is a duplicate later on;
- it is a context manager that owns the sampler and the evaluator (both built only when something is
  missing, so a fully cached rerun loads no model and starts no process) and closes them once; a `fork`
  shares them with its parent, which alone closes them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from kopt.cache import Cache
from kopt.config import kopt_home
from kopt.records import Candidate, EvalResult, Progress, Sample, Scored, Status, no_progress
from kopt.run_options import RunOptions, adapter_id, sha256_text, write_jsonl_atomic
from kopt.task import Task

NO_CODE_REASON = "the sample has no ```python block defining ModelNew"
SKIPPED_REASON = ("not evaluated: the most surprising correct candidates the selection needs were found first "
                  "(--exhaustive evaluates every candidate)")


class _Backends:
    """The sampler and the evaluator of a pool and its forks, each built on first use, closed once."""

    def __init__(self, task: Task, sampler_name: str, params: Any, eval_settings: Any, progress: Progress,
                 executor: tuple[str, str | None, str | None] = ("local", None, None)):
        self.task, self.sampler_name, self.params, self.executor = task, sampler_name, params, executor
        self.eval_settings, self.progress = eval_settings, progress
        self._sampler = None
        self._evaluator = None

    @property
    def sampler(self):
        if self._sampler is None:
            from kopt.samplers import get_sampler

            self._sampler = get_sampler(self.sampler_name, self.params)
        return self._sampler

    @property
    def sampler_if_built(self):
        return self._sampler

    @property
    def evaluator(self):
        if self._evaluator is None:  # the executor's evaluator API (kopt/executors/): local or on a Ray cluster
            from kopt.executors import executor_class

            name, address, devices = self.executor
            self._evaluator = executor_class(name)(self.task, self.eval_settings, progress=self.progress,
                                                   address=address, devices=devices)
        return self._evaluator

    def close(self) -> None:
        evaluator, sampler = self._evaluator, self._sampler
        self._evaluator = self._sampler = None
        try:
            if evaluator is not None:
                evaluator.close()
        finally:
            if sampler is not None:
                sampler.close()


def _devices(options: RunOptions, target: str):
    """The local GPUs a run evaluates on (executors/devices.py), checked before anything is sampled."""
    from kopt.errors import ConfigError
    from kopt.executors.devices import choose

    if options.executor != "local":
        if options.devices:
            raise ConfigError("--devices is for --executor local", "leave it out: a Ray cluster schedules its own GPUs")
        return (), ()
    return choose(options.devices, target)


class Pool:
    """K samples for one task, their candidates and verdicts; checks and times candidates on demand (cached)."""

    def __init__(self, task: Task, options: RunOptions, *, cache: Cache | None = None,
                 progress: Progress = no_progress, run_dir: Path | None = None, _parent: Pool | None = None):
        from kopt.evaluator import resolve_target
        from kopt.prompt import build_prompt
        from kopt.samplers import default_sampler, sampler_class

        self.task = task
        self.options = options
        self.progress = progress
        if _parent is not None:
            self.target, self.sampler_name = _parent.target, _parent.sampler_name
            self.prompt, self.model_id, self._fingerprint = _parent.prompt, _parent.model_id, _parent._fingerprint
            self.devices, self.device_notes = _parent.devices, _parent.device_notes
        else:
            self.target = resolve_target(options.target)
            params = options.sampler_params()
            self.sampler_name = options.sampler or default_sampler(params)
            self.prompt = build_prompt(task, self.target, options.prompt_template)
            self.model_id = sampler_class(self.sampler_name).identity(params)
            self._fingerprint = None
            self.devices, self.device_notes = _devices(options, self.target)  # a bad --devices fails here
        self.backend = sampler_class(self.sampler_name)  # the class: capabilities without building it
        self._own_cache = cache is None and _parent is None
        self.cache = _parent.cache if _parent is not None and cache is None else (
            cache or Cache(enabled=not options.no_cache))
        self._backends = _parent._backends if _parent is not None else _Backends(
            task, self.sampler_name, options.sampler_params(), self.eval_settings(), progress,
            executor=(options.executor, options.ray_address, self.devices or None))
        self._owner = _parent is None
        self.run_dir = run_dir or self._default_run_dir()
        self.samples: list[Sample] = []
        self.candidates: list[Candidate] = []
        self.checked: dict[int, EvalResult] = {}  # unique candidate index -> verdict (no timing)
        self.timed: dict[int, EvalResult] = {}
        self._seen: dict[str, int] = {}  # normalised-code sha -> first candidate index with it
        self._not_cached: set[int] = set()  # looked up in the cache already and not there: ask only once
        self.evaluated_now = 0  # verdicts computed (not served from cache) in this process
        self.drawn_now = 0  # samples drawn (not served from cache) in this process
        self.timed_now = 0

    # ---- lifetime ---------------------------------------------------------------------------------
    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._owner:
            try:
                self._backends.close()
            finally:
                if self._own_cache:
                    self.cache.close()

    def fork(self, k: int, run_dir: Path) -> Pool:
        """A pool holding this one's first k samples (same candidates, verdicts and timings) in `run_dir`,
        sharing the sampler, the evaluator and the cache. Growing the fork leaves this pool untouched."""
        child = Pool(self.task, dataclasses.replace(self.options, k=k), progress=self.progress, run_dir=run_dir,
                     _parent=self)
        child.samples = list(self.samples[:k])
        child.candidates = list(self.candidates[:k])  # a duplicate points at an earlier index: still inside
        child.checked = {i: r for i, r in self.checked.items() if i < k}
        child.timed = {i: r for i, r in self.timed.items() if i < k}
        for c in child.candidates:
            if c.code is not None and c.duplicate_of is None:
                child._seen[self._norm(c.code)] = c.index
        write_jsonl_atomic(child.samples_path, [x.to_json() for x in child.samples])
        return child

    # ---- keys (the only place sample and verdict cache keys are built) ------------------------------
    def eval_settings(self):
        from kopt.evaluator import EvalSettings

        o = self.options
        return EvalSettings(target=self.target, atol=o.atol, rtol=o.rtol, jobs=o.jobs, threads=o.threads,
                            run_timeout_s=o.timeout_s, compile_timeout_s=o.compile_timeout_s)

    def fingerprint(self) -> dict[str, str]:
        if self._fingerprint is None:  # the executor's device kind (a Ray cluster's, not this machine's)
            self._fingerprint = self._backends.evaluator.fingerprint()
        return self._fingerprint

    def _verdict_key(self, code: str) -> dict[str, Any]:
        return {"code": sha256_text(code), "task": self.task.hash, "target": self.target,
                "machine": self.fingerprint(), "settings": self.eval_settings().key()}

    def _sample_key(self, index: int, adapter: str | None) -> dict[str, Any] | None:
        if not self.backend.cacheable:  # e.g. replay: the file is the cache
            return None
        o = self.options
        return {"sampler": self.sampler_name, "model": o.model, "base_url": o.base_url, "prompt": self.prompt.hash,
                "T": o.temperature, "max_tokens": o.max_tokens, "seed": o.seed, "api": o.api,
                "adapter": adapter_id(adapter), "index": index}

    def _default_run_dir(self) -> Path:
        o = self.options
        ident = json.dumps({"task": self.task.hash, "sampler": self.sampler_name, "model": self.model_id,
                            "prompt": self.prompt.hash, "k": o.k, "seed": o.seed, "T": o.temperature,
                            "max_tokens": o.max_tokens, "target": self.target,
                            "samples": str(o.samples.resolve()) if o.samples else None}, sort_keys=True)
        return kopt_home() / "runs" / self.task.name / sha256_text(ident)[:12]

    @property
    def samples_path(self) -> Path:
        return self.run_dir / "samples.jsonl"

    @property
    def sampler(self):
        """The sampler, built now if it was not yet (TTT needs it to free memory while training)."""
        return self._backends.sampler

    @property
    def sampler_if_built(self):
        return self._backends.sampler_if_built

    # ---- growing ----------------------------------------------------------------------------------
    def draw(self, indices: Sequence[int], adapter: str | None = None) -> list[Sample]:
        """Samples for `indices`, in that order: from the cache when present, else drawn (each cached as it
        arrives). The sampler is built only when something is missing."""
        got: dict[int, Sample] = {}
        missing: list[int] = []
        for i in indices:
            key = self._sample_key(i, adapter)
            cached = self.cache.get("sample", key) if key is not None else None
            if cached is not None:
                got[i] = Sample.from_json(cached)
            else:
                missing.append(i)
        total = len(indices)
        self.progress("sampling", len(got), total)
        if missing and self.backend.cacheable:
            # Tokens cost money and time: the trusted reference runs first (seconds), so a task that cannot run
            # on this target fails with its real cause before anything is sampled or compiled.
            self._backends.evaluator.prepare()
        if missing:
            for i, sample in self._backends.sampler.sample(self.prompt, missing, adapter=adapter):
                got[i] = sample
                self.drawn_now += 1
                key = self._sample_key(i, adapter)
                if key is not None:
                    self.cache.set("sample", key, sample.to_json())
                self.progress("sampling", len(got), total)
        return [got[i] for i in indices]

    def draw_turns(self, requests: Sequence[tuple[int, Any]]) -> list[Sample]:
        """Follow-up samples (kopt/refine.py) for (index, conversation) pairs, in that order, each cached under
        its conversation's hash (the parent's answer and the feedback on it) and its index (the seed)."""
        keys = [None if k is None else {**k, "prompt": conv.hash}
                for k, conv in ((self._sample_key(i, None), conv) for i, conv in requests)]
        got: dict[int, Sample] = {}
        for (i, _), key in zip(requests, keys):
            cached = self.cache.get("sample", key) if key is not None else None
            if cached is not None:
                got[i] = Sample.from_json(cached)
        missing = [(i, conv) for i, conv in requests if i not in got]
        if missing:
            key_of = {i: key for (i, _), key in zip(requests, keys)}
            for i, sample in self._backends.sampler.sample_turns(missing):
                got[i] = sample
                self.drawn_now += 1
                if key_of[i] is not None:
                    self.cache.set("sample", key_of[i], sample.to_json())
                self.progress("sampling", len(got), len(requests))
        return [got[i] for i, _ in requests]

    def fill(self) -> Pool:
        """Draw the K base samples (step 0) and make their candidates; nothing is evaluated yet."""
        from kopt.errors import KoptError

        if self.options.k < 1:
            raise KoptError(f"--k must be at least 1, got {self.options.k}", "e.g. --k 16")
        self.extend(self.draw(range(self.options.k)), step=0)
        return self

    def _norm(self, code: str) -> str:
        from kopt.prompt import normalize_code

        return sha256_text(normalize_code(code))

    def extend(self, samples: Sequence[Sample], step: int) -> list[Candidate]:
        """Append samples (drawn at TTT `step`), make their candidates, rewrite samples.jsonl."""
        from kopt.prompt import extract_code

        start = len(self.samples)
        new: list[Candidate] = []
        for offset, sample in enumerate(samples):
            index = start + offset
            code = extract_code(sample.text)
            if code is None:
                new.append(Candidate(index=index, sample=sample, code=None, step=step))
                continue
            norm = self._norm(code)
            dup = self._seen.get(norm)
            if dup is None:
                self._seen[norm] = index
            new.append(Candidate(index=index, sample=sample, code=code, code_sha256=sha256_text(code),
                                 duplicate_of=dup, step=step))
        self.samples.extend(samples)
        self.candidates.extend(new)
        write_jsonl_atomic(self.samples_path, [s.to_json() for s in self.samples])
        return new

    # ---- views ------------------------------------------------------------------------------------
    def representative(self, index: int) -> int:
        dup = self.candidates[index].duplicate_of
        return index if dup is None else dup

    def unique(self, indices: Iterable[int] | None = None) -> list[int]:
        """Indices of the candidates that are evaluated (code, not a duplicate), in index order."""
        chosen = range(len(self.candidates)) if indices is None else indices
        return sorted({i for i in chosen if self.candidates[i].code is not None
                       and self.candidates[i].duplicate_of is None})

    def result_for(self, index: int) -> EvalResult:
        """The verdict for sample `index` (a duplicate gets its first's; timing included once timed)."""
        rep = self.representative(index)
        if rep in self.timed:
            return self.timed[rep]
        if rep in self.checked:
            return self.checked[rep]
        if self.candidates[rep].code is None:
            return EvalResult(status=Status.NO_CODE, reason=NO_CODE_REASON)
        return EvalResult(status=Status.SKIPPED, reason=SKIPPED_REASON)

    def surprisal(self, index: int, mode: str | None = None) -> float | None:
        return self.candidates[index].sample.surprisal(mode or self.options.surprisal)

    def scored(self, indices: Iterable[int] | None = None, mode: str | None = None) -> list[Scored]:
        """The checked unique candidates (all of them, or those among `indices`) as the strategies see them."""
        return [Scored(candidate=self.candidates[i], result=self.checked[i], surprisal=self.surprisal(i, mode))
                for i in self.unique(indices) if i in self.checked]

    def counts(self) -> dict[str, int]:
        """How much of the pool was evaluated: for report.json and the summary."""
        unique = self.unique()
        checked = [i for i in unique if i in self.checked]
        compiled = [i for i in checked if self.checked[i].status not in (Status.REJECTED, Status.SKIPPED)]
        return {"unique": len(unique), "compiled": len(compiled), "checked": len(checked),
                "timed": len([i for i in unique if i in self.timed]), "skipped": len(unique) - len(checked),
                "evaluated_now": self.evaluated_now, "timed_now": self.timed_now}

    # ---- evaluation -------------------------------------------------------------------------------
    def check(self, indices: Iterable[int] | None = None) -> dict[int, EvalResult]:
        """Check the unique candidates among `indices` (default: all): cached verdicts first, the rest
        through the evaluator, `--jobs` at a time. Returns index -> verdict for those asked."""
        unique = self.unique(indices)
        todo: list[int] = []
        for i in unique:
            if i in self.checked:
                continue
            cached = None if i in self._not_cached else self.cache.get("check", self._verdict_key(self.candidates[i].code))
            if cached is not None:
                self.checked[i] = EvalResult.from_json(cached)
            else:
                todo.append(i)
        if todo:
            self._backends.evaluator.prepare()  # the reference before any compile (fails fast, names the real cause)
            sources = [self.candidates[i].code for i in todo]

            def done(j: int, result: EvalResult) -> None:
                if todo[j] in self.checked:
                    return
                self.checked[todo[j]] = result
                self.evaluated_now += 1
                if not result.transient:
                    self.cache.set("check", self._verdict_key(sources[j]), result.to_json())

            for j, result in enumerate(self._backends.evaluator.check(sources, on_result=done)):
                done(j, result)
        return {i: self.checked[i] for i in unique}

    def cached_verdicts(self) -> None:
        """Load every verdict already in the cache, evaluating nothing (a lazy run starts from them)."""
        for i in self.unique():
            if i not in self.checked and i not in self._not_cached:
                cached = self.cache.get("check", self._verdict_key(self.candidates[i].code))
                if cached is not None:
                    self.checked[i] = EvalResult.from_json(cached)
                else:
                    self._not_cached.add(i)

    def time(self, indices: Sequence[int]) -> dict[int, EvalResult]:
        """Time the given (correct) candidates, one at a time; a rerun is served from the cache."""
        todo: list[int] = []
        for i in indices:
            rep = self.representative(i)
            if rep in self.timed:
                continue
            cached = self.cache.get("time", self._verdict_key(self.candidates[rep].code))
            if cached is not None:
                self.timed[rep] = EvalResult.from_json(cached)
            else:
                todo.append(rep)
        todo = list(dict.fromkeys(todo))
        if todo:
            sources = [self.candidates[i].code for i in todo]

            def done(j: int, result: EvalResult) -> None:
                self.timed[todo[j]] = result
                self.timed_now += 1
                if not result.transient:
                    self.cache.set("time", self._verdict_key(sources[j]), result.to_json())

            results = self._backends.evaluator.time(sources, [self.checked[i] for i in todo], on_result=done)
            for j, result in enumerate(results):
                if todo[j] not in self.timed:
                    done(j, result)
        return {i: self.timed[self.representative(i)] for i in indices}


__all__ = ["Pool", "RunOptions", "adapter_id", "sha256_text", "write_jsonl_atomic"]
