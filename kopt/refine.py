"""Repair rounds (`kopt optimize --refine N`): the evaluator's verdict goes back to the model for another turn.

After the pool is evaluated, each round picks candidates worth another try, asks the model once more about
each (a follow-up turn: the original prompt, the candidate's answer, and a feedback block rendered from its
verdict by templates/refine.txt or `--refine-template`), and adds the answers to the same pool, where they
are checked like any sample. The winner is then selected over every round.

What is worth another try (at most `--refine-k` per round, default K/2): every failure (did not compile,
wrong results, runtime error, timeout), most surprising first, then the fastest correct ones ("make it
faster"; at least one slot goes to the fastest when there is one). Surprisal decides which failures because
it is the paper's signal for where the model tried something unusual (Barnes 2026, arXiv 2602.07670, §4.5):
an unusual idea that broke on a detail is the repair worth paying for. Only the m most surprising correct
candidates are timed (what the selection times anyway, `--top-m`), so "fastest" means fastest of those.
A candidate is a parent at most once; a follow-up is always about one answer (the original prompt, that
answer, its feedback), never the whole chain, so contexts stay the size of one exchange.

Feedback says only what kopt's verdict says about the candidate's own code, in kopt's words: the status; for
a failed compile the first errors located on the candidate's own source lines (the evaluator's reason
already quotes only those and masks anything the candidate did not write; kopt/evaluator/build.py
`compile_reason`), never the raw compiler log; for wrong results the max absolute error, the tolerance and
the output shapes; for correct ones the runtime and the speedups against eager and torch.compile. Paths,
long hex strings (nonces, hashes) and kopt's internal wording are never passed on: a reason kopt does not
know how to summarise becomes its status alone. Rejections by the static gate get no follow-up at all, so
feedback cannot teach a candidate what the gate looks for (docs/evaluator.md).

Surprisal across rounds. A follow-up's log-probabilities are conditioned on its parent's answer and the
feedback, so a repair that copies most of its parent is far less surprising per token than any first-turn
sample; raw surprisal from different rounds is not on one scale. The paper's signal is a rank among samples
of one distribution (its σ is intra-task, §5.2), so kopt ranks within each round and compares rounds by
that rank: a candidate's comparable surprisal is its mid-rank percentile within its round, (rank + 0.5)/n
with rank 0 the least surprising. Reports keep the raw surprisal.
"""

from __future__ import annotations

import re
import string
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from kopt.errors import KoptError
from kopt.pool import Pool
from kopt.records import EvalResult, Progress, Scored, Status, no_progress

TEMPLATE = "refine.txt"
PLACEHOLDERS = ("status", "details")
SECTIONS = ("[failed]", "[correct]")
REPAIRABLE = (Status.COMPILE_ERROR, Status.INCORRECT, Status.RUNTIME_ERROR, Status.TIMEOUT)
MAX_COMPILE_LINES = 3
MAX_LINE_CHARS = 300

STATUS_TEXT = {
    Status.COMPILE_ERROR: "it does not compile",
    Status.INCORRECT: "it compiles and runs, but its outputs are wrong",
    Status.RUNTIME_ERROR: "it compiles, but raises an error when run",
    Status.TIMEOUT: "it ran past the time limit",
    Status.CORRECT: "it is correct",
}

_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.+@~-]+){2,}[\\/]?")
_HEX = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{16,}(?![0-9A-Fa-f])")
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf"


def default_budget(k: int) -> int:
    """Follow-ups per round when --refine-k is not given: half the pool, so a round costs half a pool."""
    return max(1, k // 2)


def _scrub(line: str) -> str:
    line = _HEX.sub("…", _PATH.sub("…", line))
    return line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 1] + "…"


