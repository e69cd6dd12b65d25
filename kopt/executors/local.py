"""`--executor local`: the evaluator on this machine (compiles and checks `--jobs` at a time, timing one
candidate at a time with nothing else running), built only when something needs evaluating. With several GPUs
(`--devices`, default every visible one) it is one evaluator per device (devices.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from kopt.records import EvalResult, Progress, no_progress
from kopt.task import Task


class LocalExecutor:
    """kopt's Evaluator in this process; its fingerprint needs no Evaluator (a cached rerun starts nothing).

    `devices`: a `--devices` string (None: every visible GPU) or Device records (the scheduling tests give
    the CPU target labelled stand-ins)."""

    remote = False

    def __init__(self, task: Task, settings: Any, progress: Progress = no_progress, address: str | None = None,
                 devices: str | Sequence[Any] | None = None):
        from kopt.executors.devices import choose, visible

        self.task, self.settings, self.progress = task, settings, progress
        if devices is None or isinstance(devices, str):
            self.devices, self.notes = choose(devices, settings.target)
        else:
            self.devices, self.notes = tuple(devices), ()
        # Pinned to a UUID only when there is a choice: several devices, or one picked out of several.
        self.pinned = bool(self.devices) and (len(self.devices) > 1 or self.devices != visible(settings.target))
        self._evaluator = None

    @property
    def evaluator(self):
        if self._evaluator is None:
            if len(self.devices) > 1:
                from kopt.executors.devices import DeviceFleet

                self._evaluator = DeviceFleet(self.task, self.settings, self.devices, progress=self.progress)
            else:
                from kopt.evaluator import Evaluator

                # One GPU in view: the children see what kopt sees (a MIG slice named in $CUDA_VISIBLE_DEVICES
                # stays as the user set it); only a choice among several pins a child to a UUID.
                one = self.devices[0] if self.devices else None
                pin = one is not None and self.pinned
                settings = dataclasses.replace(self.settings, device=one.selector) if pin else self.settings
                self._evaluator = Evaluator(self.task, settings, progress=self.progress,
                                            device_name=one.name if one else None)
        return self._evaluator

    def prepare(self) -> None:
        self.evaluator.prepare()

    def check(self, sources: Sequence[str], on_result=None) -> list[EvalResult]:
        return self.evaluator.check(sources, on_result=on_result)

    def time(self, sources: Sequence[str], results: Sequence[EvalResult], on_result=None) -> list[EvalResult]:
        return self.evaluator.time(sources, results, on_result=on_result)

    def fingerprint(self) -> dict[str, str]:
        from kopt.evaluator import machine_fingerprint

        return machine_fingerprint(self.settings.target, self.devices[0].name if self.devices else None)

    def close(self) -> None:
        evaluator, self._evaluator = self._evaluator, None
        if evaluator is not None:
            evaluator.close()
