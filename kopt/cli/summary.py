"""What `kopt optimize` prints at the end: a table and a few lines whose numbers add up at a glance.

- the pool line accounts for every sample: samples = unique kernels + duplicates, and the unique ones by verdict;
- the table lists the timed candidates (a duplicate is not a row of its own: it is named beside its original);
- every speedup carries its spread (the interquartile range of the timed calls) and a warning when the spread
  is too wide to rank on;
- "wrote" lists the files actually written.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

NOISY_IQR_FRACTION = 0.25  # an IQR above a quarter of the median: rankings by that figure are not reliable


def _fmt_ms(v: float | None) -> str:
    return f"{v:.4g}" if v is not None else "-"


def _spread(median: float | None, iqr: float | None) -> str:
    if median is None or iqr is None or median <= 0:
        return "-"
    return f"±{100 * iqr / median / 2:.0f}%"


def pool_line(report: dict[str, Any]) -> str:
    cands = report["candidates"]
    unique = [c for c in cands if c.get("duplicate_of") is None]
    dups = len(cands) - len(unique)
    by_status = Counter(c["status"] for c in unique)
    parts = ", ".join(f"{n} {s}" for s, n in by_status.most_common())
    dup_text = f" + {dups} duplicate{'s' if dups != 1 else ''}" if dups else ""
    return f"pool: {len(cands)} samples = {len(unique)} unique{dup_text}; unique: {parts}"


def timed_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [c for c in report["candidates"] if c.get("runtime_ms") is not None and c.get("duplicate_of") is None]
    return sorted(rows, key=lambda c: c["runtime_ms"])


def duplicates_of(report: dict[str, Any]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for c in report["candidates"]:
        if c.get("duplicate_of") is not None:
            out.setdefault(int(c["duplicate_of"]), []).append(int(c["index"]))
    return out


def written_files(out_dir: str | None) -> list[str]:
    if not out_dir or not Path(out_dir).is_dir():
        return []
    return sorted(p.name for p in Path(out_dir).iterdir() if p.is_file())


def render_optimize(console, report: dict[str, Any]) -> None:
    """The end of a successful `kopt optimize` (the report is report.json's content)."""
    from rich.table import Table

    w = report["winner"]
    dups = duplicates_of(report)
    table = Table(title=f"{report['task']['name']}: timed candidates ({report['strategy']})", title_justify="left")
    for col, justify in (("sample", "right"), ("status", "left"), ("surprisal", "right"), ("runtime ms", "right"),
                         ("spread", "right"), ("speedup", "right"), ("note", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "note")
    for c in timed_rows(report)[:8]:
        notes = ["winner"] if c["index"] == w["index"] else []
        if dups.get(c["index"]):
            notes.append("same code as " + ", ".join(f"#{i}" for i in dups[c["index"]]))
        surprisal = f"{c['surprisal']:.3f}" if c.get("surprisal") is not None else "-"
        table.add_row(str(c["index"]), c["status"], surprisal, _fmt_ms(c["runtime_ms"]),
                      _spread(c["runtime_ms"], c.get("runtime_iqr_ms")),
                      f"{c['speedup']:.2f}x" if c.get("speedup") else "-", "; ".join(notes))
    console.print(table)
    console.print(pool_line(report), highlight=False)
    ev = report.get("evaluation") or {}
    if ev:
        console.print(f"evaluation ({ev.get('mode')}): {ev.get('unique')} unique candidates, {ev.get('compiled')} "
                      f"compiled, {ev.get('checked')} checked, {ev.get('timed')} timed, {ev.get('skipped')} skipped"
                      + (f" ({ev['why']})" if ev.get("why") else ""), highlight=False)
    devices = report.get("devices") or []
    if len(devices) > 1:
        console.print(f"devices: {len(devices)} x {devices[0]['name']} ({', '.join(d['id'] for d in devices)}), "
                      "checks one per device, timing exclusive per device", highlight=False)
    correct_unique = sum(1 for c in report["candidates"] if c["status"] == "correct" and c.get("duplicate_of") is None)
    ref = w.get("reference_runtime_ms")
    spread = _spread(w.get("runtime_ms"), w.get("runtime_iqr_ms"))
    console.print(
        f"winner: sample {w['index']}, {_fmt_ms(w.get('runtime_ms'))} ms ({spread}) vs reference {_fmt_ms(ref)} ms "
        f"-> [bold]{w['speedup']:.2f}x[/] (timed {len(report.get('timed') or [])}; {correct_unique} unique "
        "candidate(s) correct after every check)", highlight=False)
    median, iqr = w.get("runtime_ms"), w.get("runtime_iqr_ms")
    if median and iqr and iqr > NOISY_IQR_FRACTION * median:
        console.print(f"[yellow]warning:[/] the winner's timings spread by {100 * iqr / median:.0f}% of the median "
                      "(IQR); on a busy machine that is too wide to rank candidates on: rerun when it is quiet",
                      highlight=False)
    vs_compile = w.get("speedup_vs_compile")
    if vs_compile is not None:
        verdict = "beats" if vs_compile > 1.0 else "does not beat"
        console.print(f"vs torch.compile: {vs_compile:.2f}x: the winner {verdict} torch.compile", highlight=False)
    else:
        console.print("vs torch.compile: not measured (speedups are against eager PyTorch)", highlight=False)
    files = written_files(report.get("out_dir"))
    listing = ", ".join(files) if files else "model_new.py, report.json, README.md"
    console.print(f"wrote {report['out_dir']}/: {listing}", highlight=False)
    from kopt.config import kopt_home

    console.print(f"[dim]samples and verdicts cached in {kopt_home()} ($KOPT_HOME): the same command again samples "
                  "and compiles nothing[/]", highlight=False)