def _incorrect_details(reason: str) -> list[str]:
    out: list[str] = []
    if m := re.search(rf"max abs err ({_NUM}) \(atol ({_NUM}), rtol ({_NUM})\)", reason):
        out += [f"- max absolute error: {m.group(1)}", f"- tolerance: atol {m.group(2)}, rtol {m.group(3)}"]
    if m := re.search(r"differs at (\d+) of (\d+) elements", reason):
        out.append(f"- wrong elements: {m.group(1)} of {m.group(2)}")
    if m := re.search(r"has shape (\([\d, ]*\)), expected (\([\d, ]*\))", reason):
        out.append(f"- output shape: {m.group(1)}, expected {m.group(2)}")
    if m := re.search(r"has dtype (torch\.\w+), expected (torch\.\w+)", reason):
        out.append(f"- output dtype: {m.group(1)}, expected {m.group(2)}")
    if m := re.search(rf"normalised error ({_NUM}) over ({_NUM})", reason):
        out.append(f"- normalised error ||a-b||/||b||: {m.group(1)}, tolerance {m.group(2)}")
    if m := re.search(r"forward returned (\d+) tensor\(s\), expected (\d+)", reason):
        out.append(f"- forward returned {m.group(1)} tensor(s), expected {m.group(2)}")
    if "non-finite values where the reference is finite" in reason or "NaN/Inf pattern" in reason:
        out.append("- NaN or Inf values where the reference has finite ones")
    if "was modified by forward" in reason:
        out.append("- forward wrote into its inputs (in-place writes to inputs are not allowed)")
    return out or ["- the outputs do not match the reference"]


def details(result: EvalResult) -> list[str]:
    """The facts a follow-up turn may state about one verdict, one "- " line each (see the module doc)."""
    s, reason = result.status, result.reason or ""
    if s is Status.COMPILE_ERROR:
        if reason.startswith("compile error: "):
            return ["- " + _scrub(x) for x in reason[len("compile error: "):].split(" | ")[:MAX_COMPILE_LINES]]
        if reason.startswith("Python syntax error"):
            return ["- " + _scrub(reason.splitlines()[0])]
        return ["- the compiler reported errors, but none located on your own source lines"]
    if s is Status.INCORRECT:
        return _incorrect_details(reason)
    if s in (Status.RUNTIME_ERROR, Status.TIMEOUT):
        return ["- " + _scrub(reason.splitlines()[0])] if reason else []
    if s is Status.CORRECT:
        if result.runtime_ms is None:
            return ["- it was not timed"]
        out = [f"- runtime: {result.runtime_ms:.4g} ms per call"]
        if result.speedup is not None:
            out.append(f"- speedup against eager PyTorch: {result.speedup:.3g}x")
        if result.speedup_vs_compile is not None:
            out.append(f"- speedup against torch.compile: {result.speedup_vs_compile:.3g}x")
        return out
    return []


def load_template(path: Path | None) -> tuple[dict[str, string.Template], str]:
    """The feedback template's two sections ([failed], [correct]) and where it came from."""
    if path is None:
        from kopt.resources import read_template

        text, origin = read_template(TEMPLATE), TEMPLATE
    else:
        try:
            text, origin = Path(path).read_text(encoding="utf-8"), str(path)
        except OSError as e:
            raise KoptError(f"cannot read refine template {path}: {e.strerror or e}",
                            "pass an existing text file to --refine-template (see templates/refine.txt)") from None
    lines = text.splitlines()
    marks = [i for i, ln in enumerate(lines) if ln.strip() in SECTIONS]
    if sorted(lines[i].strip() for i in marks) != sorted(SECTIONS):
        raise KoptError(f"refine template {origin} needs one [failed] and one [correct] section",
                        "start each section with a line that reads exactly [failed] or [correct]")
    sections = {}
    for j, i in enumerate(marks):
        end = marks[j + 1] if j + 1 < len(marks) else len(lines)
        sections[lines[i].strip()[1:-1]] = string.Template("\n".join(lines[i + 1:end]).strip("\n"))
    return sections, origin


def render(result: EvalResult, sections: dict[str, string.Template], origin: str = TEMPLATE) -> str:
    """The feedback block for one verdict."""
    tmpl = sections["correct" if result.correct else "failed"]
    try:
        return tmpl.substitute(status=STATUS_TEXT.get(result.status, result.status.value),
                               details="\n".join(details(result)))
    except (KeyError, ValueError) as e:
        raise KoptError(f"refine template {origin} has a bad placeholder ({e})",
                        f"use only {', '.join('$' + p for p in PLACEHOLDERS)}; write a literal dollar as $$") from None


