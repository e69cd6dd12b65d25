"""The wall itself, under BOTH isolation levels (bubblewrap and the forced unshare+jail fallback), on real
sandboxed children that attack it: tampering with trusted files, reading /proc and $HOME, leaving shared memory
behind, fork and thread bombs, filling tmpfs, remounting, writing outside their dir, the network. Children are
small stdlib-only Python programs (no torch import) so each costs well under a second."""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

from kopt.evaluator import sandbox
from kopt.evaluator.sandbox import (
    IsolationError,
    Limits,
    Mounts,
    baseline_changes,
    baseline_snapshot,
    python_cmd,
    run_sandboxed,
)

LEVELS = ["bwrap", "unshare"]


@pytest.fixture(params=LEVELS)
def level(request):
    try:
        return sandbox.isolation(request.param)
    except IsolationError as e:
        pytest.skip(f"{request.param} does not work here: {e}")


def child(level, code: str, work: Path, *, mounts=Mounts(), timeout_s=30, **kw):
    return run_sandboxed([sys.executable, "-I", "-S", "-c", code], timeout_s=timeout_s, work_dir=work,
                         isolation=level, mounts=mounts, **kw)


def report(res) -> dict:
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert lines, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    return json.loads(lines[-1])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


TRY_WRITE = """
import json, os, sys
out = {}
for p in sys.argv[1:]:
    try:
        with open(p, 'a') as f:
            f.write('# tampered\\n')
        out[p] = 'WROTE'
    except OSError as e:
        out[p] = type(e).__name__
print(json.dumps(out))
"""


def test_none_is_refused_unless_chosen_explicitly(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither bwrap nor unshare can be found
    monkeypatch.delenv("KOPT_ISOLATION", raising=False)
    sandbox.isolation.cache_clear()
    try:
        with pytest.raises(IsolationError) as err:
            sandbox.isolation()
        assert "apt-get install bubblewrap" in str(err.value) and "\n" not in str(err.value)
        assert sandbox.isolation("none") == "none"
        monkeypatch.setenv("KOPT_ISOLATION", "none")
        assert sandbox.isolation() == "none"
        res = run_sandboxed(["/bin/echo", "hi"], timeout_s=10, isolation="none", mounts=Mounts())
        assert res.isolation == "none" and res.stdout.strip() == "hi"
    finally:
        sandbox.isolation.cache_clear()


def test_trusted_files_cannot_be_changed(level, tmp_path):
    task = tmp_path / "task_copy" / "task.py"
    task.parent.mkdir()
    task.write_text("class Model: pass\n")
    store = tmp_path / "store" / "ab" / "ext.so"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"\x7fELF built by kopt")
    judge = sandbox.sandbox_fs.KOPT_ROOT / "kopt" / "evaluator" / "judge.py"
    before = {p: sha(p) for p in (task, store, judge)}
    mounts = Mounts(readonly=(str(task.parent), str(tmp_path / "store")), kopt_package=True)
    res = run_sandboxed([sys.executable, "-I", "-S", "-c", TRY_WRITE, str(task), str(store), str(judge),
                         str(tmp_path / "work" / "mine.txt")], timeout_s=30, work_dir=tmp_path / "work",
                        isolation=level, mounts=mounts)
    out = report(res)
    assert out[str(tmp_path / "work" / "mine.txt")] == "WROTE"  # control: its own dir is writable
    for p in (task, store, judge):
        assert out[str(p)] != "WROTE", out
        assert sha(p) == before[p]


def test_proc_shows_only_the_sandbox_and_home_is_absent(level, tmp_path):
    canary = Path.home() / f".kopt-canary-{uuid.uuid4().hex}"
    canary.write_text("secret")
    try:
        code = ("import json, os\n"
                "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
                "cmds = [open(f'/proc/{p}/cmdline','rb').read().decode(errors='replace') for p in pids]\n"
                f"home = {str(Path.home())!r}\n"
                "try: listing = os.listdir(home)\n"
                "except OSError as e: listing = type(e).__name__\n"
                f"print(json.dumps({{'pids': pids, 'cmds': cmds, 'home': listing, 'canary': os.path.exists({str(canary)!r}),"
                "'status': open('/proc/self/status').read(), 'uid': os.getuid(),"
                "'oom': open('/proc/self/oom_score_adj').read().strip()}))\n")
        out = report(child(level, code, tmp_path / "work"))
    finally:
        canary.unlink()
    assert len(out["pids"]) <= 4, out["cmds"]  # its own PID namespace: the payload and a launcher at most
    assert not any("-m\x00pytest" in c or c.startswith("/process_api") for c in out["cmds"])
    assert out["canary"] is False
    assert out["home"] == "FileNotFoundError" or all(not n.startswith(".kopt-canary") and n != ".ssh"
                                                      for n in out["home"])
    caps = {ln.split(":")[0]: int(ln.split()[1], 16) for ln in out["status"].splitlines() if ln.startswith("Cap")}
    assert caps and not any(caps.values()), caps  # no capability at all, bounding set included
    assert "NoNewPrivs:\t1" in out["status"]
    assert out["oom"] == "1000"  # the OOM killer picks a child, never kopt
    if level == "unshare" and sandbox._real_root():
        assert out["uid"] == sandbox.SANDBOX_UID  # real root dropped to an unprivileged uid


