"""Turn a user's TARGET into a task in KernelBench's format: `Model`, `get_inputs()`, `get_init_inputs()`.

TARGET is a task file (`path.py`, its `Model`) or `path.py:ClassName` for any module in a user's file.
The task's *source* is standalone Python: the user's file (with `--set` overrides applied to its
module-level constants) followed by a generated footer that aliases the class to `Model` and defines
`get_inputs`/`get_init_inputs` from `--input`/`--init-args` when the user supplied them.

The task hash is over the AST of that source, so it is stable under comments and whitespace
(KernelBench's `Problem.hash` has the same property); it keys every cache.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kopt.errors import TaskError

DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "bool")
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
FOOTER_MARK = "# ---- kopt task footer (generated) ----"
GENERIC_STEMS = ("task", "model", "reference", "module")

_INPUT_RE = re.compile(
    r"^\s*(?P<dtype>[a-z0-9]+)\s*\[(?P<shape>[0-9,\s]*)\]\s*(?::\s*(?P<kind>[a-z_]+)\s*(?:\((?P<args>[^)]*)\))?)?\s*$"
)


INPUT_FORMS = ('a tensor DTYPE[D0,D1,...] with an optional generator :randn (default for floats), :rand, '
               ':ones, :zeros or :randint(LO,HI) (default for ints), e.g. "float32[512,1024]", "float32[]" (a 0-d '
               'tensor), "int64[32]:randint(0,100)"; or a Python scalar: 0.5, int:3, float:2, bool:true')
_SCALAR_RE = re.compile(r"^\s*(?:(?P<type>int|float|bool)\s*:\s*)?(?P<value>[^\s\[\]:]+)\s*$")


@dataclass(frozen=True)
class InputSpec:
    """One `--input`: a tensor, e.g. `float32[512,1024]` (random normal) or `int64[32]:randint(0,100)`, or a
    Python scalar passed to forward as is (`0.5`, `int:3`, `bool:true`)."""

    dtype: str  # a torch dtype name for tensors; "int", "float" or "bool" for scalars
    shape: tuple[int, ...]
    kind: str = "randn"  # randn | rand | randint | ones | zeros | scalar
    args: tuple[float, ...] = ()
    value: float | int | bool | None = None  # kind == "scalar"

    def to_python(self) -> str:
        if self.kind == "scalar":
            return repr(self.value)
        return f"_kopt_tensor({self.dtype!r}, {list(self.shape)!r}, {self.kind!r}, {list(self.args)!r})"


def _parse_scalar(spec: str) -> InputSpec | None:
    """`0.5`, `3` (an int), `int:3`, `float:2`, `bool:true`, `true`/`false`; None when `spec` is not a scalar."""
    m = _SCALAR_RE.match(spec)
    if not m:
        return None
    kind, raw = m["type"], m["value"]
    low = raw.lower()
    if kind == "bool" or (kind is None and low in ("true", "false")):
        if low not in ("true", "false", "1", "0"):
            raise TaskError(f"--input {spec!r}: {raw!r} is not a bool", "write bool:true or bool:false")
        return InputSpec(dtype="bool", shape=(), kind="scalar", value=low in ("true", "1"))
    try:
        number = float(raw)
    except ValueError:
        if kind is not None:
            raise TaskError(f"--input {spec!r}: {raw!r} is not a number", f"e.g. {kind}:3") from None
        return None
    if kind == "int" or (kind is None and re.fullmatch(r"[+-]?\d+", raw)):
        if not number.is_integer():
            raise TaskError(f"--input {spec!r}: {raw!r} is not an integer", "e.g. int:3, or float:2.5")
        return InputSpec(dtype="int", shape=(), kind="scalar", value=int(number))
    return InputSpec(dtype="float", shape=(), kind="scalar", value=number)


def parse_input(spec: str) -> InputSpec:
    """Parse one `--input` string; raise TaskError naming the problem and the accepted forms."""
    form = INPUT_FORMS
    if "[" not in spec:
        scalar = _parse_scalar(spec)
        if scalar is not None:
            return scalar
    m = _INPUT_RE.match(spec)
    if not m:
        raise TaskError(f"cannot parse --input {spec!r}", form)
    dtype = m["dtype"]
    if dtype not in DTYPES:
        raise TaskError(f"unknown dtype {dtype!r} in --input {spec!r}", f"use one of {', '.join(DTYPES)}")
    dims = [d.strip() for d in m["shape"].split(",") if d.strip()]
    shape = tuple(int(d) for d in dims)
    kind = m["kind"] or ("randint" if dtype in ("int64", "int32") else "randn")
    if dtype == "bool" and not m["kind"]:
        kind = "randint"
    if kind not in ("randn", "rand", "randint", "ones", "zeros"):
        raise TaskError(f"unknown generator {kind!r} in --input {spec!r}", "use randn, rand, randint(LO,HI), ones or zeros")
    args: tuple[float, ...] = ()
    if m["args"]:
        try:
            args = tuple(float(a) for a in m["args"].split(",") if a.strip())
        except ValueError:
            raise TaskError(f"bad numbers in --input {spec!r}", form) from None
    if kind == "randint":
        if not args:
            args = (0, 2) if dtype == "bool" else (0, 100)
        if len(args) != 2 or args[0] >= args[1]:
            raise TaskError(f"randint needs LO < HI in --input {spec!r}", 'e.g. "int64[32]:randint(0,100)"')
        args = (int(args[0]), int(args[1]))
    if kind in ("randn", "rand") and dtype not in FLOAT_DTYPES:
        raise TaskError(f"{kind} makes floats, but --input {spec!r} asks for {dtype}", 'use ":randint(LO,HI)"')
    return InputSpec(dtype=dtype, shape=shape, kind=kind, args=args)


def parse_init_args(text: str | None) -> list[Any] | dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskError(f"--init-args is not valid JSON: {e.msg}", "pass a JSON list like '[1024, 1e-6]' or an object like '{\"dim\": 1024}'") from None
    if not isinstance(value, (list, dict)):
        raise TaskError("--init-args must be a JSON list or object", "e.g. '[1024, 1e-6]' or '{\"dim\": 1024}'")
    return value


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """`--set NAME=VALUE` pairs; VALUE is a Python literal (number, string, list, ...)."""
    out: dict[str, Any] = {}
    for item in items or []:
        name, eq, raw = item.partition("=")
        name = name.strip()
        if not eq or not name.isidentifier():
            raise TaskError(f"cannot parse --set {item!r}", "write it as NAME=VALUE, e.g. --set batch_size=64")
        try:
            out[name] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            raise TaskError(f"--set {item!r}: {raw!r} is not a Python literal", "use a number, a quoted string or a list") from None
    return out


@dataclass(frozen=True)
class Task:
    """A reference module in KernelBench format, ready to hand to the evaluator and the prompt."""

    name: str
    source: str  # standalone task module: defines Model, get_inputs, get_init_inputs
    target: str  # what the user typed (path.py or path.py:Class)
    path: str  # absolute path of the user's file
    class_name: str
    sets: tuple[tuple[str, Any], ...] = ()
    search_path: str = ""  # directory added to sys.path so the user's own imports resolve
    hash: str = field(default="")
    inputs: tuple[str, ...] = ()  # the --input specs as given (recorded so `kopt check` can rebuild the task)
    init_args: str | None = None  # the --init-args JSON as given

    def write(self, directory: Path) -> Path:
        """Write the task module to `directory/task.py` (the form worker processes import)."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "task.py"
        if not path.exists() or path.read_text(encoding="utf-8") != self.source:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(self.source, encoding="utf-8")
            tmp.replace(path)
        return path


