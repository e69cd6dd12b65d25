"""`kopt.swap(model, "kernels/<task>")`: put a winning kernel back into a user's model.

Every submodule whose class is the task's reference class is replaced by the winning `ModelNew`, built
with the task's constructor arguments and carrying over the replaced module's state dict (weights and
buffers), so a trained model keeps its parameters.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from kopt.errors import KoptError


def _load_model_new(kernel_dir: Path) -> type:
    path = kernel_dir / "model_new.py"
    name = f"kopt_model_new_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name].ModelNew
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    with _keep_precompiled_header():
        spec.loader.exec_module(module)  # compiles (or loads the cached build of) the kernel
    return module.ModelNew


@contextlib.contextmanager
def _keep_precompiled_header():
    """torch's load_inline(use_pch=False) deletes torch/extension.h.gch, the precompiled header kopt's
    evaluator builds once (~50 s) to halve every later compile; loading a kernel must not throw it away."""
    import torch.utils.cpp_extension as cx

    remove = getattr(cx, "remove_extension_h_precompiler_headers", None)
    if remove is None:
        yield
        return
    cx.remove_extension_h_precompiler_headers = lambda: None
    try:
        yield
    finally:
        cx.remove_extension_h_precompiler_headers = remove


def _init_args(report: dict[str, Any], kernel_dir: Path) -> Any:
    from kopt.task import load_task

    task = report["task"]
    sets = [f"{k}={v!r}" for k, v in (task.get("sets") or {}).items()]
    # The reference as seen from the kernel dir works in any clone; the recorded target from where it ran.
    rel = task.get("target_from_kernel_dir")
    target = str(kernel_dir.resolve() / rel) if rel else task["target"]
    loaded = load_task(target, inputs=task.get("inputs") or None,
                       init_args=json.dumps(task["init_args"]) if task.get("init_args") is not None else None,
                       sets=sets)
    namespace: dict[str, Any] = {}
    sys.path.insert(0, loaded.search_path)
    try:
        exec(compile(loaded.source, loaded.path, "exec"), namespace)  # the user's own reference module
    finally:
        sys.path.remove(loaded.search_path)
    return namespace["get_init_inputs"]()


def swap(model, kernel_dir: str | Path, cls: type | None = None):
    """Replace every instance of the reference class inside `model` with the kernel's ModelNew.

    `cls` narrows the match to one class object; by default submodules are matched by class name.
    Returns the model (replaced in place; a model that *is* the reference comes back as a new module).
    """
    import torch

    kernel_dir = Path(kernel_dir)
    report_path = kernel_dir / "report.json"
    if not report_path.is_file():
        raise KoptError(f"{kernel_dir} has no report.json", "pass the directory `kopt optimize` wrote (kernels/<task>)")
    report = json.loads(report_path.read_text())
    class_name = report["task"]["class_name"]
    model_new = _load_model_new(kernel_dir)
    init = _init_args(report, kernel_dir)

    def matches(module: torch.nn.Module) -> bool:
        return type(module) is cls if cls is not None else type(module).__name__ == class_name

    def replacement(old: torch.nn.Module) -> torch.nn.Module:
        new = model_new(**init) if isinstance(init, dict) else model_new(*init)
        state = old.state_dict()
        if state:
            try:
                new.load_state_dict(state)
            except RuntimeError as e:
                raise KoptError(
                    f"cannot carry {class_name}'s weights into the kernel's ModelNew: {str(e).splitlines()[0]}",
                    "the instance was built with other constructor arguments than the task's; rerun "
                    "`kopt optimize` with matching --init-args",
                ) from None
        ref = next(iter(old.parameters()), None)
        if ref is not None:
            new = new.to(device=ref.device, dtype=ref.dtype)
        new.train(old.training)
        return new

    if matches(model):
        return replacement(model)
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if matches(child):
                setattr(parent, name, replacement(child))
                count += 1
    if count == 0:
        raise KoptError(f"no {class_name} module inside the model", f"kopt.swap replaces submodules of class {class_name}")
    return model
