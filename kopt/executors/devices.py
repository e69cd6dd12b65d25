"""Every GPU of the box (`--devices 0,1,...`): one evaluator per device, checks in parallel one per device,
timing exclusive per device.

Compiles run on the CPU cores, `--jobs` at a time, through one Builder shared by every device (builds are
content-addressed, so a candidate is compiled once whichever device checks it). Each device then has a worker
thread that takes the next built candidate and checks it on its own device, with its own reference run
there; timing works the same way, one candidate at a time per device, with the reference re-timed around it
on that same device (A/B/A, timing.py), so a speedup always compares two timings of one device.

Devices of different kinds are never mixed in one run: kopt evaluates on the largest group of identical
devices (the first such group on a tie) and says which it left out, as the Ray executor does with nodes.
Verdicts carry the device's name and are cached under it, so two identical GPUs share a cache and two kinds
do not. An illegal memory access ends one candidate's process on one device; every session is a fresh
process, so the next candidate on that device starts clean.

Children see their device alone through CUDA_VISIBLE_DEVICES set to its UUID (with CUDA_DEVICE_ORDER=PCI_BUS_ID,
so the numbering is nvidia-smi's); the sandbox still binds every /dev/nvidia* node.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
import queue
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kopt.errors import ConfigError
from kopt.records import EvalResult, Progress, no_progress


@dataclass(frozen=True)
class Device:
    """One device kopt can evaluate on: `id` as the user names it (nvidia-smi's index), `name` its kind
    (what verdicts and cache keys carry), `selector` the CUDA_VISIBLE_DEVICES value its children get."""

    id: str
    name: str
    selector: str = ""


@dataclass(frozen=True)
class Assignment:
    """Which device a stage of one candidate ran on, and when (kopt's monotonic clock, seconds)."""

    stage: str  # "check" | "time"
    index: int  # the candidate's position in the sources of that call
    device: str  # Device.id
    start_s: float
    end_s: float


def visible(target: str) -> tuple[Device, ...]:
    """The GPUs this process may use, in nvidia-smi's order, restricted to $CUDA_VISIBLE_DEVICES when set.
    Read through nvidia-smi, so kopt's own process never opens a CUDA context; torch's view otherwise."""
    if target != "cuda":
        return ()
    rows = _nvidia_smi()
    if rows is None:
        rows = _torch_devices()
    allowed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if allowed is not None and rows and rows[0].selector.startswith("GPU-"):
        keep: list[Device] = []
        for token in (t.strip() for t in allowed.split(",") if t.strip()):
            match = [d for d in rows if d.id == token or d.selector.startswith(token)]
            keep.extend(d for d in match if d not in keep)
        rows = tuple(keep)
    return tuple(rows)


def _nvidia_smi() -> tuple[Device, ...] | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    rows = []
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",", 2)]
        if len(parts) == 3 and parts[0].isdigit():
            rows.append(Device(id=parts[0], name=parts[2], selector=parts[1]))
    return tuple(rows)


def _torch_devices() -> tuple[Device, ...]:
    try:
        import torch

        if not torch.cuda.is_available():
            return ()
        out = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            uuid = str(getattr(props, "uuid", "") or "")
            out.append(Device(id=str(i), name=props.name, selector=f"GPU-{uuid}" if uuid else str(i)))
        return tuple(out)
    except Exception:  # noqa: BLE001 - no usable CUDA: no devices
        return ()


def choose(spec: str | None, target: str, available: Sequence[Device] | None = None
           ) -> tuple[tuple[Device, ...], tuple[str, ...]]:
    """The devices a run evaluates on, from `--devices` (None: every visible one), and notes for the user.

    Only one kind of device is used: the largest group of identical ones (the first on a tie)."""
    if target != "cuda":
        if spec:
            raise ConfigError("--devices selects GPUs, and the CPU target has none",
                              "leave --devices out (the CPU target uses this machine's cores: --threads, --jobs)")
        return (), ()
    pool = tuple(visible(target) if available is None else available)
    if spec is None or not spec.strip():
        chosen = pool
    else:
        ids = [t.strip() for t in spec.split(",")]
        if any(not t for t in ids) or len(set(ids)) != len(ids):
            raise ConfigError(f"--devices {spec!r} is not a list of distinct GPU indices",
                              "use e.g. --devices 0,1 (the indices nvidia-smi prints)")
        by_id = {d.id: d for d in pool}
        missing = [t for t in ids if t not in by_id]
        if missing:
            have = ", ".join(by_id) or "none"
            raise ConfigError(f"no GPU {', '.join(missing)} here (visible: {have})",
                              "use --devices with indices nvidia-smi lists, or leave it out for every visible GPU")
        chosen = tuple(by_id[t] for t in ids)
    if not chosen:
        return (), ()
    groups: dict[str, list[Device]] = {}
    for d in chosen:
        groups.setdefault(d.name, []).append(d)
    kind = max(groups, key=lambda k: len(groups[k]))  # max keeps the first of equal groups
    left = [d for d in chosen if d.name != kind]
    notes = ()
    if left:
        notes = (f"evaluating on the {len(groups[kind])} {kind} device(s) only; left out "
                 f"{', '.join(f'{d.id} ({d.name})' for d in left)}: timings of different GPU kinds are never "
                 f"mixed (run again with --devices {','.join(d.id for d in left)} for those)",)
    return tuple(groups[kind]), notes


