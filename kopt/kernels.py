"""The committed kernel directory, `kernels/<task>/`, as one typed record.

A kernel directory holds `model_new.py` (what runs: the winning candidate plus a one-line header),
`kernel.cpp|kernel.cu` (its C++/CUDA source alone, for reading and review), `README.md`, `samples.jsonl`
(the pool it was selected from) and `report.json`, which is `KernelRecord.to_json()`. This module is the only
reader and writer of that format: `kopt optimize` writes it (kopt/output.py), `kopt check`, the git hook and
`kopt.swap` read it. Reports written by older kopt versions stay readable (`eval_settings` used to be a JSON
string inside the JSON; `target_from_kernel_dir` and `model_new_sha256` may be missing).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kopt.errors import KoptError

REPORT = "report.json"
MODEL_NEW = "model_new.py"
SAMPLES = "samples.jsonl"
KERNEL_SOURCES = ("kernel.cpp", "kernel.cu")
KERNEL_FILES = (MODEL_NEW, *KERNEL_SOURCES, REPORT)
HEADER_PREFIX = "# Written by kopt"  # the first line of model_new.py


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_target(target: str) -> tuple[str, str | None]:
    """`path.py:Class` -> (path.py, Class); a plain path -> (path, None)."""
    path_s, sep, cls = target.rpartition(":")
    if sep and path_s.endswith(".py") and cls.isidentifier():
        return path_s, cls
    return target, None


@dataclass(frozen=True)
class TaskRecord:
    """The reference the kernel replaces, and how kopt built the task from it."""

    name: str
    target: str  # TARGET as the user typed it where kopt ran
    path: str  # absolute path of the reference file where kopt ran
    class_name: str  # the reference class inside that file (kopt.swap replaces instances of exactly this)
    hash: str  # task hash (AST) when recorded: a different current hash means "stale"
    sets: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    init_args: Any = None  # the constructor arguments (a JSON list or object), not a string
    target_from_kernel_dir: str | None = None  # TARGET relative to the kernel dir: works in any clone

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TaskRecord:
        init = d.get("init_args")
        if isinstance(init, str):  # older reports kept the --init-args text
            try:
                init = json.loads(init)
            except ValueError:
                pass
        return cls(name=str(d.get("name") or ""), target=str(d.get("target") or ""), path=str(d.get("path") or ""),
                   class_name=str(d.get("class_name") or "Model"), hash=str(d.get("hash") or ""),
                   sets=dict(d.get("sets") or {}), inputs=tuple(d.get("inputs") or ()), init_args=init,
                   target_from_kernel_dir=d.get("target_from_kernel_dir"))

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inputs"] = list(self.inputs)
        return d

    def sets_flags(self) -> list[str]:
        return [f"{k}={v!r}" for k, v in self.sets.items()]

    def init_args_json(self) -> str | None:
        return None if self.init_args is None else json.dumps(self.init_args)


@dataclass(frozen=True)
class WinnerRecord:
    index: int
    speedup: float | None = None
    runtime_ms: float | None = None
    runtime_iqr_ms: float | None = None
    reference_runtime_ms: float | None = None
    surprisal: float | None = None
    code_sha256: str = ""  # the candidate's code as extracted from its sample
    binary_sha256: str | None = None
    step: int = 0
    path: str | None = None
    model_new_sha256: str | None = None  # model_new.py as written, header included
    extra: dict[str, Any] = field(default_factory=dict)  # fields this version does not name (speedup_vs_*, ...)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> WinnerRecord:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in names},
                   extra={k: v for k, v in d.items() if k not in names})

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        extra = d.pop("extra")
        return {**d, **extra}


@dataclass(frozen=True)
class KernelRecord:
    """report.json. `extra` keeps fields this version does not know, so reading and writing loses nothing."""

    task: TaskRecord
    winner: WinnerRecord | None
    target: str = "cpu"
    device: str | None = None
    toolchain: Any = None
    isolation: str | None = None
    sampler: str = ""
    model: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # k, temperature, max_tokens, seed, top_m, ...
    strategy: str = ""
    eval_settings: dict[str, Any] = field(default_factory=dict)  # EvalSettings' fields, as an object
    candidates: tuple[dict[str, Any], ...] = ()  # one row per candidate (kopt/output.py's candidate_rows)
    kopt_version: str = ""
    created_at: str = ""
    out_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # timed, notes, logprob_std, run_dir, ttt, ...

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KernelRecord:
        if not isinstance(d, dict) or not isinstance(d.get("task"), dict):
            raise ValueError("no task")
        settings = d.get("eval_settings") or {}
        if isinstance(settings, str):  # before the record was typed: EvalSettings.key(), a JSON string
            try:
                settings = json.loads(settings)
            except ValueError:
                settings = {}
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        winner = d.get("winner")
        return cls(
            task=TaskRecord.from_json(d["task"]),
            winner=WinnerRecord.from_json(winner) if isinstance(winner, dict) else None,
            target=str(d.get("target") or "cpu"), device=d.get("device"), toolchain=d.get("toolchain"),
            isolation=d.get("isolation"), sampler=str(d.get("sampler") or ""), model=str(d.get("model") or ""),
            params=dict(d.get("params") or {}), strategy=str(d.get("strategy") or ""),
            eval_settings=settings if isinstance(settings, dict) else {},
            candidates=tuple(d.get("candidates") or ()), kopt_version=str(d.get("kopt_version") or ""),
            created_at=str(d.get("created_at") or ""), out_dir=d.get("out_dir"),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kopt_version": self.kopt_version, "created_at": self.created_at,
                             "task": self.task.to_json(), "target": self.target, "device": self.device,
                             "toolchain": self.toolchain, "isolation": self.isolation, "sampler": self.sampler,
                             "model": self.model, "params": dict(self.params), "strategy": self.strategy}
        d.update(self.extra)
        d.update({"eval_settings": dict(self.eval_settings), "candidates": list(self.candidates),
                  "winner": self.winner.to_json() if self.winner else None})
        if self.out_dir is not None:
            d["out_dir"] = self.out_dir
        return d

    # ---- where the reference is -------------------------------------------------------------------

    def reference_target(self, kernel_dir: Path) -> str:
        """The reference TARGET usable from here: relative to the kernel dir when recorded (any clone works),
        else the absolute path recorded where kopt ran."""
        rel = self.task.target_from_kernel_dir
        if not rel:
            return self.task.target
        path_s, cls = split_target(rel)
        path = os.path.normpath(os.path.join(str(kernel_dir), path_s))
        return f"{path}:{cls}" if cls else path

    def reference_path(self, kernel_dir: Path) -> Path:
        return Path(split_target(self.reference_target(kernel_dir))[0])

    def load_reference(self, kernel_dir: Path):
        """The current reference as a Task, built with the recorded inputs, constructor arguments and --set."""
        from kopt.task import load_task

        return load_task(self.reference_target(kernel_dir), inputs=list(self.task.inputs) or None,
                         init_args=self.task.init_args_json(), sets=self.task.sets_flags())

    # ---- the command that re-records it -----------------------------------------------------------

    def rerecord_command(self, target: str, kernel_dir: str) -> str:
        """`kopt optimize ... --force` that can produce a kernel for the *current* reference: new samples from
        the recorded sampler and model. Replaying the recorded pool would only re-judge old kernels, written
        for the old reference; a pool that was itself replayed names the model its samples came from."""
        p = self.params
        parts = ["kopt", "optimize", target]
        for spec in self.task.inputs:
            parts += ["--input", spec]
        if self.task.init_args is not None:
            parts += ["--init-args", self.task.init_args_json() or ""]
        for s in self.task.sets_flags():
            parts += ["--set", s]
        if self.sampler and self.sampler != "replay":
            parts += ["--sampler", self.sampler]
        if self.model and self.model != "hand-written":
            parts += ["--model", self.model]
        if p.get("base_url"):
            parts += ["--base-url", str(p["base_url"])]
        if p.get("k"):
            parts += ["--k", str(p["k"])]
        parts += ["--target", self.target, "--out", kernel_dir, "--force"]
        return shlex.join(parts)


def read(kernel_dir: Path) -> KernelRecord:
    """report.json of `kernel_dir`; KoptError saying how to recover when it is missing or unreadable."""
    path = Path(kernel_dir) / REPORT
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        record = KernelRecord.from_json(data)
    except FileNotFoundError:
        raise KoptError(f"{kernel_dir} has no {REPORT}",
                        "pass a directory `kopt optimize` wrote (kernels/<task>)") from None
    except (OSError, ValueError, TypeError) as e:
        raise KoptError(f"{path} is unreadable: {e}", "restore it from git or re-run kopt optimize") from None
    if record.winner is None:
        raise KoptError(f"{path} has no winner", "restore it from git or re-run kopt optimize")
    return record


def write_report(path: Path, record: KernelRecord) -> None:
    path.write_text(json.dumps(record.to_json(), indent=2) + "\n", encoding="utf-8")


# ---- the files and their integrity -------------------------------------------------------------------

def kernel_source(code: str) -> tuple[str, str]:
    """The kernel's C++/CUDA source alone (the string constants that look like C++), and its file name."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return "", "kernel.cpp"
    chunks: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if "#include" in text or "__global__" in text or "torch::Tensor" in text:
                chunks.append(text.strip("\n"))
    source = "\n\n".join(dict.fromkeys(chunks))
    name = "kernel.cu" if "__global__" in source else "kernel.cpp"
    return source + ("\n" if source else ""), name