def source_hash(source: str) -> str:
    """sha256 of the source's AST: comments, blank lines and formatting do not change it."""
    try:
        canon = ast.dump(ast.parse(source), annotate_fields=True, include_attributes=False)
    except SyntaxError:
        canon = "\n".join(line.strip() for line in source.splitlines() if line.strip())
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def _split_target(target: str) -> tuple[Path, str | None]:
    # A Windows drive letter never reaches here (Linux tool), so the last ':' separates the class.
    path_s, sep, cls = target.rpartition(":")
    if sep and path_s.endswith(".py") and cls.isidentifier():
        return Path(path_s), cls
    return Path(target), None


def apply_sets(source: str, sets: dict[str, Any], path: Path) -> str:
    """Rewrite module-level `NAME = ...` assignments so derived constants recompute from the new value."""
    if not sets:
        return source
    tree = ast.parse(source)
    found: set[str] = set()
    constants: list[str] = []
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, int, int, str]] = []
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            targets = [node.targets[0].id]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            targets = [node.target.id]
        for name in targets:
            constants.append(name)
            if name in sets:
                found.add(name)
                value = node.value
                edits.append((value.lineno, value.col_offset, value.end_lineno, value.end_col_offset, repr(sets[name])))
    missing = sorted(set(sets) - found)
    if missing:
        known = ", ".join(constants) or "none"
        raise TaskError(
            f"--set {missing[0]}: {path.name} has no module-level constant {missing[0]!r}",
            f"module-level constants: {known}",
        )
    # Apply from the end so earlier offsets stay valid.
    for l0, c0, l1, c1, text in sorted(edits, reverse=True):
        head = lines[l0 - 1][:c0]
        tail = lines[l1 - 1][c1:]
        lines[l0 - 1 : l1] = [head + text + tail]
    return "".join(lines)