def test_remount_mount_and_sysctl_writes_fail(level, tmp_path):
    code = ("import ctypes, json, subprocess\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "r = {}\n"
            "r['remount_usr'] = libc.mount(None, b'/usr', None, 32 | 4096, None)\n"
            "r['remount_root'] = libc.mount(None, b'/', None, 32, None)\n"
            "r['tmpfs'] = libc.mount(b'tmpfs', b'/tmp', b'tmpfs', 0, None)\n"
            "p = subprocess.run(['mount', '-o', 'remount,rw', '/usr'], capture_output=True)\n"
            "r['mount_cmd'] = p.returncode\n"
            "try:\n"
            "    open('/usr/kopt-remount-test', 'w'); r['write_usr'] = 'WROTE'\n"
            "except OSError as e:\n"
            "    r['write_usr'] = type(e).__name__\n"
            "try:\n"
            "    v = open('/proc/sys/vm/swappiness').read()\n"
            "    open('/proc/sys/vm/swappiness', 'w').write(v); r['sysctl'] = 'WROTE'\n"
            "except OSError as e:\n"
            "    r['sysctl'] = type(e).__name__\n"
            "print(json.dumps(r))\n")
    out = report(child(level, code, tmp_path / "work"))
    assert out["sysctl"] != "WROTE"  # a global kernel setting: uid 0 in a user namespace is still root's uid
    assert out["remount_usr"] == -1 and out["remount_root"] == -1 and out["tmpfs"] == -1, out
    assert out["mount_cmd"] != 0 and out["write_usr"] != "WROTE"
    assert not Path("/usr/kopt-remount-test").exists()


def test_sysv_and_posix_shared_memory_do_not_outlive_the_child(level, tmp_path):
    before = baseline_snapshot()
    name = f"kopt-shm-{uuid.uuid4().hex}"
    code = ("import ctypes, json, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "libc.shmget.restype = ctypes.c_int\n"
            "sid = libc.shmget(0x6b6f7074, 16 << 20, 0o1000 | 0o666)\n"  # IPC_CREAT, a fixed key
            f"open('/dev/shm/{name}', 'wb').write(b'x' * 4096)\n"
            "print(json.dumps({'sid': sid, 'seen': open('/proc/sysvipc/shm').read().count('\\n')}))\n")
    out = report(child(level, code, tmp_path / "work"))
    assert out["sid"] >= 0 and out["seen"] >= 2  # control: the segment existed inside
    assert not (Path("/dev/shm") / name).exists()
    changes = [c for c in baseline_changes(before) if "shared memory" in c]
    assert changes == [], changes


def test_fork_bomb_dies_within_budget_and_leaves_nothing(level, tmp_path):
    before = baseline_snapshot()
    code = ("import os, time\n"
            "while True:\n"
            "    try:\n"
            "        os.fork()\n"
            "    except OSError:\n"
            "        time.sleep(0.01)\n")
    t0 = time.monotonic()
    res = child(level, code, tmp_path / "work", timeout_s=4, limits=Limits(pids=64))
    assert time.monotonic() - t0 < 20
    assert res.killed == "timeout" or res.returncode != 0
    time.sleep(0.2)
    assert [c for c in baseline_changes(before) if "process" in c] == []


def test_thread_bomb_is_capped(level, tmp_path):
    code = ("import json, threading, time\n"
            "n = 0\n"
            "try:\n"
            "    while n < 5000:\n"
            "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start(); n += 1\n"
            "except RuntimeError:\n"
            "    pass\n"
            "print(json.dumps({'threads': n}))\n")
    res = child(level, code, tmp_path / "work", timeout_s=20, limits=Limits(pids=64))
    if res.limits.startswith("cgroup"):
        assert report(res)["threads"] < 64
    else:
        assert res.returncode is not None


