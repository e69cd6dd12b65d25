"""The static gate and the flag policy measured on real LLM-written kernels (nobody on kopt wrote them).

Corpus: ../shared/external/technoabsurdist-a100/rows.jsonl (300 KernelBench level-1 CUDA candidates from three
model runs, labelled on an A100 by KernelBench's own harness; the qwen3 run's labels are broken, see its README).
Per run it prints: extracted, passed, rejected by reason, false rejections among the labelled-correct real-CUDA
candidates (a `__global__` kernel built with load_inline), and the top reasons.

    .venv/bin/python benchmarks/bench_gate.py [--rows PATH] [--show-false]
"""

from __future__ import annotations

import argparse
import ast
import collections
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROWS = REPO.parent / "shared" / "external" / "technoabsurdist-a100" / "rows.jsonl"
FIXTURES = REPO / "tests" / "fixtures"
FLAG_KWARGS = ("extra_cflags", "extra_cuda_cflags", "extra_ldflags", "extra_include_paths", "build_directory")


@dataclass(frozen=True)
class Judged:
    run: str
    problem_id: int
    extracted: bool
    real_cuda: bool
    labelled_correct: bool
    labels_broken: bool
    rejections: tuple[str, ...]
    warnings: tuple[str, ...]
    code: str | None

    @property
    def passed(self) -> bool:
        return self.extracted and not self.rejections


def load_rows(path: Path = ROWS) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def literal_flag_kwargs(code: str) -> list[tuple[str, object]]:
    """(keyword, literal value) of every load_inline build keyword whose value is a literal (what the candidate
    wrote; a computed value is the static gate's and the build's capture's business)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name != "load_inline":
                continue
            for kw in node.keywords:
                if kw.arg in FLAG_KWARGS:
                    try:
                        out.append((kw.arg, ast.literal_eval(kw.value)))
                    except ValueError:
                        pass
    return out


def judge(text: str, target: str = "cuda") -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
    """Extraction + static gate + flag policy on the literal build kwargs: (code, rejections, warnings)."""
    from kopt.evaluator.flags import classify
    from kopt.evaluator.static import check_source
    from kopt.prompt import extract_code

    code = extract_code(text)
    if code is None:
        return None, ("extraction: no ```python block defining ModelNew",), ()
    report = check_source(code, target)
    rejections, warnings = list(report.rejections), list(report.warnings)
    for option, value in literal_flag_kwargs(code):
        v = classify(option, value, target=target)
        rejections += [f"flags: {r}" for r in v.rejections]
        warnings += [f"flags: {w}" for w in v.warnings]
    return code, tuple(dict.fromkeys(rejections)), tuple(dict.fromkeys(warnings))


def judge_rows(rows: list[dict], target: str = "cuda") -> list[Judged]:
    out = []
    for r in rows:
        code, rej, warn = judge(r["text"], target)
        label = r.get("label") or {}
        real_cuda = bool(code) and "load_inline" in code and re.search(r"\b__global__\b", code) is not None
        out.append(Judged(run=r["run"], problem_id=int(r["problem_id"]), extracted=code is not None,
                          real_cuda=real_cuda, labelled_correct=bool(label.get("correct")),
                          labels_broken=bool(label.get("labels_broken")), rejections=rej, warnings=warn, code=code))
    return out


def reason_key(rejection: str) -> str:
    """A rejection's kind, without line numbers and quoted specifics: `line 12: uses os.fork: ...` -> `uses os.fork`."""
    text = re.sub(r"^(?:flags: )?(?:line \d+: )?", "", rejection)
    head = text.split(": ", 1)[0]
    return ("flags: " if rejection.startswith("flags: ") else "") + head[:90]


def gate_fixtures(fixtures: Path = FIXTURES) -> list[tuple[Path, str]]:
    """The adversarial fixtures whose header names the static gate as the defence and expects a rejection."""
    out = []
    for folder, target in (("kernels", "cpu"), ("kernels_cuda", "cuda")):
        for path in sorted((fixtures / folder).glob("*.py")):
            head = "\n".join(ln for ln in path.read_text().splitlines()[:12] if ln.startswith("#"))
            if re.search(r"#\s*Defence:\s*static gate", head) and re.search(r"#\s*Expected:\s*rejected", head):
                out.append((path, target))
    return out


def fixture_line() -> str:
    from kopt.evaluator.static import check_source

    fixtures = gate_fixtures()
    missed = [p.stem for p, target in fixtures if check_source(p.read_text(), target).ok]
    return (f"hack fixtures the static gate defends: {len(fixtures) - len(missed)}/{len(fixtures)} rejected"
            + (f"; PASSED THE GATE: {', '.join(missed)}" if missed else ""))


def table(judged: list[Judged]) -> str:
    lines = []
    runs = sorted({j.run for j in judged})
    hdr = f"{'run':<10} {'rows':>5} {'extracted':>9} {'passed':>6} {'rejected':>8} {'correct*':>8} {'false rej':>9}"
    lines += [hdr, "-" * len(hdr)]
    for run in runs + ["all"]:
        js = [j for j in judged if run in ("all", j.run)]
        ext = [j for j in js if j.extracted]
        good = [j for j in js if j.labelled_correct and j.real_cuda and not j.labels_broken]
        false = [j for j in good if j.rejections]
        pct = f"{100 * len(false) / len(good):.1f}%" if good else "n/a"
        lines.append(f"{run:<10} {len(js):>5} {len(ext):>9} {sum(j.passed for j in js):>6} "
                     f"{sum(bool(j.rejections) for j in ext):>8} {len(good):>8} {len(false):>4} {pct:>5}")
    lines.append("correct* = labelled correct on the A100, real CUDA (a __global__ kernel built by load_inline), "
                 "labels not broken (the qwen3 run's are)")
    for run in runs + ["all"]:
        js = [j for j in judged if run in ("all", j.run)]
        counts = collections.Counter(k for j in js for k in {reason_key(r) for r in j.rejections})
        good = [j for j in js if j.labelled_correct and j.real_cuda and not j.labels_broken]
        fcounts = collections.Counter(k for j in good for k in {reason_key(r) for r in j.rejections})
        lines.append(f"\nrejected by reason ({run}; a candidate counts once per reason):")
        for k, n in counts.most_common(12 if run == "all" else 6):
            lines.append(f"  {n:>4}  {k}" + (f"   [{fcounts[k]} labelled-correct]" if fcounts.get(k) else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=Path, default=ROWS)
    ap.add_argument("--show-false", action="store_true", help="print each false rejection's reasons")
    args = ap.parse_args(argv)
    if not args.rows.exists():
        print(f"corpus not found: {args.rows}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    judged = judge_rows(load_rows(args.rows))
    print(table(judged))
    print("\n" + fixture_line())
    if args.show_false:
        for j in judged:
            if j.labelled_correct and j.real_cuda and not j.labels_broken and j.rejections:
                print(f"\n{j.run} problem {j.problem_id}:")
                for r in j.rejections:
                    print(f"  - {r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