def _footer(class_name: str, inputs: list[InputSpec] | None, init_args: Any, has_get_inputs: bool,
            has_get_init: bool) -> str:
    parts = [FOOTER_MARK]
    if class_name != "Model":
        parts.append(f"Model = {class_name}")
    if inputs is not None:
        parts.append(
            "import torch as _kopt_torch\n\n\n"
            "def _kopt_tensor(dtype, shape, kind, args):\n"
            "    dt = getattr(_kopt_torch, dtype)\n"
            "    if kind == 'randint':\n"
            "        return _kopt_torch.randint(int(args[0]), int(args[1]), shape).to(dt)\n"
            "    if kind == 'rand':\n"
            "        return _kopt_torch.rand(shape).to(dt)\n"
            "    if kind == 'ones':\n"
            "        return _kopt_torch.ones(shape, dtype=dt)\n"
            "    if kind == 'zeros':\n"
            "        return _kopt_torch.zeros(shape, dtype=dt)\n"
            "    return _kopt_torch.randn(shape).to(dt)\n\n\n"
            "def get_inputs():\n"
            f"    return [{', '.join(s.to_python() for s in inputs)}]"
        )
    if init_args is not None:
        parts.append(f"def get_init_inputs():\n    return {init_args!r}")
    elif not has_get_init:
        parts.append("def get_init_inputs():\n    return []")
    return "\n\n\n".join(parts) + "\n"


def load_task(
    target: str,
    inputs: list[str] | None = None,
    init_args: str | None = None,
    sets: list[str] | None = None,
) -> Task:
    """Build a Task from TARGET and the input options; raise TaskError with a fix for every bad input.

    This only reads and rewrites source; `probe_task` runs the reference (in a subprocess) to check it.
    """
    path, class_name = _split_target(target)
    if not path.exists():
        raise TaskError(f"{path}: no such file", "check the path; TARGET is path.py or path.py:ClassName")
    if path.is_dir() or path.suffix != ".py":
        raise TaskError(f"{path} is not a Python file", "TARGET is path.py or path.py:ClassName")
    try:
        original = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(f"cannot read {path}: {e}", "check the file's permissions and encoding") from None
    try:
        tree = ast.parse(original, filename=str(path))
    except SyntaxError as e:
        raise TaskError(f"{path}:{e.lineno}: syntax error: {e.msg}", "fix the file so that `python` can import it") from None

    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assigned = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    class_name = class_name or "Model"
    if class_name not in classes and class_name not in assigned:
        listing = ", ".join(sorted(classes)) or "none"
        hint = f"classes in the file: {listing}; name one as {path}:ClassName"
        raise TaskError(f"{path} has no class {class_name!r}", hint)

    specs = [parse_input(s) for s in inputs] if inputs else None
    init = parse_init_args(init_args)
    set_values = parse_sets(sets)
    has_get_inputs = "get_inputs" in functions
    if specs is None and not has_get_inputs:
        raise TaskError(
            f"{path} has no get_inputs() and no --input was given",
            'describe each forward argument, e.g. --input "float32[512,1024]" (repeatable, in order)',
        )
    body = apply_sets(original, set_values, path)
    # A task that kopt itself generated already has a footer: regenerate it instead of stacking another.
    if FOOTER_MARK in body and (specs is not None or init is not None or class_name != "Model"):
        body = body.split(FOOTER_MARK)[0].rstrip() + "\n"
    footer = _footer(class_name, specs, init, has_get_inputs, "get_init_inputs" in functions)
    source = body.rstrip() + "\n\n\n" + footer if footer.strip() != FOOTER_MARK else body
    # examples/gelu/task.py is "gelu": a generic file name says less than the folder it sits in.
    stem = path.resolve().parent.name if path.stem in GENERIC_STEMS else path.stem
    name = stem if class_name == "Model" else class_name
    frozen_sets = tuple(sorted(set_values.items()))
    return Task(
        name=name,
        source=source,
        target=target,
        path=str(path.resolve()),
        class_name=class_name,
        sets=frozen_sets,
        search_path=str(path.resolve().parent),
        hash=source_hash(source),
        inputs=tuple(inputs or ()),
        init_args=init_args,
    )


_apply_sets = apply_sets  # the evaluator's old import; remove once it imports apply_sets


@dataclass(frozen=True)
class TaskProbe:
    """What running the reference once showed: output shapes and dtypes, the forward's run time."""

    outputs: tuple[tuple[tuple[int, ...], str], ...]
    forward_ms: float


def probe_task(task: Task, timeout_s: float = 300.0, work_dir: Path | None = None) -> TaskProbe:
    """Run the reference once in a subprocess; raise TaskError with its exception when it fails."""
    from kopt.config import kopt_home

    work_dir = work_dir or (kopt_home() / "tasks" / task.hash[:16])
    task_file = task.write(work_dir)
    cmd = [sys.executable, "-m", "kopt.task_probe", str(task_file), task.search_path]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise TaskError(f"the reference forward of {task.target} ran past {timeout_s:.0f} s",
                        "shrink the shapes with --set NAME=VALUE or smaller --input sizes") from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise TaskError(f"running the reference {task.target} failed: {tail}", "run `python` on the file to see the full error")
    report = json.loads(lines[-1])
    if not report.get("ok"):
        raise TaskError(report["error"], report.get("hint"))
    outs = tuple((tuple(o["shape"]), o["dtype"]) for o in report["outputs"])
    return TaskProbe(outputs=outs, forward_ms=float(report["forward_ms"]))