def test_tmpfs_filler_is_bounded(level, tmp_path):
    code = ("import json, os\n"
            "r = {}\n"
            "for d in ('/tmp', '/dev/shm'):\n"
            "    n = 0\n"
            "    try:\n"
            "        with open(d + '/fill', 'wb') as f:\n"
            "            while n < (1 << 30):\n"
            "                f.write(b'x' * (1 << 20)); f.flush(); n += 1 << 20\n"
            "    except OSError as e:\n"
            "        r[d] = [n >> 20, e.errno]\n"
            "    os.unlink(d + '/fill')\n"
            "print(json.dumps(r))\n")
    out = report(child(level, code, tmp_path / "work", limits=Limits(tmp_mb=32, shm_mb=16)))
    assert out["/tmp"][0] <= 32 and out["/tmp"][1] == 28  # ENOSPC at the size limit
    assert out["/dev/shm"][0] <= 16 and out["/dev/shm"][1] == 28


def test_tmpfs_counts_against_the_memory_limit(level, tmp_path):
    code = ("f = open('/tmp/fill', 'wb')\n"
            "while True:\n"
            "    f.write(b'x' * (1 << 20)); f.flush()\n")
    res = child(level, code, tmp_path / "work", timeout_s=30, limits=Limits(tmp_mb=2048, memory_mb=128))
    if not res.limits.startswith("cgroup"):
        pytest.skip("no writable cgroup on this machine")
    assert res.killed == "memory", (res, res.describe())


def test_work_dir_size_is_limited(level, tmp_path):
    code = ("import time\n"
            "f = open('big', 'wb')\n"
            "while True:\n"
            "    f.write(b'x' * (4 << 20)); f.flush(); time.sleep(0.01)\n")
    res = child(level, code, tmp_path / "work", timeout_s=60, limits=Limits(work_mb=64))
    assert res.killed == "disk", res


def test_nothing_is_written_outside_its_own_dir(level, tmp_path):
    tag = f"kopt-escape-{uuid.uuid4().hex}"
    targets = ["/", "/tmp", "/dev/shm", "/opt/kopt-child", "/etc", "/usr", "/root", str(Path.home()),
               str(sandbox.sandbox_fs.KOPT_ROOT), str(tmp_path), "/var/tmp", "/run"]
    code = ("import json, os, sys\n"
            "ok = []\n"
            "for d in sys.argv[2:]:\n"
            "    try:\n"
            "        open(os.path.join(d, sys.argv[1]), 'w').write('x'); ok.append(d)\n"
            "    except OSError:\n"
            "        pass\n"
            "print(json.dumps({'ok': ok}))\n")
    work = tmp_path / "work"
    res = run_sandboxed([sys.executable, "-I", "-S", "-c", code, tag, *targets, str(work)], timeout_s=30,
                        work_dir=work, isolation=level, mounts=Mounts())
    assert str(work) in report(res)["ok"]  # control
    assert (work / tag).exists()
    for d in targets:
        assert not (Path(d) / tag).exists(), d


def test_network_is_unreachable(level, tmp_path):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    code = ("import json, socket, os\n"
            "r = {'ifaces': sorted(os.listdir('/sys/class/net')) if os.path.isdir('/sys/class/net') else []}\n"
            "for host in ('127.0.0.1', '1.1.1.1'):\n"
            "    try:\n"
            f"        socket.create_connection((host, {port} if host == '127.0.0.1' else 53), timeout=2); r[host] = 'OK'\n"
            "    except OSError as e:\n"
            "        r[host] = type(e).__name__\n"
            "print(json.dumps(r))\n")
    try:
        out = report(child(level, code, tmp_path / "work"))
    finally:
        server.close()
    assert out["127.0.0.1"] != "OK" and out["1.1.1.1"] != "OK", out


def test_kopt_child_is_hermetic(level, tmp_path):
    # python_cmd's child sees kopt_child at its fixed path and none of kopt's own code.
    probe = ("import json, sys\n"
             "try:\n"
             "    import kopt.evaluator; k = 'IMPORTED'\n"
             "except ImportError:\n"
             "    k = 'absent'\n"
             "import kopt_child\n"
             "print(json.dumps({'kopt': k, 'child': kopt_child.__file__, 'path0': sys.path[0],"
             " 'mods': sorted(m for m in sys.modules if m.startswith('kopt') and getattr(sys.modules[m], '__file__', None))}))\n")
    cmd = python_cmd([], level=level)
    cmd[3] = cmd[3].split("import runpy")[0] + probe
    out = report(run_sandboxed(cmd, timeout_s=30, work_dir=tmp_path / "work", isolation=level, mounts=Mounts()))
    assert out["kopt"] == "absent" and out["path0"] == sandbox.CHILD_SYS_PATH
    assert out["child"].startswith(sandbox.CHILD_SYS_PATH) and out["mods"] == ["kopt_child"]