# ---- surprisal across rounds --------------------------------------------------------------------------


def comparable_surprisal(pool: Pool, indices: list[int] | None = None) -> dict[int, float | None]:
    """Each unique candidate's mid-rank percentile of surprisal within its own round (see the module doc)."""
    by_round: dict[int, list[tuple[float, int]]] = {}
    out: dict[int, float | None] = {}
    for i in pool.unique(indices):
        s = pool.surprisal(i)
        out[i] = None
        if s is not None:
            by_round.setdefault(pool.candidates[i].sample.round, []).append((s, i))
    for members in by_round.values():
        members.sort()
        n = len(members)
        for rank, (_, i) in enumerate(members):
            out[i] = (rank + 0.5) / n
    return out


def scored_across_rounds(pool: Pool) -> Callable[..., list[Scored]]:
    """pool.scored with the comparable surprisal in place of the raw one (what the strategies rank by)."""
    def scored(indices=None, mode=None) -> list[Scored]:
        comparable = comparable_surprisal(pool)
        return [replace(x, surprisal=comparable.get(x.index)) for x in pool.scored(indices, mode)]

    return scored


# ---- one round -----------------------------------------------------------------------------------------


def pick(pool: Pool, considered: list[int], budget: int, top_m: int, timed: set[int] | None = None) -> list[int]:
    """The parents of the next round among `considered` (checked, unique): failures most surprising first, then
    the fastest timed correct ones; at least one of those when there is one and the budget allows two."""
    timed = set() if timed is None else timed  # what this asked to time is added to it
    comparable = comparable_surprisal(pool)
    rank = lambda i: (-(comparable.get(i) if comparable.get(i) is not None else -1.0), i)  # noqa: E731
    failures = sorted((i for i in considered if pool.checked[i].status in REPAIRABLE), key=rank)
    correct = sorted((i for i in considered if pool.checked[i].correct), key=rank)[:top_m]
    if correct:
        pool.time(correct)
        timed.update(correct)
    fastest = sorted((i for i in correct if pool.result_for(i).correct and pool.result_for(i).runtime_ms is not None),
                     key=lambda i: (pool.result_for(i).runtime_ms, i))
    n_fast = min(len(fastest), max(budget - len(failures), 1 if budget >= 2 else 0))
    return (failures[: budget - n_fast] + fastest[:n_fast])[:budget]


def _check_recorded(pool: Pool, sample, index: int, round_: int, parent: int) -> None:
    """A recorded sample (a backend whose file is the cache: replay) must be this round's answer to `parent`."""
    if not pool.backend.cacheable and (sample.round, sample.parent) != (round_, parent):
        what = (f"round {sample.round}'s follow-up to sample {sample.parent}" if sample.round else
                "a first-turn sample")
        raise KoptError(f"samples file line {index + 1} is {what}, but this run asks for round {round_}'s "
                        f"follow-up to sample {parent}",
                        "replay a samples.jsonl written by a refine run with the same --k, --refine, --refine-k "
                        "and --top-m")


