"""`kopt init`: write a standalone task file in KernelBench format from a user's module."""

from __future__ import annotations

import os
from pathlib import Path

from kopt.errors import KoptError
from kopt.resources import read_template
from kopt.task import Task, TaskProbe, load_task, probe_task


def write_task_file(task: Task, out: Path, force: bool = False) -> Path:
    """Render templates/task.py.tmpl for `task` into `out`, atomically; never overwrite without force."""
    if out.exists() and not force:
        raise KoptError(f"{out} already exists", "pass --force to overwrite it, or choose another --out")
    text = read_template("task.py.tmpl").format(target=task.target, filename=out.name, source=task.source.rstrip())
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
    path = write_task_file(task, out, force=force)
    # The written file must itself be a valid task (it is what the user will pass to `kopt optimize`).
    probe_task(load_task(str(path)))
    return path, probe
