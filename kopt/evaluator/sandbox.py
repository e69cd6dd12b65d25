"""The wall around every untrusted process kopt starts (docs/evaluator.md "Sandbox").

`spawn()` starts one child and returns it live (binary stdin/stdout pipes for a protocol; stderr drained and
capped); `run_sandboxed()` runs one to completion. Per child: an allowlisted filesystem (sandbox_fs.py), every
namespace (user, mount, pid, net, ipc, uts), no capabilities, a clear environment (never a *KEY*/*TOKEN*/
*SECRET*/*PASSWORD* variable), its own cgroup (pids.max, a memory limit that counts tmpfs/shmem) where the
machine allows it (sandbox_limits.py), oom_score_adj 1000, rlimits applied by `prlimit` before the interpreter
starts, a watchdog thread for the timeout, resident memory over the whole tree and the size of its work dir.
Isolation levels: "bwrap" (bubblewrap), "unshare" (util-linux unshare + kopt_child/jail.py, the fallback), and
"none" only when asked for explicitly; the level is recorded in every result.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from kopt.errors import KoptError
from kopt.evaluator import sandbox_fs, sandbox_limits
from kopt.evaluator.baseline import Baseline, baseline_changes, baseline_snapshot
from kopt.evaluator.sandbox_fs import CHILD_SYS_PATH, Mounts
from kopt.evaluator.sandbox_proc import FLOOD_BYTES, KEEP_BYTES, MARK, Limits, Sandboxed, SandboxResult, give_to

# Variables a child may inherit (the env is an allowlist). Everything else is dropped.
ENV_ALLOW = (
    "PATH", "LANG", "LC_ALL", "TORCH_EXTENSIONS_DIR", "MAX_JOBS", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
    "TORCH_CUDA_ARCH_LIST", "CXX", "CC", "PYTHONPATH", "KOPT_HOME", "CUDA_HOME", "LD_LIBRARY_PATH",
)
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
SANDBOX_UID = int(os.environ.get("KOPT_SANDBOX_UID", "60999"))  # the fallback's uid for children of real root
LEVELS = ("bwrap", "unshare", "none")
INSTALL_HINT = ("install bubblewrap: apt-get install bubblewrap (or dnf install bubblewrap / pacman -S "
                "bubblewrap), or pass --isolation none to run candidates unsandboxed")


class IsolationError(KoptError):
    """No sandbox works on this machine and the user did not choose `none` explicitly."""


def _clean_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ENV_ALLOW}
    env["NVIDIA_TF32_OVERRIDE"] = "0"  # pin the reference's precision
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return {k: v for k, v in env.items() if not any(m in k.upper() for m in SECRET_MARKERS)}


# ---- isolation levels -------------------------------------------------------------------------------------

def _real_root() -> bool:
    """Root with the initial user namespace's mapping: children must switch to an unprivileged uid."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split()[:3] == ["0", "0", "4294967295"]
    except OSError:
        return True


def _jail_root() -> str:
    # An empty dir the jail mounts its tmpfs root on (inside its own mount namespace; the host sees nothing).
    d = os.path.join(tempfile.gettempdir(), f"kopt-jail-root-{os.geteuid()}")
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def _unshare_prefix() -> list[str]:
    base = ["unshare", "--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child"]
    return base if os.geteuid() == 0 else base[:1] + ["--user", "--map-root-user"] + base[1:]


def _wrap(cmd: list[str], level: str, plan: sandbox_fs.Plan, env: dict[str, str]) -> list[str]:
    if level == "bwrap":
        return sandbox_fs.bwrap_args(plan, env) + cmd
    if level == "unshare":
        uid = SANDBOX_UID if _real_root() else None
        args = sandbox_fs.jail_args(plan, uid=uid, gid=uid, root=_jail_root())
        return _unshare_prefix() + [sys.executable, "-I", "-S", str(sandbox_fs.JAIL), *args, "--"] + cmd
    return cmd


