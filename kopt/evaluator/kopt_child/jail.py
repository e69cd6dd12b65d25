"""The fallback sandbox's trusted launcher, for machines without bubblewrap (stdlib only, no kopt imports).

kopt runs it as `unshare --mount --pid --net --ipc --uts --fork [--user --map-root-user] python -I -S jail.py
KEY=VALUE... -- CMD...`: it is PID 1 of a fresh PID namespace, in its own mount, network, IPC and UTS namespaces,
before any untrusted code. It builds the allowlisted root (bind mounts, then read-only remounts; a fresh /proc;
a minimal /dev; size-limited tmpfs for /tmp and /dev/shm), pivot_roots into it and detaches the old root, then
drops privilege for good: as real root it switches to an unprivileged uid/gid (no supplementary groups) so
RLIMIT_NPROC, file modes and /proc protections apply; in every case it empties the capability bounding set and
the ambient, permitted, effective and inheritable sets and sets no_new_privs, so `mount -o remount,rw` fails.
Then it execs CMD. Any failure exits 126 with one line on stderr, before CMD runs.
"""

from __future__ import annotations

import ctypes
import os
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4
_SYSCALLS = {"x86_64": {"pivot_root": 155, "capset": 126}, "aarch64": {"pivot_root": 41, "capset": 91}}
_LOCKED = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC  # statvfs f_flag bits match these MS_* bits

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class JailError(Exception):
    pass


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if libc.mount(_b(src), _b(dst), _b(fstype), flags, _b(data)) != 0:
        err = ctypes.get_errno()
        raise JailError(f"mount {src} on {dst}: {os.strerror(err)}")


def _mountpoint(path: str, like: str) -> None:
    if os.path.isdir(like):
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            open(path, "w").close()


def bind(src: str, dst: str, *, readonly: bool) -> None:
    _mountpoint(dst, src)
    mount(src, dst, None, MS_BIND)
    # A bind mount inherits the source's flags; in a user namespace the locked ones must be kept on remount.
    locked = os.statvfs(src).f_flag & _LOCKED
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | locked | (MS_RDONLY if readonly else 0)
    mount(None, dst, None, flags)


def tmpfs(dst: str, size_mb: int, mode: str) -> None:
    os.makedirs(dst, exist_ok=True)
    mount("tmpfs", dst, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size_mb}m,mode={mode}")


def build_root(cfg: dict) -> None:
    root = cfg["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=0755")
    tmpfs(root + "/tmp", cfg["tmp_mb"], "1777")
    for target, path in cfg["symlinks"]:
        full = root + path
        os.makedirs(os.path.dirname(full), exist_ok=True)
        if not os.path.lexists(full):
            os.symlink(target, full)
    for src, dst in cfg["ro"]:
        bind(src, root + dst, readonly=True)
    for path in cfg["masks"]:  # hidden: an empty read-only tmpfs over it
        mount("tmpfs", root + path, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        mount(None, root + path, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    os.makedirs(root + "/proc", exist_ok=True)
    mount("proc", root + "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    dev = root + "/dev"
    os.makedirs(dev, exist_ok=True)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=1m,mode=0755")
    for node in cfg["devs"]:
        host = node if node.startswith("/") else "/dev/" + node
        if os.path.exists(host):
            _mountpoint(root + host, host)
            mount(host, root + host, None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    tmpfs(dev + "/shm", cfg["shm_mb"], "1777")
    mount(None, dev, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC)
    for src, dst in cfg["rw"]:
        bind(src, root + dst, readonly=False)


def pivot(root: str) -> None:
    nr = _SYSCALLS.get(os.uname().machine, {}).get("pivot_root")
    if nr is None:
        raise JailError(f"no pivot_root number for {os.uname().machine}")
    os.chdir(root)
    os.makedirs(".old", exist_ok=True)
    if libc.syscall(nr, b".", b".old") != 0:
        raise JailError(f"pivot_root: {os.strerror(ctypes.get_errno())}")
    os.chdir("/")
    if libc.umount2(b"/.old", MNT_DETACH) != 0:
        raise JailError(f"umount old root: {os.strerror(ctypes.get_errno())}")
    os.rmdir("/.old")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _capset_zero() -> None:
    nr = _SYSCALLS.get(os.uname().machine, {}).get("capset")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable x 2 words, all zero
    if nr is None or libc.syscall(nr, header, data) != 0:
        raise JailError(f"capset: {os.strerror(ctypes.get_errno())}")


def drop_privilege(uid: int | None, gid: int | None) -> None:
    for cap in range(64):  # empty the bounding set while CAP_SETPCAP is still held
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == 22:
            break
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if uid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    _capset_zero()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise JailError("no_new_privs refused")
    try:  # a regained mount would undo everything above: check it is really gone
        with open("/proc/self/status") as f:
            caps = {ln.split(":")[0]: ln.split()[1] for ln in f if ln.startswith("Cap")}
    except OSError as e:
        raise JailError(f"reading capabilities: {e}") from e
    if any(int(v, 16) for v in caps.values()):
        raise JailError(f"capabilities left: {caps}")


SEP = "\x1f"  # between the two paths of a pair (no real path holds it; the parent refuses any that does)
_LISTS = {"ro": "ro", "rw": "rw", "sym": "symlinks", "dev": "devs", "mask": "masks"}


def parse(args: list[str]) -> dict:
    """KEY=VALUE arguments (json would cost the import of re and enum on every child's start)."""
    cfg: dict = {v: [] for v in _LISTS.values()}
    for arg in args:
        key, _, value = arg.partition("=")
        if key in _LISTS:
            cfg[_LISTS[key]].append(value.split(SEP) if SEP in value else value)
        elif key in ("tmp_mb", "shm_mb"):
            cfg[key] = int(value)
        elif key in ("uid", "gid"):
            cfg[key] = int(value) if value else None
        elif key in ("root", "cwd"):
            cfg[key] = value
        else:
            raise JailError(f"unknown setting {key!r}")
    return cfg


def main(argv: list[str]) -> None:
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        raise JailError("usage: jail.py KEY=VALUE... -- CMD...")
    cfg = parse(argv[1:argv.index("--")])
    cmd = argv[argv.index("--") + 1:]
    build_root(cfg)
    pivot(cfg["root"])
    try:
        libc.sethostname(b"kopt", 4)
    except AttributeError:
        pass
    drop_privilege(cfg["uid"], cfg["gid"])
    os.chdir(cfg["cwd"])
    os.execvpe(cmd[0], cmd, os.environ)


if __name__ == "__main__":
    try:
        main(sys.argv)
    except (JailError, OSError, ValueError, KeyError, IndexError) as e:
        sys.stderr.write(f"kopt jail: {e}\n")
        sys.stderr.flush()
        os._exit(126)
