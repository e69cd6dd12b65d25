"""`kopt init`: write a standalone task file in KernelBench format from a user's module."""

from __future__ import annotations

import ast
import os
from pathlib import Path

from kopt.errors import KoptError
from kopt.resources import read_template
from kopt.task import FOOTER_MARK, Task, TaskError, TaskProbe, load_task, probe_task

KEEP = ("get_inputs", "get_init_inputs")


def _names_used(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _defined(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, ast.Assign):
        return {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    if isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
        return {node.target.id}
    return set()


def only_what_is_needed(source: str, class_name: str) -> str:
    """The user's file cut down to the imports, the class asked for and the top-level definitions it needs
    (transitively), plus get_inputs/get_init_inputs and what they need; other classes, functions and
    statements (a training loop, `if __name__ == "__main__":`) are left out."""
    tree = ast.parse(source)
    defs: dict[str, list[ast.stmt]] = {}
    for node in tree.body:
        for name in _defined(node):
            defs.setdefault(name, []).append(node)
    wanted, todo = set(), [class_name, *KEEP]
    while todo:
        name = todo.pop()
        if name in wanted or name not in defs:
            continue
        wanted.add(name)
        for node in defs[name]:
            todo.extend(_names_used(node) - wanted)
    keep = [node for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom)) or (_defined(node) & wanted)]
    lines = source.splitlines(keepends=True)
    chunks = []
    for node in keep:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        chunks.append("".join(lines[start - 1:node.end_lineno]).rstrip() + "\n")
    return "\n\n".join(chunks)


def _standalone_source(task: Task) -> str:
    body, mark, footer = task.source.partition(FOOTER_MARK)
    try:
        body = only_what_is_needed(body, task.class_name)
    except SyntaxError:
        return task.source
    return body.rstrip() + ("\n\n\n" + mark + footer if mark else "\n")


def write_task_file(task: Task, out: Path, force: bool = False, source: str | None = None) -> Path:
    """Render templates/task.py.tmpl for `task` into `out`, atomically; never overwrite without force."""
    if out.exists() and not force:
        raise KoptError(f"{out} already exists", "pass --force to overwrite it, or choose another --out")
    source = task.source if source is None else source
    text = read_template("task.py.tmpl").format(target=task.target, filename=out.name, source=source.rstrip())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


def init_task(target: str, inputs: list[str] | None, init_args: str | None, sets: list[str] | None,
              out: Path | None, force: bool = False) -> tuple[Path, TaskProbe]:
    task = load_task(target, inputs=inputs, init_args=init_args, sets=sets)
    probe = probe_task(task)  # fail before writing anything if the reference does not run
    out = out or Path(f"{task.name}_task.py")
    path = write_task_file(task, out, force=force, source=_standalone_source(task))
    # The written file must itself be a valid task (it is what the user will pass to `kopt optimize`); if the
    # cut-down file does not run (a name used in a way the cut could not see), write the whole file instead.
    try:
        probe_task(load_task(str(path)))
    except TaskError:
        path = write_task_file(task, out, force=True)
        probe_task(load_task(str(path)))
    return path, probe
