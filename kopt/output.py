"""Write the winner: `kernels/<task>/` with model_new.py, the kernel source, report.json, README.md.

Writes are atomic (a temp dir renamed into place) and never overwrite an existing output silently.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from kopt import __version__
from kopt.errors import KoptError
from kopt.records import Selection


def check_writable(out_dir: Path, force: bool) -> None:
    """Refuse up front (before any sampling) when the output exists and --force was not given."""
    if out_dir.exists() and not force:
        raise KoptError(f"{out_dir} already exists", "pass --force to replace it, or choose another --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise KoptError(f"{out_dir} exists and is not a directory", "choose another --out")


def kernel_source(code: str) -> tuple[str, str]:
    """The kernel's C++/CUDA source alone, and its file name (kernel.cu or kernel.cpp)."""
    from kopt.kernels import kernel_source as _kernel_source

    return _kernel_source(code)


def _candidate_rows(pool) -> list[dict[str, Any]]:
    rows = []
    for c in pool.candidates:
        r = pool.result_for(c.index)
        rows.append({
            "index": c.index,
            "status": r.status.value,
            "reason": r.reason,
            "surprisal": c.sample.surprisal(pool.options.surprisal),
            "logprob": c.sample.logprob,
            "num_tokens": c.sample.num_tokens,
            "runtime_ms": r.runtime_ms,
            "runtime_iqr_ms": r.runtime_iqr_ms,
            "speedup": r.speedup,
            "compile_s": r.compile_s,
            "duplicate_of": c.duplicate_of,
            "code_sha256": c.code_sha256,
            "step": c.step,
            "round": c.sample.round,
            "parent": c.sample.parent,
            "warnings": list(r.warnings),
        })
    return rows


def build_report(pool, options, sel: Selection, ttt_report: dict | None = None) -> dict[str, Any]:
    """report.json's content (see docs/design.md); also what `--json` prints."""
    run = options.run
    task = pool.task
    fp = pool.fingerprint()
    winner = None
    if sel.winner is not None:
        c = pool.candidates[sel.winner]
        r = pool.result_for(sel.winner)
        winner = {
            "index": sel.winner,
            "speedup": r.speedup,
            "runtime_ms": r.runtime_ms,
            "runtime_iqr_ms": r.runtime_iqr_ms,
            "reference_runtime_ms": r.reference_runtime_ms,
            "surprisal": c.sample.surprisal(run.surprisal),
            "code_sha256": c.code_sha256,
            "binary_sha256": r.binary_sha256,
            "step": c.step,
            "round": c.sample.round,
            "parent": c.sample.parent,
            "path": None,
        }
    report = {
        "kopt_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "task": {
            "name": task.name,
            "target": task.target,
            "path": task.path,
            "class_name": task.class_name,
            "hash": task.hash,
            "sets": {k: v for k, v in task.sets},
            "inputs": list(task.inputs),
            "init_args": json.loads(task.init_args) if task.init_args else None,
        },
        "target": pool.target,
        "device": fp.get("device"),
        "toolchain": fp.get("toolchain"),
        "isolation": fp.get("isolation"),
        "sampler": pool.sampler_name,
        "model": pool.model_id or (pool.samples[0].model if pool.samples else ""),
        "params": {
            "k": run.k, "temperature": run.temperature, "max_tokens": run.max_tokens, "seed": run.seed,
            "top_m": options.top_m, "surprisal": run.surprisal, "adaptive": options.adaptive,
            "samples": str(run.samples) if run.samples else None,
            "base_url": getattr(run, "base_url", None),  # so the re-record command reaches the same server
        },
        "strategy": sel.strategy,
        "timed": list(sel.timed),
        "logprob_std": sel.logprob_std,
        "notes": list(sel.notes),
        "eval_settings": json.loads(pool.eval_settings().key()),  # an object, not a string inside the JSON
        "run_dir": str(pool.run_dir),
        "candidates": _candidate_rows(pool),
        "winner": winner,
    }
    if ttt_report is not None:
        report["ttt"] = ttt_report
    return report


