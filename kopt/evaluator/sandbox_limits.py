"""Per-child resource limits beyond rlimits: a cgroup per child where the machine allows it.

cgroup v2 when a writable, delegated hierarchy has the pids and memory controllers (pids.max, memory.max, which
counts shmem and tmpfs pages); else the v1 pids + memory (+ cpuacct) controllers when they are mounted writable
(pids.max, memory.limit_in_bytes, which also charges shmem/tmpfs). The child enters its cgroup in a tiny `sh`
prelude before the sandbox starts (so the whole tree, bwrap or the jail included, is inside it), which also sets
oom_score_adj 1000 so the kernel's OOM killer picks a child, never kopt. RLIMIT_NPROC counts every process of a
uid, and does nothing as root: the cgroup's pids.max is the fork-bomb and thread-bomb limit.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from dataclasses import dataclass

V1 = "/sys/fs/cgroup"
_counter = itertools.count()

# Enter every cgroup given as an argument (cgroup.procs paths), set oom_score_adj, then exec the rest.
PRELUDE = ('n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; '
           'echo 1000 > /proc/self/oom_score_adj 2>/dev/null; exec "$@"')


@dataclass
class ChildCgroup:
    level: str  # "cgroup-v2 pids+memory", "cgroup-v1 pids+memory", or "rlimits"
    dirs: dict[str, str]  # controller -> cgroup dir

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in dict.fromkeys(self.dirs.values())]

    def wrap(self, cmd: list[str]) -> list[str]:
        files = self.procs_files()
        return ["/bin/sh", "-c", PRELUDE, "kopt-sandbox", str(len(files)), *files, *cmd]

    def _read(self, ctl: str, name: str) -> str | None:
        d = self.dirs.get(ctl)
        if not d:
            return None
        try:
            with open(os.path.join(d, name)) as f:
                return f.read()
        except OSError:
            return None

    def cpu_ns(self) -> int | None:
        if self.level.startswith("cgroup-v2"):
            raw = self._read("cpu", "cpu.stat") or ""
            for line in raw.splitlines():
                if line.startswith("usage_usec"):
                    return int(line.split()[1]) * 1000
            return None
        raw = self._read("cpuacct", "cpuacct.usage")
        return int(raw) if raw and raw.strip().isdigit() else None

    def oom_killed(self) -> bool:
        """Whether the memory limit was hit (the kernel killed something of this child for memory)."""
        if self.level.startswith("cgroup-v2"):
            raw = self._read("memory", "memory.events") or ""
            return any(ln.split()[0] in ("oom_kill", "max") and ln.split()[1] != "0" for ln in raw.splitlines()
                       if ln.strip())
        raw = self._read("memory", "memory.oom_control") or ""
        for line in raw.splitlines():
            if line.startswith("oom_kill ") and line.split()[1] != "0":
                return True
        return (self._read("memory", "memory.failcnt") or "0").strip() not in ("", "0")

    def pids(self) -> list[int]:
        raw = self._read("pids", "cgroup.procs") or self._read("memory", "cgroup.procs") or ""
        return [int(x) for x in raw.split() if x.isdigit()]

    def kill_all(self) -> None:
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        self.kill_all()
        for d in dict.fromkeys(self.dirs.values()):
            for _ in range(100):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # still has a zombie being reaped
                    time.sleep(0.01)


def _own_v1(controller: str) -> str | None:
    """This process's cgroup dir in a v1 hierarchy (children go under it, so kopt's own limits still hold)."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, ctls, path = line.rstrip("\n").split(":", 2)
                if controller in ctls.split(","):
                    return os.path.join(V1, controller) + (path if path != "/" else "")
    except OSError:
        pass
    return None


def _v2_base() -> str | None:
    for root in (V1, os.path.join(V1, "unified")):
        ctl = os.path.join(root, "cgroup.controllers")
        try:
            with open(ctl) as f:
                have = f.read().split()
        except OSError:
            continue
        if "pids" not in have or "memory" not in have:
            continue
        try:
            with open("/proc/self/cgroup") as f:
                rel = next(ln.split(":", 2)[2].strip() for ln in f if ln.startswith("0::"))
        except (OSError, StopIteration):
            continue
        base = os.path.join(root, rel.lstrip("/"))
        # A process may not sit in a cgroup that has children with controllers: use a sibling-free subtree.
        try:
            with open(os.path.join(base, "cgroup.subtree_control")) as f:
                enabled = f.read().split()
        except OSError:
            continue
        if "pids" in enabled and "memory" in enabled and os.access(base, os.W_OK):
            return base
    return None


_swept: set[str] = set()


def _sweep(parent: str) -> None:
    """Remove empty cgroups left by kopt processes that died without reaping their children (once per dir)."""
    if parent in _swept:
        return
    _swept.add(parent)
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == "kopt" and parts[1].isdigit() and not os.path.exists(f"/proc/{parts[1]}"):
            _rmdir(os.path.join(parent, name))


def create(*, pids_max: int, memory_bytes: int | None) -> ChildCgroup:
    """A fresh cgroup for one child with its limits written, or a 'rlimits' stand-in when none can be made."""
    if os.environ.get("KOPT_CGROUP") == "off":
        return ChildCgroup("rlimits", {})
    name = f"kopt-{os.getpid()}-{next(_counter)}"
    base2 = _v2_base()
    if base2:
        d = os.path.join(base2, name)
        _sweep(base2)
        try:
            os.mkdir(d)
            _write(d, "pids.max", str(pids_max))
            if memory_bytes:
                _write(d, "memory.max", str(memory_bytes))
                _write(d, "memory.swap.max", "0", optional=True)
            return ChildCgroup("cgroup-v2 pids+memory", {"pids": d, "memory": d, "cpu": d})
        except OSError:
            _rmdir(d)
    dirs: dict[str, str] = {}
    try:
        for ctl in ("pids", "memory", "cpuacct"):
            parent = _own_v1(ctl)
            if not parent or not os.access(parent, os.W_OK):
                if ctl == "cpuacct":
                    continue
                raise OSError(f"no writable v1 {ctl} hierarchy")
            d = os.path.join(parent, name)
            _sweep(parent)
            os.mkdir(d)
            dirs[ctl] = d
        _write(dirs["pids"], "pids.max", str(pids_max))
        if memory_bytes:
            _write(dirs["memory"], "memory.limit_in_bytes", str(memory_bytes))
            _write(dirs["memory"], "memory.memsw.limit_in_bytes", str(memory_bytes), optional=True)
            _write(dirs["memory"], "memory.swappiness", "0", optional=True)
        return ChildCgroup("cgroup-v1 pids+memory", dirs)
    except OSError:
        for d in dirs.values():
            _rmdir(d)
        return ChildCgroup("rlimits", {})


def _write(d: str, name: str, value: str, optional: bool = False) -> None:
    try:
        with open(os.path.join(d, name), "w") as f:
            f.write(value)
    except OSError:
        if not optional:
            raise


def _rmdir(d: str) -> None:
    try:
        os.rmdir(d)
    except OSError:
        pass
