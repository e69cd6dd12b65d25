"""`kopt optimize TARGET`: sample K kernels, keep the correct ones, time the most surprising m, write the winner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from kopt.cli import options


def register(app: typer.Typer) -> None:
    app.command("optimize")(optimize)


def optimize(
    target: str = typer.Argument(..., help="path.py (its Model) or path.py:ClassName."),
    k: Optional[int] = typer.Option(None, "--k", help="Samples to draw (default 16; the paper uses 64)."),
    device_target: Optional[str] = options.Target,
    sampler: Optional[str] = options.Sampler,
    model: Optional[str] = options.Model,
    base_url: Optional[str] = options.BaseUrl,
    api_key_env: Optional[str] = options.ApiKeyEnv,
    api: Optional[str] = options.Api,
    samples: Optional[Path] = options.Samples,
    temperature: Optional[float] = options.Temperature,
    max_tokens: Optional[int] = options.MaxTokens,
    seed: Optional[int] = options.Seed,
    select: Optional[str] = typer.Option(None, "--select", help="surprisal-top-m (default) | surprisal | confidence | random | oracle."),
    top_m: Optional[int] = typer.Option(None, "--top-m", help="How many of the most surprising correct candidates to time (default 3)."),
    surprisal: Optional[str] = options.Surprisal,
    adaptive: bool = typer.Option(False, "--adaptive", help="Time every correct candidate when the log-prob spread is below 1.0."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default kernels/<task name>)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
    jobs: Optional[int] = options.Jobs,
    timeout: Optional[float] = options.Timeout,
    no_cache: bool = options.NoCache,
    prompt_template: Optional[Path] = options.PromptTemplate,
    atol: Optional[float] = options.Atol,
    rtol: Optional[float] = options.Rtol,
    ttt_steps: int = typer.Option(0, "--ttt-steps", help="LoRA test-time-training steps (0: off; 1-2 recommended)."),
    ttt_lr: float = typer.Option(1e-5, "--ttt-lr", help="TTT learning rate (paper: 1e-5)."),
    lora_rank: int = typer.Option(16, "--lora-rank", help="TTT LoRA rank (paper: 16)."),
    ttt_k: int = typer.Option(32, "--ttt-k", help="Samples per TTT step (paper: 32)."),
    ttt_patience: int = typer.Option(1, "--ttt-patience", help="Stop TTT after this many consecutive regressions."),
    inputs: options.InputList = options.Inputs,
    init_args: Optional[str] = options.InitArgs,
    sets: options.InputList = options.Sets,
    as_json: bool = options.Json,
) -> int:
    """Find a faster kernel for TARGET and write it to kernels/<task>/."""
    from kopt.cli.console import console, print_warning, progress_bars
    from kopt.config import load_config, resolve
    from kopt.pipeline import OptimizeOptions, RunOptions
    from kopt.pipeline import optimize as run_optimize
    from kopt.task import load_task

    defaults = {**options.RUN_DEFAULTS, "select": "surprisal-top-m", "top_m": 3}
    flags = dict(sampler=sampler, model=model, base_url=base_url, api_key_env=api_key_env, api=api,
                 samples=samples, k=k, temperature=temperature, max_tokens=max_tokens, seed=seed,
                 target=device_target, jobs=jobs, timeout=timeout, prompt_template=prompt_template, atol=atol,
                 rtol=rtol, surprisal=surprisal, select=select, top_m=top_m)
    cfg = resolve(flags, load_config(), defaults)
    task = load_task(target, inputs=inputs, init_args=init_args, sets=sets)
    run = RunOptions(
        sampler=cfg["sampler"], model=cfg["model"], base_url=cfg["base_url"], api_key_env=cfg["api_key_env"],
        api=cfg["api"], samples=Path(cfg["samples"]) if cfg["samples"] else None, k=int(cfg["k"]),
        temperature=float(cfg["temperature"]), max_tokens=int(cfg["max_tokens"]), seed=int(cfg["seed"]),
        target=cfg["target"], jobs=int(cfg["jobs"]), timeout_s=float(cfg["timeout"]),
        prompt_template=Path(cfg["prompt_template"]) if cfg["prompt_template"] else None,
        atol=cfg["atol"], rtol=cfg["rtol"], surprisal=cfg["surprisal"], no_cache=no_cache,
        enable_lora=ttt_steps > 0, max_lora_rank=lora_rank,
    )
    opts = OptimizeOptions(run=run, select=cfg["select"], top_m=int(cfg["top_m"]), adaptive=adaptive, out=out,
                           force=force, ttt_steps=ttt_steps, ttt_lr=ttt_lr, lora_rank=lora_rank, ttt_k=ttt_k,
                           ttt_patience=ttt_patience)
    with progress_bars(enabled=not as_json) as progress:
        result = run_optimize(task, opts, progress=progress, warn=print_warning)
    if as_json:
        print(json.dumps(result.report, indent=2))
    else:
        render(console, result.report)
    return result.exit_code


def render(console, report: dict) -> None:
    from rich.table import Table

    w = report["winner"]
    table = Table(title=f"{report['task']['name']}: best candidates ({report['strategy']})", show_lines=False)
    for col in ("sample", "status", "surprisal", "runtime ms", "speedup", ""):
        table.add_column(col, justify="right" if col not in ("status", "") else "left")
    rows = [c for c in report["candidates"] if c["runtime_ms"] is not None]
    rows.sort(key=lambda c: c["runtime_ms"])
    for c in rows[:8]:
        mark = "winner" if c["index"] == w["index"] else ""
        surprisal = f"{c['surprisal']:.3f}" if c["surprisal"] is not None else "-"
        table.add_row(str(c["index"]), c["status"], surprisal, f"{c['runtime_ms']:.4g}",
                      f"{c['speedup']:.2f}x" if c["speedup"] else "-", mark)
    console.print(table)
    counts: dict[str, int] = {}
    for c in report["candidates"]:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    console.print("pool: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1])))
    ref = w.get("reference_runtime_ms")
    console.print(
        f"winner: sample {w['index']}, {w['runtime_ms']:.4g} ms vs reference {ref:.4g} ms -> "
        f"[bold]{w['speedup']:.2f}x[/] (timed {len(report['timed'])} of "
        f"{sum(1 for c in report['candidates'] if c['status'] == 'correct' and c['duplicate_of'] is None)} correct)"
    )
    console.print(f"wrote {report['out_dir']}/ (model_new.py, report.json, README.md)")
