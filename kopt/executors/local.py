"""`--executor local`: the evaluator on this machine (compiles and checks `--jobs` at a time, timing one
candidate at a time with nothing else running), built only when something needs evaluating."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kopt.records import EvalResult, Progress, no_progress
from kopt.task import Task


class LocalExecutor:
    """kopt's Evaluator in this process; its fingerprint needs no Evaluator (a cached rerun starts nothing)."""

    remote = False

    def __init__(self, task: Task, settings: Any, progress: Progress = no_progress, address: str | None = None):
        self.task, self.settings, self.progress = task, settings, progress
        self._evaluator = None

    @property
    def evaluator(self):
        if self._evaluator is None:
            from kopt.evaluator import Evaluator

            self._evaluator = Evaluator(self.task, self.settings, progress=self.progress)
        return self._evaluator

    def prepare(self) -> None:
        self.evaluator.prepare()

    def check(self, sources: Sequence[str], on_result=None) -> list[EvalResult]:
        return self.evaluator.check(sources, on_result=on_result)

    def time(self, sources: Sequence[str], results: Sequence[EvalResult], on_result=None) -> list[EvalResult]:
        return self.evaluator.time(sources, results, on_result=on_result)

    def fingerprint(self) -> dict[str, str]:
        from kopt.evaluator import machine_fingerprint

        return machine_fingerprint(self.settings.target)

    def close(self) -> None:
        evaluator, self._evaluator = self._evaluator, None
        if evaluator is not None:
            evaluator.close()
