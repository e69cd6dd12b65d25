"""Run one untrusted command in its own sandboxed process (hacking-and-sandbox.md §4).

Per child: a new session (group-kill on timeout), a fresh temp cwd and HOME (deleted after), stdin from
/dev/null, an allowlisted environment (never a *KEY*/*TOKEN*/*SECRET*/*PASSWORD* variable), rlimits applied
by `prlimit` before the interpreter starts (so before any candidate import), stdout/stderr read through pipes
with a cap (an "output flood" is killed), an RSS watchdog over the whole process tree, and no network where
the OS allows it: bwrap (read-only root, private /tmp, PID and net namespaces), else `unshare`, else nothing.
The level is detected once and recorded in every result ("bwrap", "unshare", "none").
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Variables a child may inherit (§4: "the env is an allowlist"). Everything else is dropped.
ENV_ALLOW = (
    "PATH", "LANG", "LC_ALL", "TORCH_EXTENSIONS_DIR", "MAX_JOBS", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
    "TORCH_CUDA_ARCH_LIST", "CXX", "CC", "PYTHONPATH", "KOPT_HOME", "CUDA_HOME", "LD_LIBRARY_PATH",
)
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
KEEP_BYTES = 1 << 20  # output kept per stream
FLOOD_BYTES = 16 << 20  # more than this on one stream kills the child ("output flood")
MARK = "KOPT-MARK"  # stdout lines the parent timestamps (timing-phase brackets, see worker.py)


@dataclass(frozen=True)
class Limits:
    """rlimits for one child. `as_mb=None` leaves RLIMIT_AS off (always, for GPU processes: §4)."""

    cpu_s: int | None = None
    as_mb: int | None = None
    fsize_mb: int = 2048
    nofile: int = 1024


@dataclass(frozen=True)
class SandboxResult:
    returncode: int | None
    signal: int | None  # the signal that ended the child, when one did
    killed: str | None  # "timeout", "output flood", "memory" when kopt killed it
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_mb: float
    isolation: str
    marks: tuple[tuple[float, str], ...] = field(default=())  # (time.monotonic(), line) of KOPT-MARK lines

    def describe(self) -> str:
        """What happened, for a person: used when the child left no result payload."""
        if self.killed == "timeout":
            return f"killed after {self.wall_s:.0f} s (run timeout)"
        if self.killed == "output flood":
            return f"killed: output flood (over {FLOOD_BYTES >> 20} MB on stdout/stderr)"
        if self.killed == "memory":
            return f"killed: resident memory {self.peak_rss_mb:.0f} MB over the limit"
        if self.signal:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"process died with {name}"
        return f"exited with code {self.returncode} without a result (os._exit at import?)"


def _clean_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ENV_ALLOW}
    env["NVIDIA_TF32_OVERRIDE"] = "0"  # pin the reference's precision (§2)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return {k: v for k, v in env.items() if not any(m in k.upper() for m in SECRET_MARKERS)}


def _probe(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd + ["/bin/true"], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


_BWRAP_BASE = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
               "--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session"]
_UNSHARE = ["unshare", "--net", "--pid", "--fork", "--kill-child"]
_UNSHARE_USER = ["unshare", "-rn", "--pid", "--fork", "--kill-child"]


@functools.lru_cache(maxsize=1)
def detect_isolation() -> str:
    """The strongest isolation that runs a trivial command here. $KOPT_ISOLATION forces a lower one."""
    forced = os.environ.get("KOPT_ISOLATION")
    if forced in ("bwrap", "unshare", "none"):
        return forced
    if shutil.which("bwrap") and _probe(_BWRAP_BASE):
        return "bwrap"
    if shutil.which("unshare") and (_probe(_UNSHARE) or _probe(_UNSHARE_USER)):
        return "unshare"
    return "none"


@functools.lru_cache(maxsize=1)
def _unshare_cmd() -> list[str]:
    return _UNSHARE if _probe(_UNSHARE) else _UNSHARE_USER


def _wrap(cmd: list[str], isolation: str, work: Path, writable: Sequence[Path], readable: Sequence[Path],
          gpu: bool) -> list[str]:
    if isolation == "bwrap":
        out = list(_BWRAP_BASE)
        if gpu:
            for dev in sorted(Path("/dev").glob("nvidia*")):
                out += ["--dev-bind", str(dev), str(dev)]
        for p in readable:
            out += ["--ro-bind", str(p), str(p)]
        for p in [work, *writable]:
            out += ["--bind", str(p), str(p)]
        return out + ["--chdir", str(work), "--"] + cmd
    if isolation == "unshare":
        return _unshare_cmd() + cmd
    return cmd


def _prlimit(limits: Limits) -> list[str]:
    if not shutil.which("prlimit"):
        return []
    out = ["prlimit", "--core=0", f"--nofile={limits.nofile}", f"--fsize={limits.fsize_mb << 20}"]
    if limits.cpu_s:
        out.append(f"--cpu={int(limits.cpu_s)}")
    if limits.as_mb:
        out.append(f"--as={limits.as_mb << 20}")
    return out + ["--"]


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _tree(root: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def _rss_mb(pids: Sequence[int]) -> float:
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


class _Reader(threading.Thread):
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


def _kill_all(proc: subprocess.Popen, pids: Sequence[int]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in pids:  # descendants that left the group (setsid) but were seen in the tree
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def run_sandboxed(
    cmd: Sequence[str],
    *,
    timeout_s: float,
    limits: Limits = Limits(),
    max_rss_mb: int | None = None,
    env: Mapping[str, str] | None = None,
    writable: Sequence[Path] = (),
    readable: Sequence[Path] = (),
    work_dir: Path | None = None,
    gpu: bool = False,
    isolation: str | None = None,
) -> SandboxResult:
    """Run `cmd` sandboxed; never raises for anything the child does. `work_dir` (created if missing) is its
    cwd and HOME and stays for the caller to read; without it a temp dir is used and deleted after."""
    isolation = isolation or detect_isolation()
    own_dir = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="kopt-sbx-")) if own_dir else Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    child_env = _clean_env(env)
    child_env["HOME"] = str(work)
    child_env["TMPDIR"] = str(work)
    full = _wrap(_prlimit(limits) + list(cmd), isolation, work, writable, readable, gpu)
    marks: list[tuple[float, str]] = []
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=str(work), env=child_env, start_new_session=True)
    except OSError as e:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
        return SandboxResult(None, None, None, "", f"cannot start {full[0]}: {e}", 0.0, 0.0, isolation)
    out_r, err_r = _Reader(proc.stdout, marks), _Reader(proc.stderr, None)
    out_r.start()
    err_r.start()
    killed, peak, seen = None, 0.0, [proc.pid]
    polls = 0
    while proc.poll() is None:
        if time.monotonic() - t0 > timeout_s:
            killed = "timeout"
        elif max(out_r.total, err_r.total) > FLOOD_BYTES:
            killed = "output flood"
        elif polls % 4 == 0:  # the tree walk reads /proc: every 100 ms is enough
            seen = list(dict.fromkeys(seen + _tree(proc.pid)))
            rss = _rss_mb(_tree(proc.pid))
            peak = max(peak, rss)
            if max_rss_mb and rss > max_rss_mb:
                killed = "memory"
        if killed:
            _kill_all(proc, seen)
            break
        polls += 1
        time.sleep(0.025)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        _kill_all(proc, seen)
        proc.wait()
    # Survivors in the group (e.g. a background child holding the pipe open) die with the child.
    _kill_all(proc, [p for p in seen if p != proc.pid] if killed else [])
    out_r.join(timeout=5)
    err_r.join(timeout=5)
    wall = time.monotonic() - t0
    rc = proc.returncode
    sig = None
    if rc is not None and rc < 0:
        sig = -rc
    elif rc is not None and rc > 128 and isolation in ("bwrap", "unshare"):
        sig = rc - 128  # bwrap/unshare report a child's fatal signal as 128+N
    if own_dir:
        shutil.rmtree(work, ignore_errors=True)
    return SandboxResult(
        returncode=rc, signal=sig if not killed else None, killed=killed,
        stdout=out_r.kept.decode(errors="replace"), stderr=err_r.kept.decode(errors="replace"),
        wall_s=wall, peak_rss_mb=peak, isolation=isolation, marks=tuple(marks),
    )


def core_limits_note() -> str:
    """For fingerprints: whether rlimits are applied (prlimit present)."""
    return "prlimit" if shutil.which("prlimit") else "none"


__all__ = ["MARK", "Limits", "SandboxResult", "detect_isolation", "run_sandboxed"]
