"""`kopt compare`'s results across pools: per-strategy summaries (mean, seed spread, equivalent K) and the
report files (results.json, results.csv, PNG plots, report.md)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from kopt import metrics as M
from kopt.scoring import TTT, Outcome, PoolStats


@dataclass(frozen=True)
class StrategySummary:
    strategy: str
    fast_1: M.Aggregate
    mean_speedup: M.Aggregate  # over (task, seed) pools where the strategy had a winner
    geomean_speedup: float | None
    correctness: M.Aggregate
    cost: M.Aggregate
    equivalent_k: M.EquivalentK | None
    picks: tuple[Outcome, ...]

    @property
    def runs(self) -> list[Mapping[str, Any]]:
        """ttt: one entry per (task, seed) with the budget, per-step scores and the chosen step."""
        return [o.detail for o in self.picks if o.detail is not None]

    def to_json(self) -> dict[str, Any]:
        d = {
            "fast_1": self.fast_1.to_json(),
            "mean_speedup": self.mean_speedup.to_json(),
            "geomean_speedup": self.geomean_speedup,
            "correctness": self.correctness.to_json(),
            "cost": self.cost.to_json(),
            "equivalent_k": self.equivalent_k.to_json() if self.equivalent_k else None,
            "picks": [o.to_json() for o in self.picks],
        }
        if self.runs:
            d["runs"] = [dict(r) for r in self.runs]
        return d


@dataclass(frozen=True)
class CompareResult:
    k: int
    seeds: tuple[int, ...]
    top_m: int
    tasks: tuple[str, ...]
    strategies: tuple[StrategySummary, ...]
    pools: tuple[PoolStats, ...]
    curve: tuple[tuple[int, float], ...]  # Best-of-N fast_1 curve averaged over pools
    evaluated_now: int = 0  # verdicts computed in this run (0 when everything came from the cache)
    timed_now: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)

    def strategy(self, name: str) -> StrategySummary:
        return next(s for s in self.strategies if s.strategy == name)

    def to_json(self) -> dict[str, Any]:
        pools = self.pools
        quartiles = _mean_quartiles(pools)
        return {
            "k": self.k,
            "seeds": list(self.seeds),
            "top_m": self.top_m,
            "tasks": list(self.tasks),
            "params": dict(self.params),
            "strategies": {s.strategy: s.to_json() for s in self.strategies},
            "best_of_n": [{"k": k, "fast_1": v} for k, v in self.curve],
            "samples": {
                "sample_fast_1": M.aggregate({(p.task, p.seed): p.sample_fast_1 for p in pools}).to_json(),
                "correctness": M.aggregate({(p.task, p.seed): p.sample_correctness for p in pools}).to_json(),
                "spearman_nll_speedup": M.aggregate({(p.task, p.seed): p.spearman for p in pools}).to_json(),
                "partial_nll_speedup_given_tokens": M.aggregate(
                    {(p.task, p.seed): p.partial for p in pools}).to_json(),
                "quartiles": quartiles,
            },
            "pools": [p.to_json() for p in pools],
            "evaluated_now": self.evaluated_now,
            "timed_now": self.timed_now,
        }


def _mean_quartiles(pools: Sequence[PoolStats]) -> list[dict[str, Any]]:
    """Average each quartile's numbers over pools (quartiles are taken within a pool: surprisal scales
    differ between tasks)."""
    out = []
    for q in range(1, 5):
        rows = [x for p in pools for x in p.quartiles if x.quartile == q]
        if not rows:
            continue
        toks = [x.mean_tokens for x in rows if x.mean_tokens is not None]
        out.append({"quartile": q, "pools": len(rows), "n": sum(x.n for x in rows),
                    "fast_1": M.mean(x.fast_1 for x in rows), "mean_speedup": M.mean(x.mean_speedup for x in rows),
                    "mean_tokens": M.mean(toks)})
    return out


def summarize(pools: Sequence[PoolStats], outcomes: Sequence[Outcome], strategies: Sequence[str], *, k: int,
              seeds: Sequence[int], top_m: int, tasks: Sequence[str], **extra: Any) -> CompareResult:
    curves = [list(p.curve) for p in pools if p.curve]
    curve = M.mean_curve(curves) if curves else []
    summaries = []
    for name in strategies:
        mine = [o for o in outcomes if o.strategy == name]
        f1 = M.aggregate({(o.task, o.seed): o.fast_1 for o in mine})
        won = [o for o in mine if o.speedup is not None and (o.correct or 0) > 0]
        summaries.append(StrategySummary(
            strategy=name,
            fast_1=f1,
            mean_speedup=M.aggregate({(o.task, o.seed): o.speedup for o in won}),
            geomean_speedup=M.geomean(o.speedup for o in won),
            correctness=M.aggregate({(o.task, o.seed): o.correct for o in mine}),
            cost=M.aggregate({(o.task, o.seed): o.cost for o in mine if o.fast_1 is not None}),
            equivalent_k=M.equivalent_k(f1.mean, curve) if f1.mean is not None and curve else None,
            picks=tuple(mine),
        ))
    return CompareResult(k=k, seeds=tuple(seeds), top_m=top_m, tasks=tuple(tasks), strategies=tuple(summaries),
                         pools=tuple(pools), curve=tuple(curve), **extra)


def write_report(result: CompareResult, out_dir: Path) -> list[Path]:
    """results.json, results.csv, the PNG plots and report.md embedding them, under `out_dir`."""
    import csv

    from kopt import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    written = []
    p = out_dir / "results.json"
    p.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    written.append(p)
    p = out_dir / "results.csv"
    with p.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["strategy", "task", "seed", "index", "speedup", "fast_1", "correct", "cost", "notes"])
        for s in result.strategies:
            for o in s.picks:
                w.writerow([o.strategy, o.task, o.seed, "" if o.pick is None else o.pick,
                            "" if o.speedup is None else f"{o.speedup:.6g}",
                            "" if o.fast_1 is None else f"{o.fast_1:.6g}",
                            "" if o.correct is None else f"{o.correct:.6g}", f"{o.cost:.6g}", "; ".join(o.notes)])
    written.append(p)
    scaling = plots.plot_scaling(result, out_dir / "scaling.png")
    bars = plots.plot_strategies(result, out_dir / "strategies.png")
    written += [scaling, bars]
    p = out_dir / "report.md"
    p.write_text(report_markdown(result, scaling.name, bars.name), encoding="utf-8")
    written.append(p)
    return written


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def report_markdown(result: CompareResult, scaling_png: str, bars_png: str) -> str:
    lines = [
        "# kopt compare",
        "",
        f"{len(result.tasks)} task(s) x {len(result.seeds)} seed(s) ({', '.join(map(str, result.seeds))}), "
        f"K={result.k}, top-m={result.top_m}, target {result.params.get('target', '')}. Every strategy is scored "
        "on the same pool; cost = candidates it had to time (random: expected; ttt: every correct candidate "
        "of every TTT step). Method: Barnes 2026, arXiv 2602.07670.",
        "",
        "| strategy | fast_1 | seed spread (std) | mean speedup | geomean speedup | correct | cost | equivalent K |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in result.strategies:
        lines.append(
            f"| {s.strategy} | {_fmt(s.fast_1.mean)} | {_fmt(s.fast_1.seed_std)} | {_fmt(s.mean_speedup.mean, '.2f')} | "
            f"{_fmt(s.geomean_speedup, '.2f')} | {_fmt(s.correctness.mean)} | {_fmt(s.cost.mean, '.2f')} | "
            f"{s.equivalent_k if s.equivalent_k else '-'} |")
    samples = result.to_json()["samples"]
    lines += [
        "",
        f"![Best-of-N scaling curve]({scaling_png})",
        "",
        f"![fast_1 and mean speedup per strategy]({bars_png})",
        "",
        "## Samples",
        "",
        f"- sample-level fast_1: {_fmt(samples['sample_fast_1']['mean'])}; correctness "
        f"{_fmt(samples['correctness']['mean'])}",
        f"- Spearman rho(NLL, speedup) over correct samples: {_fmt(samples['spearman_nll_speedup']['mean'])}; "
        f"partial, controlling for token count: {_fmt(samples['partial_nll_speedup_given_tokens']['mean'])}",
        "",
        "| surprisal quartile | samples | fast_1 | mean speedup | mean tokens |",
        "|---|---|---|---|---|",
    ]
    for q in samples["quartiles"]:
        lines.append(f"| Q{q['quartile']} | {q['n']} | {_fmt(q['fast_1'])} | {_fmt(q['mean_speedup'], '.2f')} | "
                     f"{_fmt(q['mean_tokens'], '.0f')} |")
    lines += ["", "## Pools", "", "| task | seed | K | unique | correct | logprob std | samples |",
              "|---|---|---|---|---|---|---|"]
    for p in result.pools:
        lines.append(f"| {p.task} | {p.seed} | {p.k} | {p.unique} | {p.correct} | {_fmt(p.logprob_std, '.2f')} | "
                     f"`{p.samples_path}` |")
    lines += ttt_markdown(result)
    lines += ["", "Picks per strategy, task and seed: results.csv / results.json (\"index\" = line in the samples file;",
              "for ttt, in the TTT run's own samples file, `samples_path` in its pick).", ""]
    return "\n".join(lines)


def ttt_markdown(result: CompareResult) -> list[str]:
    """The report's TTT section: the matched budget, how the outcome and cost are defined, per-step scores."""
    s = next((x for x in result.strategies if x.strategy == TTT), None)
    if s is None:
        return []
    b = result.params.get("ttt") or {}
    lines = [
        "",
        "## TTT with Best-of-Adaptation",
        "",
        f"Matched rollout budget: TTT draws no more samples than Best-of-N's K={result.k}. Step 0 (the base "
        f"model) is the first ttt_k={b.get('ttt_k')} samples of the same pool, and each of the "
        f"{b.get('steps')} step(s) trains one LoRA GRPO step (lr {b.get('lr')}, rank {b.get('lora_rank')}) on the "
        f"previous batch and draws ttt_k more: (steps + 1) x ttt_k = {b.get('budget_samples')} <= K. "
        f"Best-of-Adaptation (patience {b.get('patience')}) keeps the step whose batch has the best sample-level "
        "fast_1 (Barnes 2026 §3.5); the ttt pick is the fastest correct candidate of that step's batch. Its cost "
        "is every correct candidate timed across all steps run, which scoring the steps requires. TTT runs on "
        "its own copy of the pool, so the other strategies are scored on exactly the K base samples.",
        "",
        "| task | seed | ttt_k | samples used | step scores (fast_1) | chosen step | stopped | pick | speedup | cost |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in s.picks:
        d = o.detail or {}
        scores = ", ".join(f"{st['step']}: {_fmt(st['score'])}" for st in d.get("steps", []))
        lines.append(f"| {o.task} | {o.seed} | {d.get('budget', {}).get('ttt_k', '-')} | "
                     f"{d.get('budget', {}).get('samples_used', '-')} | {scores} | {d.get('chosen_step', '-')} | "
                     f"{d.get('stopped', '-')} | {'-' if o.pick is None else o.pick} | {_fmt(o.speedup, '.2f')} | "
                     f"{o.cost:g} |")
    return lines
