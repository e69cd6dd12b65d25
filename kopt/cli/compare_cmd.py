"""`kopt compare TARGET...`: score every selection strategy on the same K samples per task and seed.

TARGETs: task files, file.py:Class, directories of task files, or `--kernelbench DIR` with `--ids 4,5,12`,
`--split eval|train` (ids from split_l1_seed42.json beside DIR's level folder) or `--split-file FILE`.
Replay: `--samples FILE` for one task, or `--samples DIR` holding `<task name>.jsonl` per task (or
`<task>/samples_<target>.jsonl`, the layout of kopt's examples/).
TTT arm: `--ttt-steps N` (with `--sampler hf|vllm --model DIR`) adds strategy `ttt`: LoRA test-time training
with Best-of-Adaptation under a rollout budget matched to K ((N+1)·ttt_k ≤ K; see kopt/comparison.py and kopt/scoring.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from kopt.cli import options


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)


def _int_list(text: str, flag: str) -> list[int]:
    from kopt.errors import KoptError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise KoptError(f"{flag} {text!r} is not a comma-separated list of integers", f"e.g. {flag} 42,43") from None


def kernelbench_targets(root: Path, ids: str | None, split: str | None, split_file: Path | None) -> list[str]:
    """Task files of KernelBench level-1 problems chosen by id or by the paper's split."""
    from kopt.errors import KoptError

    level = root / "level1" if (root / "level1").is_dir() else root
    if not level.is_dir():
        raise KoptError(f"--kernelbench {root}: no such directory", "point it at KernelBench's level1 folder")
    if ids:
        chosen = _int_list(ids, "--ids")
    elif split or split_file:
        sf = split_file or level.parent / "split_l1_seed42.json"
        if not sf.is_file():
            raise KoptError(f"split file {sf} not found", "pass --split-file FILE or --ids 4,5,12")
        data = json.loads(sf.read_text(encoding="utf-8"))
        name = split or "eval"
        if name not in data or not isinstance(data[name], list):
            raise KoptError(f"{sf} has no {name!r} list", "use --split eval or --split train")
        chosen = [int(x) for x in data[name]]
    else:
        raise KoptError("--kernelbench needs --ids or --split", "e.g. --kernelbench DIR --ids 4,5,12 or --split eval")
    out = []
    for i in chosen:
        hits = sorted(level.glob(f"{i}_*.py"))
        if not hits:
            raise KoptError(f"KernelBench problem {i} not found in {level}", "check --ids against the level folder")
        out.append(str(hits[0]))
    return out


def expand_targets(targets: list[str]) -> list[str]:
    """Directories become their task files (*.py not starting with '_', sorted)."""
    from kopt.errors import KoptError

    out = []
    for t in targets:
        p = Path(t.split(":")[0]) if ":" in t and not Path(t).exists() else Path(t)
        if p.is_dir():
            files = sorted(f for f in p.glob("*.py") if not f.name.startswith("_"))
            if not files:
                raise KoptError(f"{p} holds no task files (*.py)", "pass task files or a folder of them")
            out += [str(f) for f in files]
        else:
            out.append(t)
    return out


