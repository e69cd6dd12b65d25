"""`kopt optimize`: task -> prompt -> sampler -> candidates -> evaluator -> selection -> (TTT) -> output.

The pool (kopt/pool.py) draws K samples (cached per sample) and extracts and deduplicates their code. For the
surprisal strategies the candidates are then checked in order of descending surprisal and checking stops as
soon as the selection has what it needs (kopt/lazy.py: the pick is the one exhaustive evaluation makes);
`--exhaustive`, the other strategies, `--adaptive` and TTT check every unique candidate. The selection times
only what the strategy asks for (Barnes 2026, arXiv 2602.07670: timing the 3 most surprising matched the
oracle at K = 64), and the winner is written to kernels/<task>/.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from kopt import metrics
from kopt import settings as S
from kopt.cache import Cache
from kopt.errors import KoptError
from kopt.pool import Pool, RunOptions
from kopt.records import Progress, Selection, Status, no_progress
from kopt.selection import WEAK_SIGNAL_NOTE
from kopt.task import Task
from kopt.ttt import TTTOptions

log = logging.getLogger("kopt")

# Warnings go to the CLI through this callback (the core never prints).
Warn = Callable[[str], None]


@dataclass(frozen=True)
class OptimizeOptions:
    run: RunOptions = field(default_factory=RunOptions)
    select: str = S.default("select")
    top_m: int = S.default("top_m")
    adaptive: bool = False
    exhaustive: bool = False
    baseline: str = S.default("baseline")
    out: Path | None = None
    force: bool = False
    ttt: TTTOptions = field(default_factory=TTTOptions)
    refine: int = S.default("refine")  # repair rounds (kopt/refine.py)
    refine_k: int | None = None  # follow-ups per round (None: K/2)
    refine_template: Path | None = None

    def __post_init__(self) -> None:
        S.check_fields(self, [f.name for f in fields(self)])

    @classmethod
    def from_settings(cls, values: dict[str, Any], **overrides: Any) -> OptimizeOptions:
        """From `kopt optimize`'s resolved settings (kopt.config.settings_for)."""
        kw = {f.name: values[f.name] for f in fields(cls) if f.name in values}
        run = RunOptions.from_settings(values, enable_lora=values.get("ttt_steps", 0) > 0,
                                       max_lora_rank=values.get("lora_rank", S.default("lora_rank")))
        kw.update(run=run, ttt=TTTOptions.from_settings(values))
        kw.update(overrides)
        return cls(**kw)


@dataclass(frozen=True)
class OptimizeResult:
    """What `kopt optimize` did: the report (report.json's content) and where it was written."""

    report: dict[str, Any]
    out_dir: Path | None
    selection: Selection
    exit_code: int


def select_in_pool(pool: Pool, options: OptimizeOptions) -> tuple[Selection, dict[str, Any]]:
    """Check what the selection needs (surprisal-ordered with early stopping, or all) and select."""
    from kopt import lazy

    if options.ttt.ttt_steps > 0:
        pool.check()  # TTT rewards needed every verdict: already there
    pool.cached_verdicts()  # a rerun starts from every verdict already known
    surprisal, scored = {i: pool.surprisal(i) for i in pool.unique()}, pool.scored
    if options.refine > 0:  # several rounds: surprisal is compared by rank within each round (kopt/refine.py)
        from kopt import refine

        surprisal, scored = refine.comparable_surprisal(pool), refine.scored_across_rounds(pool)
    sel, how = lazy.evaluate_and_select(
        options.select, surprisal, pool.checked, pool.check, scored,
        pool.time, top_m=options.top_m, seed=options.run.seed, jobs=options.run.jobs, adaptive=options.adaptive,
        exhaustive=options.exhaustive or options.ttt.ttt_steps > 0 or options.refine > 0)
    if how == lazy.SURPRISAL_ORDERED:
        # The spread was measured on what was evaluated (the resolved prefix), not the whole pool: say so.
        sel = dataclasses.replace(sel, notes=tuple(
            f"{x}, measured on the candidates evaluated (--exhaustive measures the whole pool)"
            if x.startswith(WEAK_SIGNAL_NOTE) else x for x in sel.notes))
        return sel, {"mode": how, "why": f"{options.select} needs only the most surprising correct candidates; "
                     "--exhaustive evaluates every candidate"}
    return sel, {"mode": "exhaustive", "why": "TTT" if options.ttt.ttt_steps > 0 else (
        "refine" if options.refine > 0 else how)}