def test_spawn_pipes_cpu_time_and_kill(level, tmp_path):
    echo = ("import sys, time\n"
            "line = sys.stdin.buffer.readline()\n"
            "t = time.process_time()\n"
            "while time.process_time() - t < 0.3: pass\n"
            "sys.stdout.buffer.write(line.strip()[::-1] + b\"\\n\"); sys.stdout.flush()\n"
            "time.sleep(60)\n")
    c = sandbox.spawn([sys.executable, "-I", "-S", "-c", echo], work=tmp_path / "w", mounts=Mounts(), timeout_s=30,
                      isolation_level=level)
    c.stdin.write(b"abc\n")
    c.stdin.flush()
    assert c.stdout.readline() == b"cba\n"
    assert c.alive() and c.cpu_ns() >= 250_000_000  # the parent sees the child's busy 0.3 s
    with open(f"/proc/{c.pid}/cmdline", "rb") as f:
        assert b"process_time" in f.read()  # pid is the payload itself, past the launchers
    c.kill("protocol violation")
    res = c.finish()
    assert res.killed == "protocol violation" and not c.alive() and res.wall_s < 20
    assert res.limits in ("cgroup-v1 pids+memory", "cgroup-v2 pids+memory", "rlimits")


def test_toolchain_only_for_the_compile_role(level, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "h.cpp").write_text('#include <cstdio>\nint main() { std::puts("compiled"); }\n')
    script = "c++ -O1 h.cpp -o h && ./h; ls /usr/local/cuda/bin >/dev/null 2>&1 && echo CUDA || echo NOCUDA"
    built = run_sandboxed(["/bin/sh", "-c", script], timeout_s=120, work_dir=work, isolation=level,
                          mounts=Mounts(toolchain=True))
    assert "compiled" in built.stdout, built.stderr[-2000:]
    if Path("/usr/local/cuda/bin").is_dir():
        assert "CUDA" in built.stdout.split()
        plain = run_sandboxed(["/bin/sh", "-c", script], timeout_s=120, work_dir=work, isolation=level,
                              mounts=Mounts())
        assert "NOCUDA" in plain.stdout.split()


def test_fallback_inside_a_user_namespace_drops_every_capability(tmp_path):
    # kopt itself run as "root" of a user namespace (as an unprivileged user's kopt would be after
    # `unshare -r`): the jail keeps uid 0 there but empties every capability set, so remounting fails.
    import shutil
    import subprocess

    if not shutil.which("unshare"):
        pytest.skip("no unshare")
    probe = ("import json, sys\n"
             "from kopt.evaluator import sandbox\n"
             "code = ('import json, subprocess; s = open(\"/proc/self/status\").read();'\n"
             "        'r = subprocess.run([\"mount\", \"-o\", \"remount,rw\", \"/usr\"], capture_output=True);'\n"
             "        'print(json.dumps({\"status\": s, \"mount\": r.returncode}))')\n"
             "res = sandbox.run_sandboxed([sys.executable, '-I', '-S', '-c', code], timeout_s=60,\n"
             "                            isolation='unshare', mounts=sandbox.Mounts())\n"
             "print(json.dumps({'real_root': sandbox._real_root(), 'stdout': res.stdout, 'stderr': res.stderr}))\n")
    done = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c", probe],
                          capture_output=True, text=True, timeout=120, cwd=str(sandbox.sandbox_fs.KOPT_ROOT))
    if done.returncode != 0 and "unshare" in done.stderr and "Operation not permitted" in done.stderr:
        pytest.skip("user namespaces are not allowed here")
    outer = json.loads(done.stdout.strip().splitlines()[-1])
    assert outer["real_root"] is False
    inner = report(type("R", (), {"stdout": outer["stdout"], "returncode": 0, "stderr": outer["stderr"]}))
    caps = {ln.split(":")[0]: int(ln.split()[1], 16) for ln in inner["status"].splitlines() if ln.startswith("Cap")}
    assert caps and not any(caps.values()) and "NoNewPrivs:\t1" in inner["status"]
    assert inner["mount"] != 0
