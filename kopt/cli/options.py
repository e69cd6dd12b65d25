"""Option declarations shared by several commands, so each flag has one spelling and one help text."""

from __future__ import annotations

from typing import List, Optional

import typer

Inputs = typer.Option(None, "--input", help='Forward argument, repeatable, in order: "float32[512,1024]" or "int64[32]:randint(0,100)".')
InitArgs = typer.Option(None, "--init-args", help="Constructor arguments as JSON: '[1024, 1e-6]' or '{\"dim\": 1024}'.")
Sets = typer.Option(None, "--set", help="Override a module-level constant of the task file: NAME=VALUE (repeatable).")
Target = typer.Option(None, "--target", help="Where kernels run: auto (cuda if present, else cpu), cuda or cpu.")
Json = typer.Option(False, "--json", help="Print one JSON object instead of tables.")

InputList = Optional[List[str]]

# Sampler options (kopt optimize, kopt compare).
Sampler = typer.Option(None, "--sampler", help="vllm | openai | hf | replay (default: replay with --samples, openai with --base-url, else vllm on a GPU).")
Model = typer.Option(None, "--model", help="Model name or local directory (vllm, hf) or served model name (openai).")
BaseUrl = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (vllm serve).")
ApiKeyEnv = typer.Option(None, "--api-key-env", help="Name of the environment variable that holds the API key.")
Api = typer.Option(None, "--api", help="openai sampler: chat | completions | auto.")
Samples = typer.Option(None, "--samples", help="Samples file (JSONL) for --sampler replay.")
Temperature = typer.Option(None, "--temperature", help="Sampling temperature (default 0.25, as in the paper).")
MaxTokens = typer.Option(None, "--max-tokens", help="Maximum tokens per sample (default 2048).")
Seed = typer.Option(None, "--seed", help="Sampling seed (default 0).")
Jobs = typer.Option(None, "--jobs", help="Parallel compiles and checks (default 2).")
Timeout = typer.Option(None, "--timeout", help="Seconds each check or timing process may run (default 120).")
NoCache = typer.Option(False, "--no-cache", help="Ignore the cache: sample and evaluate everything again.")
PromptTemplate = typer.Option(None, "--prompt-template", help="Prompt template file (see templates/prompt_cpu.txt).")
Atol = typer.Option(None, "--atol", help="Absolute tolerance (default 1e-4 for fp32, 1e-2 for half types).")
Rtol = typer.Option(None, "--rtol", help="Relative tolerance (default 1e-4 for fp32, 1e-2 for half types).")
Surprisal = typer.Option(None, "--surprisal", help="mean (per token, the paper's ranking) or sum.")

RUN_DEFAULTS = {
    "sampler": None, "model": None, "base_url": None, "api_key_env": None, "api": "auto", "samples": None,
    "k": 16, "temperature": 0.25, "max_tokens": 2048, "seed": 0, "target": "auto", "jobs": 2, "timeout": 120.0,
    "prompt_template": None, "atol": None, "rtol": None, "surprisal": "mean",
}
