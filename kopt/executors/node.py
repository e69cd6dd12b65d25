"""What runs on a Ray node: kopt's own Evaluator (trusted code, shipped from the driver as the `kopt`
package), one per (task, settings) in this worker process, evaluating one candidate at a time. The candidate
still runs only in the Evaluator's sandboxed child on the node, exactly as it does locally.

Nothing here decides anything for the driver: each answer carries the source hash the node evaluated and
the node's fingerprint, and the driver (kopt.executors.ray) re-checks both before it accepts a verdict.
"""

from __future__ import annotations

import hashlib
from typing import Any

from kopt.records import EvalResult
from kopt.task import Task


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class NodeWorker:
    """A Ray actor body (kopt.executors.ray wraps it with ray.remote): `check` and `time` one candidate."""

    def __init__(self) -> None:
        self._evaluators: dict[tuple[str, str], Any] = {}

    def _evaluator(self, task: Task, settings: Any):
        key = (task.hash, settings.key())
        ev = self._evaluators.get(key)
        if ev is None:
            from kopt.evaluator import Evaluator

            ev = self._evaluators[key] = Evaluator(task, settings)
        return ev

    def fingerprint(self, target: str) -> dict[str, Any]:
        import socket

        from kopt.evaluator import machine_fingerprint

        return {"fingerprint": machine_fingerprint(target), "host": socket.gethostname()}

    def prepare(self, task: Task, settings: Any) -> None:
        self._evaluator(task, settings).prepare()

    def check(self, task: Task, settings: Any, source: str) -> dict[str, Any]:
        ev = self._evaluator(task, settings)
        result = ev.check([source])[0]
        return {"source_sha256": sha256_text(source), "result": result.to_json(), "fingerprint": ev.fingerprint()}

    def time(self, task: Task, settings: Any, source: str, checked: dict[str, Any]) -> dict[str, Any]:
        ev = self._evaluator(task, settings)
        result = ev.time([source], [EvalResult.from_json(checked)])[0]
        return {"source_sha256": sha256_text(source), "result": result.to_json(), "fingerprint": ev.fingerprint()}

    def close(self) -> None:
        evaluators, self._evaluators = self._evaluators, {}
        for ev in evaluators.values():
            ev.close()
