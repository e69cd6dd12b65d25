"""The allowlisted filesystem a sandboxed child sees, as one plan for both isolation levels.

A child's root is empty except for what is listed here: /usr (and the merged-usr symlinks), a few files of /etc
(the dynamic loader's cache, passwd/group, alternatives), the Python prefix(es) with their site-packages, the
hermetic `kopt_child` package at a fixed path, for the compile role the toolchain (CUDA toolkit), for the trusted
reference role the kopt package, the caller's extra read-only paths, and the child's own work dir (the only
writable host path unless the caller names more). /proc is a fresh one of the child's own PID namespace, /dev a
minimal one, /tmp and /dev/shm private size-limited tmpfs. Nothing else: no $HOME, no other candidate's dir, no
sockets, no kopt state. bubblewrap gets this plan as arguments, the fallback as JSON for kopt_child/jail.py.
"""

from __future__ import annotations

import functools
import os
import site
import sys
from dataclasses import dataclass
from pathlib import Path

KOPT_ROOT = Path(__file__).resolve().parents[2]  # the dir holding the kopt package
KOPT_CHILD_DIR = Path(__file__).resolve().parent / "kopt_child"
CHILD_SYS_PATH = "/opt/kopt-child"  # where kopt_child's parent dir appears inside the sandbox
JAIL = KOPT_CHILD_DIR / "jail.py"
_MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "nsswitch.conf", "localtime",
        "alternatives")
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")


@dataclass(frozen=True)
class Mounts:
    """What a child sees besides the base allowlist. Paths are bound at the same path inside."""

    readonly: tuple[str, ...] = ()  # extra paths bound read-only (store entries, task copy...)
    writable: tuple[str, ...] = ()  # extra writable paths (normally none: the work dir is always rw)
    toolchain: bool = False  # compiler + CUDA toolkit + torch headers (compile role only)
    kopt_child: bool = True  # the kopt_child package at CHILD_SYS_PATH/kopt_child
    kopt_package: bool = False  # the whole kopt package at its own path (trusted reference child only)


@dataclass(frozen=True)
class Plan:
    ro: tuple[tuple[str, str], ...]  # (host source, path inside)
    rw: tuple[tuple[str, str], ...]
    symlinks: tuple[tuple[str, str], ...]  # (link target, path inside)
    devs: tuple[str, ...]  # extra device nodes bound as they are (GPU)
    work: str
    tmp_mb: int
    shm_mb: int
    masks: tuple[str, ...] = ()  # dirs inside a bound tree hidden under an empty read-only tmpfs


def _nested(path: str, roots) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


@functools.lru_cache(maxsize=1)
def _python_roots() -> tuple[str, ...]:
    """The interpreter's prefixes and site-packages, resolved, without anything that holds kopt's sources."""
    cands = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             str(Path(sys.executable).parent)]
    try:
        cands += site.getsitepackages()
    except AttributeError:
        pass
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec and spec.origin:
        cands.append(str(Path(spec.origin).resolve().parent.parent))
    out: list[str] = []
    kopt_pkg = str(KOPT_ROOT / "kopt")
    for c in cands:
        for p in {os.path.abspath(c), os.path.realpath(c)}:
            if os.path.isdir(p) and not _nested(kopt_pkg, [p]) and p not in out:
                out.append(p)
    out.sort(key=len)
    return tuple(p for i, p in enumerate(out) if not _nested(p, out[:i]))


def _toolchain() -> list[str]:
    out = []
    for p in ("/usr/local/cuda", os.environ.get("CUDA_HOME") or "", "/opt/rocm"):
        if p and os.path.exists(p):
            out.append(p)
    return out


