"""Shape variants of a task: the same task with every size its inputs depend on changed to an odd value.

A kernel that hard-codes the task's shape (columns in multiples of 512, a fixed row count, a tile with no tail)
passes every trial at that shape. kopt therefore also runs each candidate on a variant of the task source in
which the sizes `get_inputs` depends on are rewritten to odd, non-power-of-two values, so no vector width, tile
or thread count divides them:

- the module-level ints `get_inputs` reads, directly or through other module-level names (`input_shape =
  (num_classes,)` makes `num_classes` a size); an expression (`N = 2048 * 2`) is replaced by its new value, a
  name derived from another (`groups = in_channels`) is left to follow it, and a tuple (`(3, 5)`) changes
  element by element;
- int literals in the size arguments of tensor factories inside `get_inputs` (`torch.rand(batch_size, 3, 224,
  224)`, the size of `torch.randint`, kopt's own `--input` footer).

Skipped: values below 2 (axes, flags, singleton dims), bools, floats, names only `get_init_inputs` reads (a
kernel size, a reduction axis), and names a class or another function reads directly (the candidate's copy of
the file would keep the old value, so the variant would test kopt, not the kernel). Equal sizes get equal new
values (a square matrix stays square, `224, 224` stays square), distinct sizes stay distinct.

The first variant changes every size at once. Some references accept only some changes (a conv whose
in_channels is a literal 3 in the Model), so the others change one size each, and `choose` combines those the
reference accepts into one variant. Everything here reads source only; running the reference is the caller's.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass

# Tensor factories whose positional arguments (ints or one tuple/list) are the size.
_SIZE_FACTORIES = frozenset({"rand", "randn", "zeros", "ones", "empty"})


@dataclass(frozen=True)
class Variant:
    """The task's source with some sizes changed; `description` reads "batch_size 16->17, dim 16384->16385"."""

    source: str
    description: str
    changes: tuple[tuple[str, object, object], ...] = ()  # (what, old, new)
    complete: bool = True  # every size found was changed


@dataclass(frozen=True)
class _Size:
    label: str  # the module-level name, or "literal 224" for inline literals in get_inputs
    old: object  # int or tuple of ints
    spans: tuple[tuple[int, int, int, int], ...]  # (line0, col0, line1, col1) of each expression to replace


def _eval_int(node: ast.AST):
    """The int (or tuple of ints) a constant expression evaluates to; None for anything else."""
    if isinstance(node, ast.Constant):
        v = node.value
        return v if isinstance(v, int) and not isinstance(v, bool) else None
    if isinstance(node, (ast.Tuple, ast.List)):
        vals = [_eval_int(e) for e in node.elts]
        return tuple(vals) if vals and all(isinstance(v, int) for v in vals) else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval_int(node.operand)
        return (-v if isinstance(node.op, ast.USub) else v) if isinstance(v, int) else None
    if isinstance(node, ast.BinOp):
        a, b = _eval_int(node.left), _eval_int(node.right)
        if not (isinstance(a, int) and isinstance(b, int)):
            return None
        ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
               ast.FloorDiv: lambda: a // b if b else None, ast.Mod: lambda: a % b if b else None,
               ast.Pow: lambda: a ** b if 0 <= b <= 64 else None, ast.LShift: lambda: a << b if 0 <= b <= 64 else None}
        fn = ops.get(type(node.op))
        return fn() if fn else None
    return None


def _reads(node: ast.AST) -> set[str]:
    """Names a function or expression loads that it does not assign itself."""
    loaded, stored = set(), set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            (loaded if isinstance(n.ctx, ast.Load) else stored).add(n.id)
        elif isinstance(n, ast.arg):
            stored.add(n.arg)
    return loaded - stored


def _module_assigns(tree: ast.Module) -> dict[str, ast.AST]:
    """name -> value expression of the module-level `NAME = value` / `NAME: T = value` (the last one wins)."""
    out: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = node.value
                elif isinstance(t, (ast.Tuple, ast.List)) and isinstance(node.value, (ast.Tuple, ast.List)) \
                        and len(t.elts) == len(node.value.elts):
                    for tt, vv in zip(t.elts, node.value.elts):
                        if isinstance(tt, ast.Name):
                            out[tt.id] = vv
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            out[node.target.id] = node.value
    return out


def _closure(names: set[str], assigns: dict[str, ast.AST]) -> set[str]:
    seen: set[str] = set()
    todo = [n for n in names if n in assigns]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo.extend(m for m in _reads(assigns[n]) if m in assigns and m not in seen)
    return seen