def model_new_text(code: str, header: str) -> str:
    return header + code.rstrip() + "\n"


def kernel_code(kernel_dir: Path) -> str:
    """model_new.py without kopt's one-line header: the code the winner's hash is over."""
    text = (Path(kernel_dir) / MODEL_NEW).read_text(encoding="utf-8")
    first, _, rest = text.partition("\n")
    return rest if first.startswith(HEADER_PREFIX) else text


def code_matches_record(code: str, full_text: str, winner: WinnerRecord) -> bool:
    """Is model_new.py the recorded winner? Exact against `model_new_sha256`; older reports only hold the
    candidate's code hash, compared with the newline variants the writer could have produced."""
    if winner.model_new_sha256:
        return sha256_text(full_text) == winner.model_new_sha256
    if not winner.code_sha256:
        return False
    return winner.code_sha256 in {sha256_text(code), sha256_text(code.rstrip("\n") + "\n"),
                                  sha256_text(code.rstrip("\n"))}


def kernel_file_mismatch(kernel_dir: Path, code: str) -> str | None:
    """kernel.cpp|cu is a copy for reading; model_new.py is what runs. Say so when the two disagree."""
    expected, name = kernel_source(code)
    path = Path(kernel_dir) / name
    if path.is_file() and path.read_text(encoding="utf-8").strip() != expected.strip():
        return f"{name} differs from the kernel source inside {MODEL_NEW} (which is what runs)"
    return None


@dataclass(frozen=True)
class Integrity:
    code: str  # what runs (model_new.py without its header)
    edited: bool  # model_new.py is not the recorded winner
    mismatch: str | None  # kernel.cpp|cu disagrees with model_new.py


def integrity(kernel_dir: Path, record: KernelRecord) -> Integrity:
    """Compare the files with the record; OSError when model_new.py cannot be read."""
    full = (Path(kernel_dir) / MODEL_NEW).read_text(encoding="utf-8")
    code = kernel_code(kernel_dir)
    assert record.winner is not None
    return Integrity(code=code, edited=not code_matches_record(code, full, record.winner),
                     mismatch=kernel_file_mismatch(kernel_dir, code))