def _status_counts(pool: Pool) -> Counter[str]:
    return Counter(pool.result_for(i).status.value for i in range(len(pool.candidates)))


def _most_common_compile_error(pool: Pool) -> str | None:
    errors = Counter(r.reason.splitlines()[0] if r.reason else "" for i, r in pool.checked.items()
                     if r.status is Status.COMPILE_ERROR)
    return errors.most_common(1)[0][0] if errors else None


def optimize(task: Task, options: OptimizeOptions, progress: Progress = no_progress, warn: Warn = log.warning,
             cache: Cache | None = None) -> OptimizeResult:
    """The whole job for one task. Raises KoptError for anything the user can fix."""
    from kopt import output, ttt

    out_dir = options.out or Path("kernels") / task.name
    output.check_writable(out_dir, options.force)  # refuse before spending anything
    note = ttt.oversharpening_note(options.ttt.ttt_steps)
    if note:
        warn(note)
    with Pool(task, options.run, cache=cache, progress=progress) as pool:
        for n in pool.device_notes:
            warn(n)
        pool.fill()
        ttt_report = None
        if options.ttt.ttt_steps > 0:
            ttt.require_trainable(pool.backend, options.run.model)
            pool.check()
            ttt_report = ttt.adapt(pool, options.ttt, progress=progress, warn=warn)
        refine_report = None
        if options.refine > 0:
            from kopt import refine

            refine_report = refine.run(pool, options.refine, options.refine_k or refine.default_budget(options.run.k),
                                       options.refine_template, top_m=options.top_m, progress=progress)
        sel, evaluation = select_in_pool(pool, options)
        for n in sel.notes:
            warn(n)
        report = output.build_report(pool, options, sel, ttt_report)
        report["evaluation"] = {**evaluation, **pool.counts()}
        report["baseline"] = options.baseline
        if pool.devices:
            report["devices"] = [{"id": d.id, "name": d.name} for d in pool.devices]
        if refine_report is not None:
            report["refine"] = refine_report
        pool.cache.save_run_stats(f"optimize {task.target}")
        if sel.winner is None:
            raise KoptError(*output.failure_message(report, output.write_failure(pool, report)))
        r = pool.result_for(sel.winner)
        report["winner"] = {**report["winner"], "speedup_vs_eager": r.speedup,
                            "compile_reference_runtime_ms": r.compile_reference_runtime_ms,
                            "speedup_vs_compile": r.speedup_vs_compile,
                            "speedup_vs_baseline": metrics.speedup_vs(r, options.baseline)}
        written = output.write_kernel_dir(out_dir, pool, report, force=options.force)
        report = json.loads((written / "report.json").read_text())
        s = report["winner"]["speedup_vs_baseline"]
        if s is not None and s <= 1.0:
            what = "the reference" if r.speedup_vs_compile is None or options.baseline == "eager" else (
                "the reference under torch.compile" if options.baseline == "compile" else
                "the faster of eager and torch.compile")
            warn(f"the winner is slower than {what} ({s:.2f}x); it is recorded, keep the PyTorch module "
                 "unless you need the kernel for another reason")
        return OptimizeResult(report=report, out_dir=written, selection=sel, exit_code=0)


__all__ = ["OptimizeOptions", "OptimizeResult", "RunOptions", "optimize", "select_in_pool"]
