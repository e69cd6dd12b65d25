"""Where the evaluator's stages run: `--executor local` (this machine, kopt's own child processes) or
`--executor ray` (the nodes of a Ray cluster, each running kopt's own Evaluator in its sandbox there).

Every executor has the evaluator's public API (docs/design.md "The evaluator"), so the pool uses either the
same way: `prepare()`, `check(sources, on_result=)`, `time(sources, results, on_result=)`, `fingerprint()`
(the device kind, toolchain and isolation that verdicts are cached under) and `close()`. What an executor
can do is a class attribute (`remote`: its stages run on other machines), never a test of its name.
"""

from __future__ import annotations

from kopt.errors import ConfigError
from kopt.executors.local import LocalExecutor
from kopt.executors.ray import RayExecutor

EXECUTORS: dict[str, type] = {"local": LocalExecutor, "ray": RayExecutor}


def executor_class(name: str) -> type:
    """The executor class registered under `name` (building nothing)."""
    try:
        return EXECUTORS[name]
    except KeyError:
        raise ConfigError(f"unknown executor {name!r}", f"use --executor {' or '.join(EXECUTORS)}") from None


__all__ = ["EXECUTORS", "LocalExecutor", "RayExecutor", "executor_class"]
