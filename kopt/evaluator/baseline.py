"""The machine state a candidate could leave behind to slow the reference timed after it.

`baseline_snapshot()` before a candidate, `baseline_changes(before)` before the next reference timing: leftover
processes of kopt's (descendants of this process that outlived their child), System V shared memory segments
(/proc/sysvipc/shm), POSIX shared memory (/dev/shm), files outside the dirs kopt gave out (`watch` paths), and on a
GPU machine the compute mode and application clocks (nvidia-smi). Any change is a sentence; the evaluator rejects
the candidate that caused it. Every namespace and the cgroup make these unreachable for sandboxed children; this
is the parent's own check that they did.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

_GPU_QUERY = "compute_mode,clocks.applications.graphics,clocks.applications.memory,persistence_mode"


@dataclass(frozen=True)
class Baseline:
    processes: frozenset[int]
    sysv_shm: frozenset[tuple[str, str]]  # (key, shmid)
    posix_shm: frozenset[str]
    files: frozenset[tuple[str, int, int]]  # (path, size, mtime_ns) under the watched paths
    gpu: str | None
    watch: tuple[str, ...] = ()


def _descendants() -> frozenset[int]:
    """kopt's descendants that are not inside a child still running (parallel jobs are not leftovers)."""
    from kopt.evaluator.sandbox_proc import LIVE, children_map

    me = os.getpid()
    live = {c.launcher_pid() for c in list(LIVE)}
    kids = children_map()  # one snapshot: a child forking meanwhile stays inside its launcher's subtree
    out, todo = set(), list(kids.get(me, ()))
    while todo:
        pid = todo.pop()
        if pid not in live:
            out.add(pid)
            todo.extend(kids.get(pid, ()))
    return frozenset(out)


def _names(pids: Sequence[int]) -> str:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read(60).replace(b"\0", b" ").decode(errors="replace").strip()
            out.append(f"{pid} {cmd}")
        except OSError:
            out.append(str(pid))
    return "; ".join(out)


def _sysv_shm() -> frozenset[tuple[str, str]]:
    try:
        with open("/proc/sysvipc/shm") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return frozenset()
    return frozenset((r.split()[0], r.split()[1]) for r in rows if r.split())


def _posix_shm() -> frozenset[str]:
    try:
        return frozenset(os.listdir("/dev/shm"))
    except OSError:
        return frozenset()


def _files(watch: Sequence[str]) -> frozenset[tuple[str, int, int]]:
    out = set()
    for top in watch:
        for root, _dirs, files in os.walk(top):
            for name in files:
                p = os.path.join(root, name)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                out.add((p, st.st_size, st.st_mtime_ns))
    return frozenset(out)


def _gpu_state() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        res = subprocess.run(["nvidia-smi", f"--query-gpu={_GPU_QUERY}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def baseline_snapshot(watch: Sequence[str] = ()) -> Baseline:
    """The state now. `watch`: trusted dirs no child may change (task copy, store, kopt's package)."""
    watch = tuple(str(w) for w in watch)
    return Baseline(_descendants(), _sysv_shm(), _posix_shm(), _files(watch), _gpu_state(), watch)


def baseline_changes(before: Baseline) -> list[str]:
    """What differs from `before`, one sentence each (empty: the baseline is clean)."""
    now = baseline_snapshot(before.watch)
    out = []
    left = now.processes - before.processes
    if left:
        out.append(f"{len(left)} process(es) outlived their sandbox: {_names(sorted(left)[:8])}")
    shm = now.sysv_shm - before.sysv_shm
    if shm:
        out.append(f"{len(shm)} System V shared memory segment(s) left behind")
    pshm = now.posix_shm - before.posix_shm
    if pshm:
        out.append(f"POSIX shared memory left in /dev/shm: {sorted(pshm)[:8]}")
    changed = {p for p, *_ in now.files ^ before.files}
    if changed:
        out.append(f"{len(changed)} trusted file(s) changed: {sorted(changed)[:4]}")
    if now.gpu != before.gpu:
        out.append(f"GPU state changed: {before.gpu!r} -> {now.gpu!r}")
    return out
