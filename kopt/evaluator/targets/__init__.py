"""One module per target (cpu, cuda): compiler flags, device name and toolchain; `get_target(name)`.

The timing loop itself is parent-driven (calls.py over kopt_child.harness): warm up by time, flush the cache
after every commitment, one call at a time with fresh inputs, median and IQR (median_iqr here).
"""

from __future__ import annotations

import importlib
import statistics
from types import ModuleType

TARGETS = ("cpu", "cuda")


def get_target(name: str) -> ModuleType:
    if name not in TARGETS:
        from kopt.errors import ConfigError

        raise ConfigError(f"unknown target {name!r}", "use --target cpu, cuda or auto")
    return importlib.import_module(f"kopt.evaluator.targets.{name}")


def median_iqr(times_ms: list[float]) -> tuple[float, float]:
    """Median and inter-quartile range (§3 "Statistics": report median and IQR, not the mean)."""
    if len(times_ms) < 2:
        return (times_ms[0] if times_ms else float("nan")), 0.0
    q = statistics.quantiles(times_ms, n=4, method="inclusive")
    return statistics.median(times_ms), q[2] - q[0]
