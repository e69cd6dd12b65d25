"""`kopt compare`: every selection strategy scored on the same K samples.

For each task and seed: build the pool (K samples, cached and shared with `kopt optimize`), check every
candidate (compare never stops early: the oracle and random need every verdict), time every
correct candidate once (the oracle needs them all; timings are cached too), then run each strategy with a
`time_fn` served from those timings, so every strategy sees the same numbers and its cost is the number of
candidates it asked to time. `random` is scored as its expected value over the correct set, not one draw.
Metrics come from `kopt.metrics`, which cites the paper beside each formula.

The scoring (`kopt/scoring.py`: `score_pool`, `ttt_budget`, `score_ttt`) and the summaries and report files
(`kopt/compare_report.py`) are pure; `run_compare` here is the only part that samples, trains and evaluates.

The TTT arm (`--ttt-steps N`: TTT with Best-of-Adaptation under a matched rollout budget):
- matched rollout budget: TTT gets at most the K samples Best-of-N gets. Its base step (step 0) is the
  pool's first ttt_k samples and each of the N steps draws ttt_k more, so (N+1)·ttt_k ≤ K; ttt_k defaults
  to K // (N+1) and must be at least 2 (leave-one-out advantages). `ttt_budget` does the arithmetic;
- it runs on its own pool: a fork of the base pool holding its first ttt_k samples (same lines, same verdicts and
  timings) in a folder of its own under the base run directory, so `kopt.ttt.adapt` can append each step's
  samples to it while the other strategies keep exactly the K base samples;
- outcome (`score_ttt`): Best-of-Adaptation ranks the steps by the sample-level fast_1 of each step's batch
  (Barnes 2026 §3.5, Algorithm 1) and keeps the best; kopt then picks the fastest correct candidate of
  that step's batch, as the oracle would within the batch. Scoring a step needs every correct candidate
  of its batch timed, so the cost is every correct candidate timed across all steps run (the base step
  included), not 1. The pick's index is a line in the TTT pool's samples file (its path is in the pick);
- equivalent K is read off the same Best-of-N curve (the base pool's K samples) as for every strategy.

The refine arm (strategy `refine`: repair rounds, kopt/refine.py) at a matched sample budget: a fork of the
base pool holding its first K - R·b samples, then R rounds of b follow-up turns each (b = K // (R + 1) unless
`--refine-k`; R = `--refine`, at least 1), so it draws no more than K samples; surprisal-top-m then selects
over every round. Its cost is every candidate timed by the rounds' picks and by the selection.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

from kopt import metrics as M
from kopt import settings as S
from kopt.compare_report import CompareResult, summarize
from kopt.errors import KoptError
from kopt.records import Progress, no_progress
from kopt.scoring import REFINE, TTT, Outcome, PoolStats, score_pool, score_ttt, ttt_budget
from kopt.selection import eligible
from kopt.ttt import TTTOptions

__all__ = ["CompareResult", "Outcome", "PoolStats", "run_compare", "samples_for", "summarize", "task_label"]


def task_label(task: Any, all_tasks: Sequence[Any]) -> str:
    """A short unique name for a task: its name, or its folder's name for `folder/task.py` files."""
    name = task.name
    if name == "task":
        name = Path(task.path).parent.name
    same = [t for t in all_tasks if t is not task and t.name == task.name and Path(t.path).parent.name == name]
    if same:
        name = f"{Path(task.path).parent.name}/{task.name}"
    return name


def samples_for(samples: Path | None, task: Any, label: str, target: str, n_tasks: int) -> Path | None:
    """The samples file for one task.

    `--samples FILE` serves a single task. `--samples DIR` holds one file per task: `DIR/<task>.jsonl`, or
    `DIR/<task>/samples_<target>.jsonl` (the layout of kopt's examples/), where <task> is the task's name
    or, for a `folder/task.py` file, the folder's name.
    """
    if samples is None:
        return None
    if samples.is_dir():
        names = dict.fromkeys([label, task.name, Path(task.path).parent.name])
        tried = []
        for n in names:
            for cand in (samples / f"{n}.jsonl", samples / n / f"samples_{target}.jsonl"):
                tried.append(cand)
                if cand.is_file():
                    return cand
        raise KoptError(f"no samples file for task {label!r} in {samples}",
                        f"expected one of: {', '.join(str(t) for t in tried[:2])}")
    if n_tasks > 1:
        raise KoptError(f"--samples {samples} is one file but there are {n_tasks} tasks",
                        "pass --samples DIR holding <task name>.jsonl for each task")
    return samples


def _check_ttt(run: Any, ttt: TTTOptions | None, strategies: Sequence[str]) -> int | None:
    """Refuse a TTT arm that cannot run before anything is sampled; return ttt_k (None without ttt)."""
    if TTT not in strategies:
        return None
    if ttt is None or ttt.ttt_steps < 1:
        raise KoptError("strategy ttt needs --ttt-steps", "add --ttt-steps 1 (or 2) with --sampler hf|vllm --model DIR")
    from kopt.samplers import default_sampler, sampler_class
    from kopt.ttt import require_trainable

    require_trainable(sampler_class(run.sampler or default_sampler(run.sampler_params())), run.model)
    return ttt_budget(run.k, ttt.ttt_steps, ttt.ttt_k)


def _ttt_dir(base_run_dir: Path, ttt: TTTOptions, ttt_k: int) -> Path:
    ident = json.dumps({"steps": ttt.ttt_steps, "lr": ttt.ttt_lr, "rank": ttt.lora_rank, "k": ttt_k,
                        "patience": ttt.ttt_patience}, sort_keys=True)
    import hashlib

    return base_run_dir / f"compare-ttt-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


