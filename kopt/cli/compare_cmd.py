"""`kopt compare TARGET...`: score every selection strategy on the same K samples per task and seed.

TARGETs: task files, file.py:Class, directories of task files, or `--kernelbench DIR` with `--ids 4,5,12`,
`--split eval|train` (ids from split_l1_seed42.json beside DIR's level folder) or `--split-file FILE`.
Replay: `--samples FILE` for one task, or `--samples DIR` holding `<task name>.jsonl` per task (or
`<task>/samples_<target>.jsonl`, the layout of kopt's examples/).
TTT arm: `--ttt-steps N` (with `--sampler hf|vllm --model DIR`) adds strategy `ttt`: LoRA test-time training
with Best-of-Adaptation under a rollout budget matched to K ((N+1)·ttt_k ≤ K; see kopt/comparison.py).
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


def compare(
    targets: Optional[List[str]] = typer.Argument(None, help="Task files, file.py:Class or folders of task files."),
    strategies: str = typer.Option("all", "--strategies", help="all, or a comma-separated list: oracle,random,confidence,surprisal,surprisal-top-m,ttt (all includes ttt only with --ttt-steps)."),
    k: Optional[int] = typer.Option(None, "--k", help="Samples per task and seed (default 64, as in the paper)."),
    seeds: str = typer.Option("42", "--seeds", help="Comma-separated sampling seeds, e.g. 42,43,44."),
    top_m: int = typer.Option(3, "--top-m", help="m for surprisal-top-m (default 3)."),
    kernelbench: Optional[Path] = typer.Option(None, "--kernelbench", help="KernelBench folder (or its level1 folder)."),
    ids: Optional[str] = typer.Option(None, "--ids", help="KernelBench problem ids, e.g. 4,5,12."),
    split: Optional[str] = typer.Option(None, "--split", help="eval or train: the paper's L1 split (split_l1_seed42.json)."),
    split_file: Optional[Path] = typer.Option(None, "--split-file", help="A split JSON file with 'eval'/'train' id lists."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write results.json, results.csv, PNG plots and report.md here."),
    device_target: Optional[str] = options.Target,
    sampler: Optional[str] = options.Sampler,
    model: Optional[str] = options.Model,
    base_url: Optional[str] = options.BaseUrl,
    api_key_env: Optional[str] = options.ApiKeyEnv,
    api: Optional[str] = options.Api,
    samples: Optional[Path] = typer.Option(None, "--samples", help="Replay: one samples file (one task) or a folder of <task name>.jsonl."),
    temperature: Optional[float] = options.Temperature,
    max_tokens: Optional[int] = options.MaxTokens,
    surprisal: Optional[str] = options.Surprisal,
    jobs: Optional[int] = options.Jobs,
    timeout: Optional[float] = options.Timeout,
    no_cache: bool = options.NoCache,
    prompt_template: Optional[Path] = options.PromptTemplate,
    atol: Optional[float] = options.Atol,
    rtol: Optional[float] = options.Rtol,
    inputs: options.InputList = options.Inputs,
    init_args: Optional[str] = options.InitArgs,
    sets: options.InputList = options.Sets,
    ttt_steps: int = typer.Option(0, "--ttt-steps", help="Add the ttt strategy: LoRA TTT steps with Best-of-Adaptation (0: off; 1-2 recommended)."),
    ttt_lr: float = typer.Option(1e-5, "--ttt-lr", help="TTT learning rate (paper: 1e-5)."),
    lora_rank: int = typer.Option(16, "--lora-rank", help="TTT LoRA rank (paper: 16)."),
    ttt_k: Optional[int] = typer.Option(None, "--ttt-k", help="Samples per TTT round (default K // (ttt-steps + 1): (steps + 1)·ttt_k ≤ K, the matched budget)."),
    ttt_patience: int = typer.Option(1, "--ttt-patience", help="Stop TTT after this many consecutive regressions."),
    as_json: bool = options.Json,
) -> int:
    """Compare oracle, random, confidence, surprisal, surprisal-top-m (and ttt) selection on the same samples."""
    from kopt.cli.console import console, print_warning, progress_bars
    from kopt.comparison import TTTOptions, parse_strategies, run_compare, write_report
    from kopt.config import load_config, resolve
    from kopt.errors import KoptError
    from kopt.pipeline import RunOptions
    from kopt.task import load_task

    if ttt_steps < 0:
        raise KoptError(f"--ttt-steps must be 0 or more, got {ttt_steps}", "e.g. --ttt-steps 1")
    names = parse_strategies(strategies, ttt_steps)
    seed_list = _int_list(seeds, "--seeds")
    if not seed_list:
        raise KoptError("--seeds is empty", "e.g. --seeds 42,43")
    paths = expand_targets(list(targets or []))
    if kernelbench is not None:
        paths += kernelbench_targets(kernelbench, ids, split, split_file)
    if not paths:
        raise KoptError("no TARGET given", "pass task files or folders, or --kernelbench DIR --ids 4,5,12")
    defaults = {**options.RUN_DEFAULTS, "k": 64}
    flags = dict(sampler=sampler, model=model, base_url=base_url, api_key_env=api_key_env, api=api,
                 samples=samples, k=k, temperature=temperature, max_tokens=max_tokens, target=device_target,
                 jobs=jobs, timeout=timeout, prompt_template=prompt_template, atol=atol, rtol=rtol,
                 surprisal=surprisal)
    cfg = resolve(flags, load_config(), defaults)
    tasks = [load_task(p, inputs=inputs, init_args=init_args, sets=sets) for p in paths]
    run = RunOptions(
        sampler=cfg["sampler"], model=cfg["model"], base_url=cfg["base_url"], api_key_env=cfg["api_key_env"],
        api=cfg["api"], samples=Path(cfg["samples"]) if cfg["samples"] else None, k=int(cfg["k"]),
        temperature=float(cfg["temperature"]), max_tokens=int(cfg["max_tokens"]), seed=seed_list[0],
        target=cfg["target"], jobs=int(cfg["jobs"]), timeout_s=float(cfg["timeout"]),
        prompt_template=Path(cfg["prompt_template"]) if cfg["prompt_template"] else None,
        atol=cfg["atol"], rtol=cfg["rtol"], surprisal=cfg["surprisal"], no_cache=no_cache,
        enable_lora="ttt" in names, max_lora_rank=lora_rank,
    )
    ttt = (TTTOptions(steps=ttt_steps, lr=ttt_lr, lora_rank=lora_rank, k=ttt_k, patience=ttt_patience)
           if "ttt" in names else None)
    with progress_bars(enabled=not as_json) as progress:
        result = run_compare(tasks, run, seeds=seed_list, strategies=names, top_m=top_m, progress=progress,
                             ttt=ttt, warn=print_warning)
    written = write_report(result, report) if report is not None else []
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
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
    console.print(table)
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
    for n in notes[:6]:
        console.print(f"[dim]note:[/] {n}")