class DeviceFleet:
    """The evaluator API (prepare/check/time/fingerprint/close) over one Evaluator per device."""

    def __init__(self, task, settings: Any, devices: Sequence[Device], progress: Progress = no_progress):
        from kopt.evaluator import Evaluator

        if not devices:
            raise ValueError("DeviceFleet needs at least one device")
        self.task, self.settings, self.progress = task, settings, progress
        self.devices = tuple(devices)
        self.assignments: list[Assignment] = []
        self._lock = threading.Lock()
        first = Evaluator(task, dataclasses.replace(settings, device=self.devices[0].selector),
                          device_name=self.devices[0].name)
        self.evaluators = [first] + [
            Evaluator(task, dataclasses.replace(settings, device=d.selector), device_name=d.name,
                      builder=first.builder) for d in self.devices[1:]]

    # ---- the evaluator API ------------------------------------------------------------------------
    def prepare(self) -> None:
        """Every device's reference run, in parallel: a device that cannot run the task fails here."""
        with cf.ThreadPoolExecutor(max_workers=len(self.evaluators)) as pool:
            for fut in [pool.submit(ev.prepare) for ev in self.evaluators]:
                fut.result()

    def check(self, sources: Sequence[str], on_result=None) -> list[EvalResult]:
        n = len(sources)
        results: list[EvalResult | None] = [None] * n
        built: queue.Queue = queue.Queue()
        counts = {"compile": 0, "check": 0}
        self.progress("compile", 0, n)
        self.progress("check", 0, n)

        def bump(stage: str) -> None:
            with self._lock:
                counts[stage] += 1
                self.progress(stage, counts[stage], n)

        def compile_one(i: int) -> None:
            try:
                self.evaluators[0].builder.build(sources[i])  # cached in the shared Builder for the check
            finally:
                bump("compile")
                built.put(i)

        def device_worker(k: int) -> None:
            ev, dev = self.evaluators[k], self.devices[k]
            while True:
                i = built.get()
                if i is None:
                    return
                t0 = time.monotonic()
                res = ev.check([sources[i]])[0]
                self._record("check", i, dev, t0)
                results[i] = res
                bump("check")
                if on_result:
                    with self._lock:
                        on_result(i, res)

        with cf.ThreadPoolExecutor(max_workers=max(1, self.settings.jobs)) as compiles, \
                cf.ThreadPoolExecutor(max_workers=len(self.evaluators)) as checks:
            workers = [checks.submit(device_worker, k) for k in range(len(self.evaluators))]
            builds = [compiles.submit(compile_one, i) for i in range(n)]
            try:
                for fut in builds:
                    fut.result()
            finally:
                for _ in workers:
                    built.put(None)
            for fut in workers:
                fut.result()
        return [r for r in results if r is not None]

    def time(self, sources: Sequence[str], results: Sequence[EvalResult], on_result=None) -> list[EvalResult]:
        """The correct candidates spread over the devices, one at a time on each; others pass through."""
        if len(sources) != len(results):
            raise ValueError("time() needs one result per source")
        out = list(results)
        todo: queue.Queue = queue.Queue()
        for i, r in enumerate(results):
            if r.correct:
                todo.put(i)
        total, finished = todo.qsize(), [0]
        self.progress("time", 0, total)

        def device_worker(k: int) -> None:
            ev, dev = self.evaluators[k], self.devices[k]
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                t0 = time.monotonic()
                res = ev.time([sources[i]], [results[i]])[0]
                self._record("time", i, dev, t0)
                out[i] = res
                with self._lock:
                    finished[0] += 1
                    self.progress("time", finished[0], total)
                    if on_result:
                        on_result(i, res)

        with cf.ThreadPoolExecutor(max_workers=len(self.evaluators)) as pool:
            for fut in [pool.submit(device_worker, k) for k in range(len(self.evaluators))]:
                fut.result()
        return out

    def fingerprint(self) -> dict[str, str]:
        return self.evaluators[0].fingerprint()

    def close(self) -> None:
        for ev in self.evaluators:
            ev.close()

    def _record(self, stage: str, index: int, device: Device, start_s: float) -> None:
        with self._lock:
            self.assignments.append(Assignment(stage, index, device.id, start_s, time.monotonic()))


__all__ = ["Assignment", "Device", "DeviceFleet", "choose", "visible"]
