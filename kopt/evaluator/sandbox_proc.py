"""One live sandboxed child as the parent sees it: pipes, a watchdog thread, CPU time and memory read from /proc
(or its cgroup), and a kill that reaches the whole tree. Everything measured here is measured by the parent."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

KEEP_BYTES = 1 << 20  # output kept per stream
FLOOD_BYTES = 16 << 20  # more than this on one stream kills the child ("output flood")
MARK = "KOPT-MARK"  # stdout lines the parent timestamps (timing-phase brackets of the legacy worker)
_LAUNCHERS = {"sh", "bwrap", "unshare", "prlimit"}
_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
LIVE: weakref.WeakSet = weakref.WeakSet()  # children not yet finished (baseline.py does not count them)


@dataclass(frozen=True)
class Limits:
    """Per-child limits. `as_mb=None` leaves RLIMIT_AS off (always, for GPU processes)."""

    cpu_s: int | None = None
    as_mb: int | None = None
    fsize_mb: int = 2048
    nofile: int = 1024
    pids: int = 512  # cgroup pids.max: processes + threads of the whole tree (torch, inductor workers)
    memory_mb: int | None = None  # cgroup memory limit (tmpfs and shmem count); None: from rss_mb
    rss_mb: int | None = None  # the watchdog's resident-memory limit over the tree
    work_mb: int = 4096  # the work dir's size (the watchdog), on top of RLIMIT_FSIZE per file
    tmp_mb: int = 512  # private /tmp
    shm_mb: int = 256  # private /dev/shm


@dataclass(frozen=True)
class SandboxResult:
    returncode: int | None
    signal: int | None  # the signal that ended the child, when one did
    killed: str | None  # "timeout", "output flood", "memory", "disk", or the reason given to kill()
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_mb: float
    isolation: str
    marks: tuple[tuple[float, str], ...] = field(default=())  # (time.monotonic(), line) of KOPT-MARK lines
    limits: str = ""  # what was enforced: "cgroup-v1 pids+memory", "rlimits", ...
    cpu_ns: int = 0  # CPU time of the child's tree, read by the parent

    def describe(self) -> str:
        """What happened, for a person: used when the child left no result payload."""
        if self.killed == "timeout":
            return f"killed after {self.wall_s:.0f} s (run timeout)"
        if self.killed == "output flood":
            return f"killed: output flood (over {FLOOD_BYTES >> 20} MB on stdout/stderr)"
        if self.killed == "memory":
            return f"killed: memory over the limit (peak resident {self.peak_rss_mb:.0f} MB)"
        if self.killed == "disk":
            return "killed: its work dir grew over the size limit"
        if self.killed:
            return f"killed: {self.killed}"
        if self.signal:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"process died with {name}"
        return f"exited with code {self.returncode} without a result (os._exit at import?)"


# ---- /proc --------------------------------------------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().decode(errors="replace").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st and len(st) > 1:
                kids.setdefault(int(st[1]), []).append(int(entry.name))
    return kids


def tree(root: int) -> list[int]:
    kids = children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def rss_mb(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except (OSError, ValueError):
            pass
    return total / 1024


def tree_cpu_ns(pids: Sequence[int]) -> int:
    """Run time of every live thread (schedstat, ns) plus what reaped children used (cutime+cstime)."""
    total = 0
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        st = _stat(pid)
        if st and len(st) > 14:
            total += (int(st[13]) + int(st[14])) * _TICK_NS
    return total


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def dir_bytes(path: Path, stop_at: int) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
        if total > stop_at:
            break
    return total


def give_to(work: Path, writable: Sequence[str], readonly: Sequence[str], uid: int) -> None:
    """The fallback runs children of real root as `uid`: the work dir (and extra writable dirs) become its own,
    extra read-only dirs become traversable (mkdtemp makes them 0700)."""
    for top in [str(work), *writable]:
        for root, dirs, files in os.walk(top):
            for name in [root] + [os.path.join(root, n) for n in dirs + files]:
                try:
                    os.lchown(name, uid, uid)
                except OSError:
                    pass
    for top in readonly:
        try:
            mode = os.stat(top).st_mode
            if os.path.isdir(top) and mode & 0o005 != 0o005:
                os.chmod(top, mode | 0o005)
        except OSError:
            pass


def _abandon(proc: subprocess.Popen, cg) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        cg.kill_all()
    cg.remove()


class Reader(threading.Thread):
    """Drains one pipe: keeps the first KEEP_BYTES, counts the rest, stamps KOPT-MARK lines."""

    def __init__(self, stream, marks: list | None):
        super().__init__(daemon=True)
        self.stream, self.marks = stream, marks
        self.kept = bytearray()
        self.total = 0
        self._partial = b""

    def run(self) -> None:
        fd = self.stream.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.total += len(chunk)
            if len(self.kept) < KEEP_BYTES:
                self.kept += chunk[: KEEP_BYTES - len(self.kept)]
            if self.marks is not None and len(self._partial) < 65536:
                now = time.monotonic()
                lines = (self._partial + chunk).split(b"\n")
                self._partial = lines.pop()
                for line in lines:
                    if line.startswith(MARK.encode()):
                        self.marks.append((now, line.decode(errors="replace").strip()))


class Sandboxed:
    """A live sandboxed child. `stdin`/`stdout` are binary pipes (the protocol); stderr is drained and capped;
    a watchdog thread enforces the timeout, resident memory over the tree, the work dir's size and floods."""

    def __init__(self, full: list[str], *, env: dict[str, str], work: Path, level: str, cg, timeout_s: float,
                 limits: Limits, own_dir: bool):
        self.isolation, self.work, self._cg, self._limits, self._own_dir = level, work, cg, limits, own_dir
        self._t0 = time.monotonic()
        self._deadline = self._t0 + timeout_s
        self._killed: str | None = None
        self._peak = 0.0
        self._result = None
        self._lock = threading.Lock()
        self._out: Reader | None = None
        self._marks: list[tuple[float, str]] = []
        self._payload: int | None = None
        try:
            self._proc = subprocess.Popen(full, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, cwd=str(work), env=env, start_new_session=True)
        except OSError as e:
            self._proc = None
            self._start_error = f"cannot start {full[0]}: {e}"
            self.stdin = self.stdout = None
            return
        self.stdin, self.stdout = self._proc.stdin, self._proc.stdout
        self._seen = [self._proc.pid]
        self._err = Reader(self._proc.stderr, None)
        self._err.start()
        self._watch = threading.Thread(target=self._watchdog, daemon=True)
        self._watch.start()
        LIVE.add(self)
        # A child its owner drops without finish() must not keep running or keep its cgroup.
        weakref.finalize(self, _abandon, self._proc, cg)

    def launcher_pid(self) -> int | None:
        """The pid kopt started (the sandbox's launcher); its tree is the whole child."""
        return self._proc.pid if self._proc else None

    # -- what the parent reads -------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The outer pid of the payload process (past sh/bwrap/unshare/the jail) once it has started."""
        if self._proc is None:
            return None
        if self._payload is None:
            pid, kids = self._proc.pid, children_map()
            while True:
                comm = _comm(pid)
                if comm not in _LAUNCHERS and not (comm.startswith("python") and self.isolation == "unshare"
                                                   and pid != self._proc.pid and self._is_jail(pid)):
                    if pid != self._proc.pid or self.isolation == "none":
                        self._payload = pid
                    break
                below = kids.get(pid, [])
                if len(below) != 1:
                    break
                pid = below[0]
            return self._payload or self._proc.pid
        return self._payload

    @staticmethod
    def _is_jail(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return b"jail.py" in f.read()
        except OSError:
            return False

    def cpu_ns(self) -> int:
        """CPU time of the child's whole tree so far (its cgroup's counter when there is one)."""
        ns = self._cg.cpu_ns()
        if ns is not None:
            return ns
        # Without a cgroup: the processes the watchdog has seen (a full /proc walk per call would cost the
        # parent tens of ms on a busy machine; the payload itself is always among them).
        return tree_cpu_ns(self._seen) if self._proc else 0

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- control ---------------------------------------------------------------------------------------------
    def kill(self, why: str) -> None:
        with self._lock:
            if self._killed is None:
                self._killed = why
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in self._seen:  # descendants that left the group (setsid) but were seen in the tree
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._cg.kill_all()

    def drain_stdout(self, marks: bool = False) -> None:
        """Keep stdout like stderr instead of handing it to a protocol reader (run_sandboxed)."""
        if self._proc is not None and self._out is None:
            self._out = Reader(self._proc.stdout, self._marks if marks else None)
            self._out.start()

    def feed(self, data: bytes) -> None:
        """Write `data` to stdin from a thread, then close it (the child reads EOF after)."""
        if self._proc is None:
            return

        def write():
            try:
                if data:
                    self._proc.stdin.write(data)
                self._proc.stdin.close()
            except OSError:
                pass

        threading.Thread(target=write, daemon=True).start()

    def _watchdog(self) -> None:
        polls = 0
        while self._proc.poll() is None and self._killed is None:
            now = time.monotonic()
            out_total = self._out.total if self._out else 0
            if now > self._deadline:
                self.kill("timeout")
            elif max(out_total, self._err.total) > FLOOD_BYTES:
                self.kill("output flood")
            elif polls % (4 if self._cg.dirs else 20) == 0:
                # Every ~100 ms the cgroup lists the tree in one read; without one, a /proc walk (which holds
                # the GIL for tens of ms on a busy machine, time the parent's protocol clock would see) every ~0.5 s.
                pids = self._cg.pids() if self._cg.dirs else tree(self._proc.pid)
                self._seen = list(dict.fromkeys(self._seen + pids))
                rss = rss_mb(pids)
                self._peak = max(self._peak, rss)
                if self._limits.rss_mb and rss > self._limits.rss_mb:
                    self.kill("memory")
                elif polls % 20 == 0 and dir_bytes(self.work, self._limits.work_mb << 20) > self._limits.work_mb << 20:
                    self.kill("disk")
            polls += 1
            time.sleep(0.025)

    def finish(self, timeout_s: float | None = None) -> SandboxResult:
        """Wait for the child (at most `timeout_s` more, and never past its own timeout), kill it on timeout,
        reap its whole tree and cgroup, and return what happened. Idempotent."""
        if self._result is not None:
            return self._result
        if self._proc is None:
            self._cg.remove()
            self._result = SandboxResult(None, None, None, "", self._start_error, 0.0, 0.0, self.isolation,
                                         limits=self._cg.level)
            return self._result
        if timeout_s is not None:
            self._deadline = min(self._deadline, time.monotonic() + timeout_s)
        # A blocking wait returns the moment the child exits (Popen.wait(timeout) polls in steps of up to
        # 50 ms); the watchdog thread enforces the deadline by killing the tree, which ends this wait.
        self._proc.wait()
        cpu = self.cpu_ns()
        oom = self._cg.oom_killed()
        self._cg.kill_all()  # survivors (e.g. a background child holding a pipe open) die with the child
        if self._killed:
            self.kill(self._killed)
        for r in (self._err, self._out):
            if r is not None:
                r.join(timeout=5)
        for stream in (self._proc.stdin, self._proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
        self._cg.remove()
        LIVE.discard(self)
        wall = time.monotonic() - self._t0
        rc = self._proc.returncode
        sig = None
        if rc is not None and rc < 0:
            sig = -rc
        elif rc is not None and rc > 128 and self.isolation in ("bwrap", "unshare"):
            sig = rc - 128  # bwrap/unshare report a child's fatal signal as 128+N
        killed = self._killed
        if killed is None and oom and (sig == signal.SIGKILL or rc != 0):  # unshare turns a SIGKILL into exit 1
            killed = "memory"  # the cgroup's memory limit (tmpfs and shmem count) ended it
        if self._own_dir:
            import shutil

            shutil.rmtree(self.work, ignore_errors=True)
        self._result = SandboxResult(
            returncode=rc, signal=sig if not killed else None, killed=killed,
            stdout=self._out.kept.decode(errors="replace") if self._out else "",
            stderr=self._err.kept.decode(errors="replace"), wall_s=wall, peak_rss_mb=self._peak,
            isolation=self.isolation, marks=tuple(self._marks), limits=self._cg.level, cpu_ns=cpu)
        return self._result
