"""Run a task's reference once and print one JSON line: its outputs' shapes and dtypes, or the error.

Usage: python -m kopt.task_probe TASK_FILE [SEARCH_PATH]. Runs in its own process so a user's module that
crashes or hangs never takes kopt down.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time


def _fail(error: str, hint: str) -> None:
    print(json.dumps({"ok": False, "error": error, "hint": hint}))
    sys.exit(0)


def main(argv: list[str]) -> None:
    task_file = argv[0]
    if len(argv) > 1 and argv[1]:
        sys.path.insert(0, argv[1])
    import torch

    spec = importlib.util.spec_from_file_location("kopt_task", task_file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix
        _fail(f"importing the task failed: {type(e).__name__}: {e}", "run `python` on the file to see the full error")
    model_cls = getattr(module, "Model", None)
    if not (isinstance(model_cls, type) and issubclass(model_cls, torch.nn.Module)):
        _fail(f"{getattr(model_cls, '__name__', model_cls)!s} is not a torch.nn.Module subclass",
              "point TARGET at a class that subclasses nn.Module")
    try:
        init = module.get_init_inputs()
        torch.manual_seed(0)
        model = model_cls(**init) if isinstance(init, dict) else model_cls(*init)
    except Exception as e:  # noqa: BLE001
        _fail(f"constructing the module failed: {type(e).__name__}: {e}",
              "pass constructor arguments with --init-args '[...]' or '{\"name\": value}'")
    try:
        inputs = module.get_inputs()
    except Exception as e:  # noqa: BLE001
        _fail(f"get_inputs() failed: {type(e).__name__}: {e}", "fix get_inputs() or the --input specs")
    try:
        with torch.no_grad():
            t0 = time.perf_counter()
            out = model(*inputs)
            forward_ms = (time.perf_counter() - t0) * 1e3
    except Exception as e:  # noqa: BLE001
        _fail(f"forward failed on the given inputs: {type(e).__name__}: {e}",
              "check --input shapes and dtypes against what forward expects")
    outs = out if isinstance(out, (tuple, list)) else (out,)
    described = []
    for i, o in enumerate(outs):
        if not isinstance(o, torch.Tensor):
            _fail(f"forward returned {type(o).__name__} at position {i}, not a tensor",
                  "kopt optimizes modules whose forward returns a tensor or a tuple of tensors")
        described.append({"shape": list(o.shape), "dtype": str(o.dtype).removeprefix("torch.")})
    print(json.dumps({"ok": True, "outputs": described, "forward_ms": forward_ms}))


if __name__ == "__main__":
    main(sys.argv[1:])