def run(pool: Pool, rounds: int, budget: int, template: Path | None = None, *, top_m: int = 3,
        progress: Progress = no_progress) -> dict[str, Any]:
    """Run `rounds` repair rounds on an already filled pool; report.json's "refine" entry."""
    if not pool.backend.follow_ups:
        raise KoptError(f"the {pool.sampler_name} sampler cannot answer follow-up turns",
                        "use --sampler openai, vllm or hf (or replay a refine run's samples.jsonl), or drop --refine")
    sections, origin = load_template(template)
    parents: set[int] = set()
    timed: set[int] = set()
    report: dict[str, Any] = {"rounds": [], "budget": budget, "timed": [],
                              "surprisal_across_rounds": "mid-rank percentile within each round"}
    for r in range(1, rounds + 1):
        t_start = time.perf_counter()
        pool.check()  # the round before this one (the first turns for round 1): usually checked already
        t0 = time.perf_counter()
        considered = [i for i in pool.unique() if i not in parents and i in pool.checked]
        chosen = pick(pool, considered, budget, top_m, timed)
        report["timed"] = sorted(timed)
        if not chosen:
            report["rounds"].append({"round": r, "follow_ups": 0, "why": "nothing to repair or speed up"})
            break
        start = len(pool.samples)
        requests = []
        for j, p in enumerate(chosen):
            feedback = render(pool.result_for(p), sections, origin)
            requests.append((start + j, pool.prompt.follow_up(pool.candidates[p].sample.text, feedback), p))
        drawn_before, t1 = pool.drawn_now, time.perf_counter()
        progress("refine", r - 1, rounds)
        samples = pool.draw_turns([(i, conv) for i, conv, _ in requests])
        t2 = time.perf_counter()
        for (i, _, p), s in zip(requests, samples):
            _check_recorded(pool, s, i, r, p)
        samples = [replace(s, round=r, parent=p) for (_, _, p), s in zip(requests, samples)]
        new = pool.extend(samples, step=max(pool.candidates[p].step for p in chosen))
        parents.update(chosen)
        evaluated_before = pool.evaluated_now
        checked = pool.check([c.index for c in new])
        t3 = time.perf_counter()
        report["rounds"].append({
            "round": r, "follow_ups": len(chosen), "parents": chosen,
            "parent_status": [pool.result_for(p).status.value for p in chosen],
            "new_unique": len(checked), "correct": sum(v.correct for v in checked.values()),
            "drawn_now": pool.drawn_now - drawn_before, "evaluated_now": pool.evaluated_now - evaluated_before,
            "check_before_s": round(t0 - t_start, 3), "pick_s": round(t1 - t0, 3), "sample_s": round(t2 - t1, 3), "check_s": round(t3 - t2, 3),
        })
        progress("refine", r, rounds)
    return report


# ---- kopt compare: the refine arm at a matched sample budget ------------------------------------------------


def matched_budget(k: int, rounds: int, per_round: int | None = None) -> tuple[int, int]:
    """(first-turn samples, follow-ups per round) so that first turns plus every round's follow-ups are at most
    the K samples Best-of-N gets: per round K // (rounds + 1) by default, the first turns the rest."""
    rounds = max(1, rounds)
    per = per_round or k // (rounds + 1)
    base = k - rounds * per
    if per < 1 or base < 1:
        raise KoptError(f"--k {k} leaves no room for {rounds} repair round(s) of {per} follow-up(s) within K samples",
                        f"use --k {2 * (rounds + 1)} or more, or a smaller --refine-k")
    return base, per


def compare_outcome(pool: Pool, report: dict[str, Any], task: str, seed: int, *, k: int, top_m: int,
                    baseline: str):
    """The refine arm's outcome on one (task, seed): surprisal-top-m over every round (comparable surprisal),
    cost = every candidate timed, by the rounds' picks and by the selection."""
    from kopt import metrics as M
    from kopt.scoring import REFINE, Outcome
    from kopt.selection import select

    sel = select("surprisal-top-m", scored_across_rounds(pool)(), pool.time, top_m=top_m, seed=seed)
    r = pool.result_for(sel.winner) if sel.winner is not None else None
    used = len(pool.samples)
    return Outcome(
        REFINE, task, seed, sel.winner,
        speedup=M.speedup_vs(r, baseline) if r is not None else None,
        fast_1=1.0 if r is not None and M.is_fast(r, baseline=baseline) else 0.0,
        correct=1.0 if sel.winner is not None else 0.0,
        cost=float(len(set(sel.timed) | set(report.get("timed") or ()))),
        notes=(f"refine: {used - sum(x.get('follow_ups', 0) for x in report['rounds'])} first turns + "
               f"{len(report['rounds'])} round(s) of up to {report['budget']} follow-ups = {used} <= K={k} samples",),
        step=pool.candidates[sel.winner].sample.round if sel.winner is not None else None,
        samples_path=str(pool.samples_path),
        detail={"task": task, "seed": seed, "samples_path": str(pool.samples_path), **report},
    )


__all__ = ["compare_outcome", "matched_budget", "comparable_surprisal", "default_budget", "details", "load_template", "pick", "render", "run",
           "scored_across_rounds"]