def run_compare(
    tasks: Sequence[Any],
    run: Any,
    *,
    seeds: Sequence[int],
    strategies: Sequence[str],
    top_m: int = 3,
    progress: Progress = no_progress,
    cache: Any = None,
    ttt: TTTOptions | None = None,
    warn: Callable[[str], None] | None = None,
    baseline: str = M.DEFAULT_BASELINE,
    refine: tuple[int, int | None] = (1, None),
) -> CompareResult:
    """Build each (task, seed) pool, check all of it and time every correct candidate once (the oracle and
    random need every verdict, so compare never stops early), then score every strategy on it.

    With "ttt" in `strategies`, TTT (kopt/ttt.py) then runs on a fork of the pool holding its first ttt_k
    samples (see the module docstring: matched rollout budget, outcome, cost)."""
    from kopt import ttt as ttt_mod
    from kopt.cache import Cache
    from kopt.evaluator import resolve_target
    from kopt.pool import Pool

    warn = warn or (lambda msg: None)
    if not tasks:
        raise KoptError("no tasks to compare", "pass task files, directories or --kernelbench DIR --ids ...")
    S.check("top_m", top_m)
    ttt_k = _check_ttt(run, ttt, strategies)
    if REFINE in strategies:
        from kopt.refine import matched_budget

        matched_budget(run.k, refine[0], refine[1])  # refuse a K too small before anything is sampled
    note = ttt_mod.oversharpening_note(ttt.ttt_steps) if ttt_k is not None and ttt is not None else None
    if note:
        warn(note)
    target = resolve_target(run.target)
    own_cache = cache is None
    cache = cache or Cache(enabled=not run.no_cache)
    labels = [task_label(t, tasks) for t in tasks]
    pools: list[PoolStats] = []
    outcomes: list[Outcome] = []
    evaluated = timed = 0
    try:
        for task, label in zip(tasks, labels):
            samples = samples_for(run.samples, task, label, target, len(tasks))
            for seed in seeds:
                opts = dataclasses.replace(run, seed=int(seed), samples=samples)
                # One pool (and sampler) per (task, seed): the sampler's parameters carry the seed.
                with Pool(task, opts, cache=cache, progress=progress) as pool:
                    pool.fill()
                    pool.check()
                    scored = pool.scored(mode=run.surprisal)
                    good = [s.index for s in eligible(scored)]
                    timings = pool.time(good) if good else {}
                    k = len(pool.samples)
                    stats, outs = score_pool(
                        label, int(seed), scored, timings,
                        [pool.result_for(i) for i in range(k)],
                        [s.surprisal(run.surprisal) for s in pool.samples],
                        [s.num_tokens for s in pool.samples],
                        strategies, top_m=top_m, samples_path=str(pool.samples_path), baseline=baseline,
                    )
                    evaluated += pool.evaluated_now
                    timed += pool.timed_now
                    if ttt_k is not None and ttt is not None:
                        tpool = pool.fork(ttt_k, _ttt_dir(pool.run_dir, ttt, ttt_k))
                        report = ttt_mod.adapt(tpool, dataclasses.replace(ttt, ttt_k=ttt_k), progress=progress,
                                               warn=warn)
                        n = len(tpool.candidates)
                        outs.append(score_ttt(
                            label, int(seed), report, [c.step for c in tpool.candidates],
                            [tpool.representative(i) for i in range(n)], dict(tpool.timed),
                            k=k, ttt_k=ttt_k, samples_path=str(tpool.samples_path), baseline=baseline))
                        evaluated += tpool.evaluated_now
                        timed += tpool.timed_now
                    if REFINE in strategies:
                        from kopt import refine as refine_mod

                        base_k, per_round = refine_mod.matched_budget(k, refine[0], refine[1])
                        rpool = pool.fork(base_k, pool.run_dir / f"compare-refine-{refine[0]}x{per_round}")
                        rep = refine_mod.run(rpool, max(1, refine[0]), per_round, top_m=top_m, progress=progress)
                        outs.append(refine_mod.compare_outcome(rpool, rep, label, int(seed), k=k, top_m=top_m,
                                                               baseline=baseline))
                        evaluated += rpool.evaluated_now
                        timed += rpool.timed_now
                pools.append(stats)
                outcomes.extend(outs)
    finally:
        if own_cache:
            cache.close()
    params: dict[str, Any] = {"target": target, "surprisal": run.surprisal, "temperature": run.temperature,
                              "sampler": run.sampler, "model": run.model, "baseline": baseline,
                              "evaluation": "exhaustive (every strategy is scored on every verdict)"}
    if ttt_k is not None and ttt is not None:
        params["ttt"] = {"steps": ttt.ttt_steps, "ttt_k": ttt_k, "lr": ttt.ttt_lr, "lora_rank": ttt.lora_rank,
                         "patience": ttt.ttt_patience, "budget_samples": (ttt.ttt_steps + 1) * ttt_k, "k": run.k,
                         "rule": "(steps + 1) * ttt_k <= k"}
    if REFINE in strategies:
        from kopt.refine import matched_budget

        base_k, per_round = matched_budget(run.k, refine[0], refine[1])
        params["refine"] = {"rounds": max(1, refine[0]), "first_turns": base_k, "per_round": per_round, "k": run.k,
                            "rule": "first turns + rounds * per_round <= k"}
    return summarize(pools, outcomes, strategies, k=run.k, seeds=seeds, top_m=top_m, tasks=labels,
                     evaluated_now=evaluated, timed_now=timed, params=params)