def plan(work: Path, mounts: Mounts, *, gpu: bool = False, tmp_mb: int = 512, shm_mb: int = 64) -> Plan:
    ro: list[tuple[str, str]] = []
    symlinks: list[tuple[str, str]] = []

    def add_ro(path: str) -> None:
        path = os.path.abspath(path)
        if not os.path.lexists(path):
            return
        if os.path.islink(path):  # e.g. /usr/local/cuda -> cuda-13.0: the link and what it points to
            target = os.readlink(path)
            symlinks.append((target, path))
            add_ro(os.path.join(os.path.dirname(path), target))
            return
        if not _nested(path, [d for _, d in ro]):
            ro.append((path, path))

    add_ro("/usr")
    for name in _MERGED_USR:
        p = "/" + name
        if os.path.islink(p):
            symlinks.append((os.readlink(p), p))
        elif os.path.isdir(p):
            add_ro(p)
    for name in _ETC:
        p = "/etc/" + name
        if os.path.exists(p):
            ro.append((os.path.realpath(p), p))
    for p in _python_roots():
        add_ro(p)
    masks: list[str] = []
    if mounts.toolchain:
        for p in _toolchain():
            add_ro(p)
    else:  # the CUDA toolkit sits inside /usr: hide it from every role but the compiler's
        for p in _toolchain():
            real = os.path.realpath(p)
            if os.path.isdir(real) and _nested(real, [d for _, d in ro]) and real not in masks:
                masks.append(real)
    if mounts.kopt_child and KOPT_CHILD_DIR.is_dir():
        ro.append((str(KOPT_CHILD_DIR), f"{CHILD_SYS_PATH}/kopt_child"))
    if mounts.kopt_package:
        ro.append((str(KOPT_ROOT / "kopt"), str(KOPT_ROOT / "kopt")))
    for p in mounts.readonly:
        add_ro(str(p))
    work_s = os.path.abspath(work)
    rw = [(work_s, work_s)] + [(os.path.abspath(p), os.path.abspath(p)) for p in mounts.writable
                               if os.path.exists(p) and os.path.abspath(p) != work_s]
    devs = tuple(str(d) for d in sorted(Path("/dev").glob("nvidia*"))) if gpu else ()
    # Parents before children, so a bind inside another bind lands on top of it.
    ro.sort(key=lambda sd: sd[1].count("/"))
    rw.sort(key=lambda sd: sd[1].count("/"))
    return Plan(tuple(ro), tuple(rw), tuple(symlinks), devs, work_s, tmp_mb, shm_mb, tuple(masks))


def bwrap_args(p: Plan, env: dict[str, str]) -> list[str]:
    """bubblewrap with every namespace, no capabilities, a clear environment, and only the plan mounted."""
    out = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--hostname", "kopt", "--clearenv"]
    for k, v in env.items():
        out += ["--setenv", k, v]
    out += ["--size", str(p.tmp_mb << 20), "--tmpfs", "/tmp"]
    for target, path in p.symlinks:
        out += ["--symlink", target, path]
    for src, dst in p.ro:
        out += ["--ro-bind", src, dst]
    for m in p.masks:
        out += ["--size", str(1 << 20), "--tmpfs", m, "--remount-ro", m]
    # A read-only /proc: inside bubblewrap's user namespace uid 0 is still root's uid to the kernel's
    # permission checks, which would let it write global sysctls (/proc/sys/vm/...) without any capability.
    out += ["--proc", "/proc", "--remount-ro", "/proc", "--dev", "/dev", "--size", str(p.shm_mb << 20), "--tmpfs", "/dev/shm"]
    for d in p.devs:
        out += ["--dev-bind", d, d]
    for src, dst in p.rw:
        out += ["--bind", src, dst]
    return out + ["--remount-ro", "/", "--chdir", p.work, "--"]


def jail_args(p: Plan, *, uid: int | None, gid: int | None, root: str) -> list[str]:
    """The same plan for kopt_child/jail.py (the fallback without bubblewrap), as KEY=VALUE arguments."""
    sep = "\x1f"
    paths = [root, p.work, *(x for pair in (*p.ro, *p.rw, *p.symlinks) for x in pair), *p.devs, *p.masks]
    if any(sep in x or "\0" in x for x in paths):
        raise ValueError("a sandbox path holds a control character")
    out = [f"root={root}", f"cwd={p.work}", f"tmp_mb={p.tmp_mb}", f"shm_mb={p.shm_mb}",
           f"uid={'' if uid is None else uid}", f"gid={'' if gid is None else gid}"]
    for key, pairs in (("ro", p.ro), ("rw", p.rw), ("sym", p.symlinks)):
        out += [f"{key}={a}{sep}{b}" for a, b in pairs]
    return out + [f"dev={d}" for d in list(DEV_NODES) + list(p.devs)] + [f"mask={m}" for m in p.masks]
