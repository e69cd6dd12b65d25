"""Assemble the examples' recorded samples files from the hand-written candidates beside them.

Each example task has `candidates_<target>/NN_label.py`: hand-written kernels (not model output), some
correct and of clearly different speed, some wrong, some that do not compile. This script wraps each in
an answer as an LLM would write it and writes `samples_<target>.jsonl` in kopt's samples format. It also
adds a duplicate (same code, other comments and spacing: kopt evaluates it once) and an answer with no
code block.

The log-probabilities are ASSIGNED BY HAND (per-token surprisal in SURPRISAL below), not produced by a
model: they exist so the demo exercises the surprisal-guided selection paths. Every line says so in its
"model" field. Rerun after editing a candidate: python examples/build_samples.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = "hand-written examples (logprobs assigned by hand, not a model's)"

# Per-token surprisal (nats) given to each candidate, by file stem. Higher = more surprising.
SURPRISAL = {
    "gelu": {"01": 0.21, "02": 0.34, "03": 0.47, "04": 0.29, "05": 0.52, "06": 0.18, "07": 0.40, "08": 0.44,
             "09": 0.38, "dup": 0.33, "prose": 0.25},
    "swish": {"01": 0.19, "02": 0.31, "03": 0.45, "04": 0.50, "05": 0.41, "06": 0.36, "07": 0.27,
              "dup": 0.30, "prose": 0.22},
}
SURPRISAL_CUDA = {"01": 0.22, "02": 0.41, "03": 0.37, "04": 0.30, "dup": 0.21, "prose": 0.2}


def answer(code: str, intro: str) -> str:
    return f"{intro}\n\n```python\n{code.rstrip()}\n```\n"


def tokens_of(text: str) -> int:
    # A rough token count (about 3.5 characters a token) to go with the hand-assigned surprisal.
    return max(1, round(len(text) / 3.5))


def line(text: str, surprisal: float, note: str) -> dict:
    n = tokens_of(text)
    return {"text": text, "logprob": round(-surprisal * n, 4), "num_tokens": n, "model": MODEL,
            "finish_reason": "stop", "note": note}


def build(task: str, target: str, table: dict[str, float]) -> Path:
    rows = []
    files = sorted((HERE / task / f"candidates_{target}").glob("*.py"))
    for path in files:
        code = path.read_text()
        stem = path.stem.split("_", 1)[0]
        desc = code.splitlines()[0].split(": ", 1)[-1].rstrip(".")
        rows.append(line(answer(code, "Here is an optimized ModelNew with a custom kernel."), table[stem],
                         f"{path.relative_to(HERE)}: {desc}"))
    # A duplicate of the second candidate: other comments and spacing, same code after normalising.
    second = files[1].read_text()
    dup = re.sub(r"^# .*\n", "# same kernel, restated\n", second, count=1).replace("    def forward", "\n    def forward")
    rows.append(line(answer(dup, "The fused kernel again, restated:"), table["dup"], "duplicate of the second candidate"))
    rows.append(line("I would fuse the elementwise operations into one loop, but I need more details about the "
                     "hardware before writing the kernel.", table["prose"], "no code block"))
    out = HERE / task / f"samples_{target}.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


if __name__ == "__main__":
    for task, table in SURPRISAL.items():
        print(build(task, "cpu", table))
        print(build(task, "cuda", SURPRISAL_CUDA))