def _probe(level: str) -> str | None:
    """None when `level` runs a trivial command here with the full allowlist, else what went wrong."""
    if level != "none" and not shutil.which("bwrap" if level == "bwrap" else "unshare"):
        return f"{'bwrap' if level == 'bwrap' else 'unshare'} not found"
    work = Path(tempfile.mkdtemp(prefix="kopt-probe-"))
    try:
        res = run_sandboxed(["/bin/true"], timeout_s=20, work_dir=work, isolation=level, mounts=Mounts())
        return None if res.returncode == 0 else (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def isolation(requested: str | None = None) -> str:
    """The isolation level children get: `requested` (EvalSettings.isolation / --isolation), else
    $KOPT_ISOLATION, else the strongest that works. Raises IsolationError when the chosen (or every) level
    fails; "none" is never picked automatically."""
    return _isolation(requested or os.environ.get("KOPT_ISOLATION") or None)


@functools.lru_cache(maxsize=8)
def _isolation(forced: str | None) -> str:
    if forced == "none":
        return "none"
    if forced is not None and forced not in LEVELS:
        raise IsolationError(f"unknown isolation level {forced!r} (bwrap, unshare or none)")
    why = []
    for level in [forced] if forced else ["bwrap", "unshare"]:
        problem = _probe(level)
        if problem is None:
            return level
        why.append(f"{level}: {problem}")
    raise IsolationError("no sandbox works here (" + "; ".join(why) + ")", INSTALL_HINT)


def detect_isolation() -> str:
    """The level in use (see isolation()); kept for callers that do not pass a requested level."""
    return isolation()


isolation.cache_clear = _isolation.cache_clear  # type: ignore[attr-defined]
detect_isolation.cache_clear = _isolation.cache_clear  # type: ignore[attr-defined]


# ---- the command that starts kopt_child ------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _none_child_path() -> str:
    """Without a mount namespace: a private temp dir holding only a symlink `kopt_child` -> the package."""
    import atexit

    d = tempfile.mkdtemp(prefix="kopt-child-")
    os.symlink(sandbox_fs.KOPT_CHILD_DIR, os.path.join(d, "kopt_child"))
    atexit.register(shutil.rmtree, d, True)
    return d


def child_sys_path(level: str | None = None) -> str:
    """The dir on a child's sys.path that holds `kopt_child` at `level`."""
    return _none_child_path() if (level or isolation()) == "none" else CHILD_SYS_PATH


def python_cmd(module_args: Sequence[str], *, trusted: bool = False, module: str = "kopt_child",
               level: str | None = None) -> list[str]:
    """argv that runs `module` (the hermetic `kopt_child` by default) as __main__ in an isolated interpreter
    (-I: no PYTHONPATH, no user site, no cwd on sys.path). trusted=True also puts kopt's own root on sys.path
    (use with Mounts(kopt_package=True)) so `module` may be e.g. "kopt.evaluator.reference"."""
    paths = [child_sys_path(level)] + ([str(sandbox_fs.KOPT_ROOT)] if trusted else [])
    boot = (f"import sys; sys.path[:0] = {paths!r}; import runpy; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-I", "-c", boot, *module_args]


# ---- one live child --------------------------------------------------------------------------------------

def _prlimit(limits: Limits) -> list[str]:
    if not shutil.which("prlimit"):
        return []
    out = ["prlimit", "--core=0", f"--nofile={limits.nofile}", f"--fsize={limits.fsize_mb << 20}"]
    if limits.cpu_s:
        out.append(f"--cpu={int(limits.cpu_s)}")
    if limits.as_mb:
        out.append(f"--as={limits.as_mb << 20}")
    if not _real_root():  # as root RLIMIT_NPROC is ignored; the cgroup's pids.max is the limit
        out.append(f"--nproc={limits.pids * 4}")
    return out + ["--"]


def spawn(cmd: Sequence[str], *, work: Path, mounts: Mounts = Mounts(), timeout_s: float,
          limits: Limits = Limits(), env: Mapping[str, str] | None = None, gpu: bool = False,
          isolation_level: str | None = None, _own_dir: bool = False) -> Sandboxed:
    """Start `cmd` sandboxed with `work` (created if missing) as its cwd, HOME and only writable dir. Never
    raises for anything the child does; a child that cannot start is a Sandboxed that already finished."""
    level = isolation_level or isolation()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    child_env = _clean_env(env)
    child_env["HOME"] = str(work)
    child_env["TMPDIR"] = str(work)
    plan = sandbox_fs.plan(work, mounts, gpu=gpu, tmp_mb=limits.tmp_mb, shm_mb=limits.shm_mb)
    if level == "unshare" and _real_root():
        give_to(work, mounts.writable, mounts.readonly, SANDBOX_UID)
    mem = limits.memory_mb or ((limits.rss_mb or 16384) + limits.tmp_mb + limits.shm_mb + 1024)
    cg = sandbox_limits.create(pids_max=limits.pids, memory_bytes=mem << 20)
    full = cg.wrap(_wrap(_prlimit(limits) + list(cmd), level, plan, child_env))
    return Sandboxed(full, env=child_env, work=work, level=level, cg=cg, timeout_s=timeout_s, limits=limits,
                     own_dir=_own_dir)


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
    isolation: str | None = None,  # noqa: A002 - the keyword today's callers pass
    mounts: Mounts | None = None,
    stdin_bytes: bytes = b"",
) -> SandboxResult:
    """Run `cmd` sandboxed to completion, stdout/stderr kept (capped); never raises for anything the child
    does. `work_dir` (created if missing) stays for the caller to read; without it a temp dir is used and
    deleted after. Without `mounts` (today's callers) the kopt package and the toolchain are visible too."""
    if mounts is None:
        mounts = Mounts(toolchain=True, kopt_package=True)
    mounts = Mounts(readonly=tuple(mounts.readonly) + tuple(str(p) for p in readable),
                    writable=tuple(mounts.writable) + tuple(str(p) for p in writable),
                    toolchain=mounts.toolchain, kopt_child=mounts.kopt_child, kopt_package=mounts.kopt_package)
    if max_rss_mb and not limits.rss_mb:
        from dataclasses import replace

        limits = replace(limits, rss_mb=max_rss_mb)
    own = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="kopt-sbx-")) if own else Path(work_dir)
    child = spawn(cmd, work=work, mounts=mounts, timeout_s=timeout_s, limits=limits, env=env, gpu=gpu,
                  isolation_level=isolation, _own_dir=own)
    child.drain_stdout(marks=True)
    child.feed(stdin_bytes)
    return child.finish()


def core_limits_note() -> str:
    """For fingerprints: whether rlimits are applied (prlimit present)."""
    return "prlimit" if shutil.which("prlimit") else "none"


__all__ = ["CHILD_SYS_PATH", "FLOOD_BYTES", "KEEP_BYTES", "MARK", "Baseline", "IsolationError", "Limits", "Mounts", "SandboxResult",
           "Sandboxed", "baseline_changes", "baseline_snapshot", "child_sys_path", "detect_isolation",
           "isolation", "python_cmd", "run_sandboxed", "spawn"]