def _size_literals(fn: ast.FunctionDef) -> list[ast.Constant]:
    """Int literals >= 2 in the size arguments of tensor factories called inside `fn`."""
    found: list[ast.Constant] = []

    def take(arg: ast.AST) -> None:
        elts = arg.elts if isinstance(arg, (ast.Tuple, ast.List)) else [arg]
        for e in elts:
            if isinstance(e, ast.Constant) and type(e.value) is int and e.value >= 2:
                found.append(e)

    for call in ast.walk(fn):
        if not isinstance(call, ast.Call):
            continue
        f = call.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        sizes: list[ast.AST] = [k.value for k in call.keywords if k.arg == "size"]
        if name in _SIZE_FACTORIES:
            sizes += call.args
        elif name == "randint" and call.args and isinstance(call.args[-1], (ast.Tuple, ast.List)):
            sizes.append(call.args[-1])
        elif name in ("full", "_kopt_tensor"):
            idx = 0 if name == "full" else 1
            if len(call.args) > idx:
                sizes.append(call.args[idx])
        for s in sizes:
            take(s)
    return found


def _sizes(tree: ast.Module) -> list[_Size]:
    """Every size the inputs depend on, in source order (see the module docstring for what counts)."""
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    gi = funcs.get("get_inputs")
    if gi is None:
        return []
    assigns = _module_assigns(tree)
    # What other code reads: a class, any other function, module-level statements other than assignments.
    others: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in ("get_inputs", "get_init_inputs"):
            continue
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.Import, ast.ImportFrom)):
            continue
        others |= _reads(node)
    frozen = _closure(others, assigns)
    wanted = _closure(_reads(gi), assigns) - frozen
    sizes: list[_Size] = []
    for node in tree.body:  # source order
        targets = []
        if isinstance(node, ast.Assign):
            targets = [(t.id, node.value) for t in node.targets if isinstance(t, ast.Name)]
            for t in node.targets:
                if isinstance(t, (ast.Tuple, ast.List)) and isinstance(node.value, (ast.Tuple, ast.List)) \
                        and len(t.elts) == len(node.value.elts):
                    targets += [(tt.id, vv) for tt, vv in zip(t.elts, node.value.elts) if isinstance(tt, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            targets = [(node.target.id, node.value)]
        for name, value in targets:
            if name not in wanted or assigns.get(name) is not value or _reads(value) & set(assigns):
                continue  # not read by get_inputs, reassigned later, or derived from another name (it follows)
            v = _eval_int(value)
            if isinstance(v, int) and v >= 2 or isinstance(v, tuple) and any(x >= 2 for x in v):
                sizes.append(_Size(name, v, ((value.lineno, value.col_offset, value.end_lineno, value.end_col_offset),)))
    by_value: dict[int, list[ast.Constant]] = {}
    for lit in _size_literals(gi):
        by_value.setdefault(lit.value, []).append(lit)
    for v, lits in by_value.items():
        spans = tuple((c.lineno, c.col_offset, c.end_lineno, c.end_col_offset) for c in lits)
        sizes.append(_Size(f"literal {v}", v, spans))
    return sizes


def _new_values(olds: list[int]) -> dict[int, int]:
    """old -> new: odd (so not a power of two and divisible by no vector width), just above the old value,
    equal for equal olds and distinct for distinct ones."""
    out: dict[int, int] = {}
    used: set[int] = set()
    for v in sorted(set(olds)):
        n = v + 1 if v % 2 == 0 else v + 2
        while n in used or n in olds:
            n += 2
        out[v] = n
        used.add(n)
    return out


def _apply(source: str, edits: list[tuple[tuple[int, int, int, int], str]]) -> str:
    # ast columns are UTF-8 byte offsets: edit bytes, from the end so earlier offsets stay valid.
    lines = [ln.encode("utf-8") for ln in source.splitlines(keepends=True)]
    for (l0, c0, l1, c1), text in sorted(edits, key=lambda e: e[0], reverse=True):
        head, tail = lines[l0 - 1][:c0], lines[l1 - 1][c1:]
        lines[l0 - 1 : l1] = [head + text.encode("utf-8") + tail]
    return b"".join(lines).decode("utf-8")


def _even_value(v: int) -> int:
    """The second choice for a size the reference takes only with some factor (in_channels divisible by
    groups): 3v/2 keeps every factor of v/2 and is no power of two; odd sizes and 2 stay as they are."""
    return v * 3 // 2 if v % 2 == 0 and v >= 4 else v


def _render(sizes: list[_Size], source: str, mapping: dict[int, int], complete: bool,
            even: frozenset[str] = frozenset()) -> Variant:
    def new_of(old, label):
        one = _even_value if label in even else (lambda x: mapping.get(x, x))
        if isinstance(old, tuple):
            return tuple(one(x) if x >= 2 else x for x in old)
        return one(old)

    edits, changes = [], []
    for s in sizes:
        new = new_of(s.old, s.label)
        if new == s.old:
            continue
        changes.append((s.label, s.old, new))
        edits += [(span, repr(new)) for span in s.spans]
    text = ", ".join(f"{'literal' if label.startswith('literal ') else label} {_show(old)}->{_show(new)}"
                     for label, old, new in changes)
    return Variant(source=_apply(source, edits), description=text, changes=tuple(changes), complete=complete)


def _show(v) -> str:
    return repr(v).replace(" ", "") if isinstance(v, tuple) else str(v)


def _ints(sizes: list[_Size]) -> list[int]:
    vals: list[int] = []
    for s in sizes:
        vals += [x for x in s.old if x >= 2] if isinstance(s.old, tuple) else [s.old]
    return vals


def shape_variants(task_source: str) -> list[Variant]:
    """Variant 0 changes every size at once (complete=True); when there are several sizes, one variant per size
    follows (complete=False), for when the reference rejects variant 0. [] when nothing can be changed (no
    get_inputs, sizes only in get_init_inputs, a syntax error): the caller should say no shape trial ran."""
    try:
        tree = ast.parse(task_source)
    except SyntaxError:
        return []
    sizes = _sizes(tree)
    if not sizes:
        return []
    mapping = _new_values(_ints(sizes))
    variants = [_render(sizes, task_source, mapping, True)]
    if len(sizes) > 1:
        variants += [_render([s], task_source, mapping, False) for s in sizes]
    return variants


def combine(task_source: str, labels: list[str], *, even: list[str] = ()) -> Variant:
    """One variant changing the sizes named by `labels` (the first element of each Variant.changes entry);
    those also in `even` take the second choice, 3v/2, instead of an odd value."""
    sizes = _sizes(ast.parse(task_source))
    chosen = [s for s in sizes if s.label in set(labels)]
    return _render(chosen, task_source, _new_values(_ints(sizes)), len(chosen) == len(sizes), frozenset(even))


def choose(task_source: str, accepts: Callable[[str], str | None]) -> tuple[list[Variant], list[str]]:
    """The variants to run and notes for the report. `accepts(source)` runs the reference on a variant's
    source and returns None when it ran (finite outputs), else a one-line reason.

    Variant 0 (every size) when the reference accepts it; otherwise the sizes it accepts one at a time (an
    odd value, else 3v/2 for a size that needs a factor), combined into one variant when the reference
    accepts the combination (else the single ones)."""
    variants = shape_variants(task_source)
    if not variants:
        return [], ["no shape trial: get_inputs depends on no module-level int or literal size kopt can change"]
    why = accepts(variants[0].source)
    if why is None:
        return [variants[0]], []
    notes = [f"the reference fails with every size changed ({variants[0].description}): {why}"[:300]]
    labels = [c[0] for c in variants[0].changes]
    singles = variants[1:] if len(labels) > 1 else []
    good: list[Variant] = []
    even: list[str] = []
    for i, label in enumerate(labels):
        if singles and accepts(singles[i].source) is None:
            good.append(singles[i])
            continue
        second = combine(task_source, [label], even=[label])
        if second.changes and accepts(second.source) is None:
            good.append(second)
            even.append(label)
    if not good:
        return [], notes + ["no shape trial: the reference accepts no other size"]
    if len(good) > 1:
        both = combine(task_source, [v.changes[0][0] for v in good], even=even)
        if accepts(both.source) is None:
            good = [both]
    kept = {c[0] for v in good for c in v.changes}
    skipped = [c[0] for c in variants[0].changes if c[0] not in kept]
    if skipped:
        notes.append("shape trial keeps " + ", ".join(skipped) + " (the reference rejects another value)")
    if even:
        notes.append("shape trial makes " + ", ".join(even) + " 3/2 as large (the reference rejects an odd value)")
    return good, notes


def reference_accepts(source: str, *, name: str = "kopt_shape_variant", filename: str | None = None) -> str | None:
    """Run a (trusted) task source's Model once on its own get_inputs(): None when it runs, else the reason
    in one line. It executes the source in this process: for the trusted reference process and tests only.
    `filename` becomes the module's __file__ (for a task that finds its own files through it)."""
    import types

    import torch

    module = types.ModuleType(name)
    if filename:
        module.__file__ = filename
    try:
        exec(compile(source, filename or f"<{name}>", "exec"), module.__dict__)  # noqa: S102 - the user's task
        init = module.get_init_inputs()
        model = module.Model(**init) if isinstance(init, dict) else module.Model(*init)
        with torch.no_grad():
            model(*module.get_inputs())
    except Exception as e:  # noqa: BLE001 - the reference rejects this shape
        return f"{type(e).__name__}: {e}"[:200]
    return None