def _readme(report: dict[str, Any], kernel_name: str) -> str:
    w = report["winner"]
    task = report["task"]
    speed = f"{w['speedup']:.2f}x" if w.get("speedup") is not None else "n/a"
    verdict = "faster than" if (w.get("speedup") or 0) > 1 else "NOT faster than"
    counts: dict[str, int] = {}
    for c in report["candidates"]:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"""# {task['name']}: kernel found by kopt

- reference: `{task['target']}` (class `{task['class_name']}`, task hash `{task['hash'][:12]}`)
- target: {report['target']} on {report['device']} (isolation: {report['isolation']})
- winner: sample {w['index']} by `{report['strategy']}`: {w['runtime_ms']:.4g} ms vs the reference's \
{w['reference_runtime_ms']:.4g} ms = **{speed}**, {verdict} the PyTorch reference
- pool: {report['params']['k']} samples from `{report['model'] or report['sampler']}` ({statuses})

Files: `model_new.py` (the module, compiles its kernel on import), `{kernel_name}` (the kernel source alone),
`report.json` (every candidate's verdict, surprisal and timing), `samples.jsonl` (the pool).

Use it in your model:

```python
import kopt
model = kopt.swap(model, "{report.get('out_dir', 'kernels/' + task['name'])}")
```

`kopt.swap` replaces every `{task['class_name']}` defined in the reference's file (`{task['target']}`), not
another class of the same name, keeping its weights, and prints what it replaced. Gradients: the kernel is forward-only;
when autograd needs gradients through it, the backward is the reference module's own (recomputed on the saved
inputs, so gradients are exact, at the cost of one more reference forward). `kopt.swap(..., gradients="refuse")`
raises instead whenever gradients are needed.

Check it still matches its reference: `kopt check {report.get('out_dir', 'kernels/' + task['name'])}`.
"""


def _replace_dir(tmp: Path, out_dir: Path, force: bool) -> None:
    if out_dir.exists():
        if not force:
            raise KoptError(f"{out_dir} already exists", "pass --force to replace it, or choose another --out")
        old = out_dir.with_name(f".{out_dir.name}.old{os.getpid()}")
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)


def write_kernel_dir(out_dir: Path, pool, report: dict[str, Any], force: bool = False) -> Path:
    """Write the winner's directory atomically (kopt/kernels.py's format); returns its path."""
    from kopt.kernels import KernelRecord, model_new_text, sha256_text, split_target, write_report

    w = report["winner"]
    c = pool.candidates[w["index"]]
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    record = KernelRecord.from_json({**report, "out_dir": str(out_dir)})
    # The reference as seen from the kernel dir, so `kopt check` finds it in any clone of the repo.
    rel = os.path.relpath(record.task.path, out_dir.resolve())
    cls = split_target(record.task.target)[1]
    task = replace(record.task, target_from_kernel_dir=rel + (f":{cls}" if cls else ""))
    kernel, kernel_name = kernel_source(c.code)
    header = (f"# Written by kopt {__version__} for {task.target} "
              f"(sample {w['index']}, {record.strategy}); see report.json.\n")
    model_new = model_new_text(c.code, header)
    winner = replace(record.winner, path=str(out_dir / "model_new.py"), model_new_sha256=sha256_text(model_new))
    record = replace(record, task=task, winner=winner)
    report = record.to_json()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "model_new.py").write_text(model_new, encoding="utf-8")
        (tmp / kernel_name).write_text(kernel, encoding="utf-8")
        write_report(tmp / "report.json", record)
        (tmp / "README.md").write_text(_readme(report, kernel_name), encoding="utf-8")
        with (tmp / "samples.jsonl").open("w", encoding="utf-8") as f:
            for s in pool.samples:
                f.write(json.dumps(s.to_json()) + "\n")
        _replace_dir(tmp, out_dir, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def write_failure(pool, report: dict[str, Any]) -> Path:
    """When nothing is correct, keep the verdicts beside the samples in the run dir (nothing is lost)."""
    path = pool.run_dir / "report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".report.json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def failure_message(report: dict[str, Any], report_path: Path, top: int = 3) -> tuple[str, str]:
    """(message, hint) for a pool with no correct candidate: counts that add up, the most common reasons by
    count, and where every verdict was written."""
    from collections import Counter

    cands = report["candidates"]
    unique = [c for c in cands if c.get("duplicate_of") is None]
    counts = Counter(c["status"] for c in unique)
    summary = ", ".join(f"{n} {s}" for s, n in counts.most_common())
    dups = len(cands) - len(unique)
    message = (f"no correct candidate among {len(cands)} samples ({len(unique)} unique"
               f"{f' + {dups} duplicate' + ('s' if dups != 1 else '') if dups else ''}: {summary})")
    reasons: Counter[tuple[str, str]] = Counter()
    example: dict[tuple[str, str], str] = {}
    for c in unique:
        first = ((c.get("reason") or "").strip().splitlines() or [""])[0]
        key = (c["status"], re.sub(r"[-+]?\d[\d.e+-]*", "#", first)[:80])  # same reason, other numbers
        reasons[key] += 1
        example.setdefault(key, first[:120])
    tops = [f"{n}x {status}: {example[(status, k)] or 'no reason given'}"
            for (status, k), n in reasons.most_common(top)]
    hint = f"top reasons: {'; '.join(tops)}. Every candidate's verdict: {report_path}"
    return message, hint
