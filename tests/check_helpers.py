"""Real git repositories holding a reference module and its kernel dir, for test_check.py and test_githook.py.

The kernel dir is written by kopt.output.write_kernel_dir (the writer `kopt optimize` uses) from a
hand-written, correct C++ candidate, with the report fields build_report records.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

REF = """import torch
import torch.nn as nn


class Model(nn.Module):
    def forward(self, x):
        return x * 2.0 + 1.0


def get_inputs():
    return [torch.randn(128, 256)]


def get_init_inputs():
    return []
"""

CANDIDATE = '''import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

_source = r"""
#include <torch/extension.h>
torch::Tensor affine(torch::Tensor x) {
    auto y = torch::empty_like(x);
    const float* in = x.data_ptr<float>();
    float* out = y.data_ptr<float>();
    const int64_t n = x.numel();
    for (int64_t i = 0; i < n; ++i) {
        out[i] = in[i] * 2.0f + 1.0f;
    }
    return y;
}
"""

_ext = load_inline(name="affine_cpu", cpp_sources=_source, functions=["affine"])


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return _ext.affine(x.contiguous())
'''

GIT_ID = ["-c", "user.name=kopt test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def env_for(home: Path, kopt_home: Path, path: str = "/usr/bin:/bin") -> dict[str, str]:
    """A minimal environment: kopt's venv NOT on PATH, a temp HOME, no system git config."""
    return {"PATH": path, "HOME": str(home), "KOPT_HOME": str(kopt_home), "GIT_CONFIG_NOSYSTEM": "1",
            "MAX_JOBS": "1", "LANG": "C.UTF-8", "TMPDIR": os.environ.get("TMPDIR", "/tmp")}


def git(repo: Path, *args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *GIT_ID, *args], cwd=repo, env=env, capture_output=True, text=True, check=check)


def write_kernel(repo: Path, ref_rel: str = "models/affine.py", out_rel: str = "kernels/affine",
                 code: str = CANDIDATE, target: str = "cpu", device: str | None = None, cls: str | None = None,
                 init_args: str | None = None) -> Path:
    from kopt.output import write_kernel_dir
    from kopt.records import Candidate, Sample
    from kopt.task import load_task

    task = load_task(str(repo / ref_rel) + (f":{cls}" if cls else ""), init_args=init_args)
    sample = Sample(text=f"```python\n{code}```\n", logprob=-12.0, num_tokens=120, model="hand-written")
    cand = Candidate(index=0, sample=sample, code=code, code_sha256=sha(code))
    pool = SimpleNamespace(candidates=[cand], samples=[sample])
    if device is None:
        from kopt.evaluator import machine_fingerprint

        device = machine_fingerprint(target)["device"] if target == "cpu" else "NVIDIA H100 80GB HBM3"
    report = {
        "kopt_version": "0.1.0",
        "task": {"name": task.name, "target": task.target, "path": task.path, "class_name": task.class_name,
                 "hash": task.hash, "sets": {}, "inputs": [],
                 "init_args": json.loads(init_args) if init_args else None},
        "target": target, "device": device, "toolchain": "{}", "isolation": "none",
        "sampler": "replay", "model": "hand-written",
        "params": {"k": 1, "temperature": 0.25, "max_tokens": 2048, "seed": 0, "top_m": 3, "surprisal": "mean"},
        "strategy": "surprisal-top-m", "timed": [0], "logprob_std": None, "notes": [],
        "eval_settings": '{"target": "cpu"}',
        "candidates": [{"index": 0, "status": "correct", "reason": "", "surprisal": 0.1, "runtime_ms": 0.02,
                        "speedup": 1.5, "duplicate_of": None, "code_sha256": sha(code)}],
        "winner": {"index": 0, "speedup": 1.5, "runtime_ms": 0.02, "reference_runtime_ms": 0.03, "surprisal": 0.1,
                   "code_sha256": sha(code), "binary_sha256": None, "path": None},
    }
    return write_kernel_dir(repo / out_rel, pool, report)


def make_repo(root: Path, env: dict[str, str]) -> Path:
    """A repo on branch main: models/affine.py, kernels/affine/ and an unrelated README, committed."""
    repo = root / "repo"
    (repo / "models").mkdir(parents=True)
    (repo / "models" / "affine.py").write_text(REF)
    (repo / "README.md").write_text("project\n")
    write_kernel(repo)
    git(repo, "init", "-q", "-b", "main", env=env)
    git(repo, "add", ".", env=env)
    git(repo, "commit", "-q", "-m", "reference and kernel", env=env)
    return repo


def kopt_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kopt", *args]