@options.with_settings("compare")
def compare(
    targets: Optional[List[str]] = typer.Argument(None, help="Task files, file.py:Class or folders of task files."),
    kernelbench: Optional[Path] = typer.Option(None, "--kernelbench", help="KernelBench folder (or its level1 folder)."),
    ids: Optional[str] = typer.Option(None, "--ids", help="KernelBench problem ids, e.g. 4,5,12."),
    split: Optional[str] = typer.Option(None, "--split", help="eval or train: the paper's L1 split (split_l1_seed42.json)."),
    split_file: Optional[Path] = typer.Option(None, "--split-file", help="A split JSON file with 'eval'/'train' id lists."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write results.json, results.csv, PNG plots and report.md here."),
    inputs: options.InputList = options.Inputs,
    init_args: Optional[str] = options.InitArgs,
    sets: options.InputList = options.Sets,
    as_json: bool = options.Json,
    values: Optional[dict] = None,
) -> int:
    """Compare oracle, random, confidence, surprisal, surprisal-top-m (and ttt) selection on the same samples.

    Every candidate is compiled and checked (the oracle and random need every verdict)."""
    from kopt.cli.console import console, json_stdout, print_warning, progress_bars
    from kopt.compare_report import write_report
    from kopt.comparison import run_compare
    from kopt.errors import KoptError
    from kopt.pool import RunOptions
    from kopt.scoring import parse_strategies
    from kopt.task import load_task
    from kopt.ttt import TTTOptions

    v = values or {}
    names = parse_strategies(v["strategies"], v["ttt_steps"])
    seed_list = _int_list(v["seeds"], "--seeds")
    if not seed_list:
        raise KoptError("--seeds is empty", "e.g. --seeds 42,43")
    paths = expand_targets(list(targets or []))
    if kernelbench is not None:
        paths += kernelbench_targets(kernelbench, ids, split, split_file)
    if not paths:
        raise KoptError("no TARGET given", "pass task files or folders, or --kernelbench DIR --ids 4,5,12")
    tasks = [load_task(p, inputs=inputs, init_args=init_args, sets=sets) for p in paths]
    run = RunOptions.from_settings(v, seed=seed_list[0], enable_lora="ttt" in names, max_lora_rank=v["lora_rank"])
    ttt = TTTOptions.from_settings(v) if "ttt" in names else None
    with json_stdout(as_json) as emit, progress_bars(enabled=not as_json) as progress:
        result = run_compare(tasks, run, seeds=seed_list, strategies=names, top_m=v["top_m"], progress=progress,
                             ttt=ttt, warn=print_warning, baseline=v["baseline"],
                             refine=(v["refine"], v["refine_k"]))
        written = write_report(result, report) if report is not None else []
        if as_json:
            emit(json.dumps(result.to_json(), indent=2))
    if not as_json:
        render(console, result)
        if written:
            console.print(f"wrote {report}/ ({', '.join(p.name for p in written)})")
    return 0


def render(console, result) -> None:
    from rich.table import Table

    def f(x, spec=".3f"):
        return "-" if x is None else format(x, spec)

    table = Table(title=f"kopt compare: {len(result.tasks)} task(s) x {len(result.seeds)} seed(s), K={result.k}")
    for col in ("strategy", "fast_1", "± seeds", "mean speedup", "geomean", "correct", "cost", "equiv. K"):
        if col == "strategy":
            table.add_column(col, justify="left", no_wrap=True, min_width=len("surprisal-top-m"))
        else:
            table.add_column(col, justify="right")
    for s in result.strategies:
        table.add_row(s.strategy, f(s.fast_1.mean), f(s.fast_1.seed_std), f(s.mean_speedup.mean, ".2f") + "x"
                      if s.mean_speedup.mean is not None else "-", f(s.geomean_speedup, ".2f"),
                      f(s.correctness.mean), f(s.cost.mean, ".2f"), str(s.equivalent_k or "-"))
    # Not a terminal (a pipe, CI logs): print at the table's own width, not rich's 80-column default.
    console.print(table, width=None if console.is_terminal else max(console.width, 160))
    b = result.params.get("ttt")
    if b:
        console.print(f"ttt: matched rollout budget, step 0 = the first {b['ttt_k']} of the K={result.k} samples, "
                      f"{b['ttt_k']} more per step: ({b['steps']} + 1) x {b['ttt_k']} = {b['budget_samples']} <= K; "
                      "pick = fastest correct kernel of the step Best-of-Adaptation chose; cost = every correct "
                      "candidate timed across the steps")
        for run in result.strategy("ttt").runs:
            scores = ", ".join(f"{st['step']}: {f(st['score'])}" for st in run["steps"])
            console.print(f"  {run['task']} seed {run['seed']}: step fast_1 {scores}; chose step "
                          f"{run['chosen_step']} ({run['stopped']})")
    notes = sorted({n for s in result.strategies for o in s.picks for n in o.notes})
    if all(s.strategy != "ttt" for s in result.strategies):
        notes.append("ttt is not among the strategies: add --ttt-steps 1 with --sampler hf|vllm --model DIR "
                     "(replay and openai samplers cannot train)")
    for n in notes[:7]:
        console.print(f"[dim]note:[/] {n}")
