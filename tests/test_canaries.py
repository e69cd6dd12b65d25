"""Canaries: secrets planted where a user keeps them must never reach a sandboxed child.

Planted in kopt's environment, in $HOME, in a config file under ~/.config, and in an ancestor process's
environment (the child is started by a parent process that carries the canary, as kopt would carry an API key it
stripped from the child's environment). The child behaves like an attacker: it walks everything it can reach
(/, every /proc/*/environ and cmdline, $HOME), dumps what it read into its own dir and its stdout, and then
everything it could read or write is grepped for the canaries. Under both isolation levels. When CI planted its
own canary ($KOPT_CI_CANARY, see .ci/run) that one is looked for too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from kopt.evaluator import sandbox
from kopt.evaluator.sandbox import IsolationError

# Reads everything it can: file contents outside the big read-only system trees, every name everywhere, and
# every /proc entry that could carry a process's secrets. Writes the dump into its dir and a summary to stdout.
ATTACKER = r'''
import os, sys
SYSTEM = tuple(sys.argv[1:])  # read-only system trees: names listed, contents skipped (too big to read)
dump = open("dump.bin", "wb")
seen = 0
def take(path, limit=1 << 20):
    global seen
    try:
        with open(path, "rb") as f:
            data = f.read(limit)
    except OSError:
        return
    seen += 1
    if dump.tell() < 256 << 20:  # enough to carry any secret; the file-size limit would end the walk
        dump.write(path.encode() + b"\0" + data + b"\n")
for pid in os.listdir("/proc"):
    if pid.isdigit() or pid == "self":
        for name in ("environ", "cmdline", "maps", "mountinfo", "status"):
            take(f"/proc/{pid}/{name}")
for root, dirs, files in os.walk("/", onerror=lambda e: None):
    if root.startswith(("/proc", "/sys")):
        dirs[:] = []
        continue
    if dump.tell() < 256 << 20:
        dump.write(("\n".join(os.path.join(root, n) for n in dirs + files)).encode() + b"\n")
    if root.startswith(SYSTEM):
        continue
    for n in files:
        p = os.path.join(root, n)
        if os.path.isfile(p) and not os.path.islink(p):  # regular files only: no pipes or devices
            take(p)
for name in sorted(os.environ):
    dump.write(f"{name}={os.environ[name]}\n".encode())
home = os.environ.get("HOME", "")
dump.close()
print("READ", seen, "files; HOME", home)
sys.stdout.write(open("dump.bin", "rb").read().decode(errors="replace")[-200000:])
'''

# The ancestor: a process carrying the canary in its own environment (its /proc/<pid>/environ) that starts the
# sandboxed attacker, as kopt does, and writes what came back where the test can grep it.
ANCESTOR = r'''
import json, sys
from pathlib import Path
from kopt.evaluator.sandbox import Mounts, run_sandboxed
level, work, attacker, out = sys.argv[1:5]
system = sys.argv[5:]
res = run_sandboxed([sys.executable, "-I", "-S", "-c", attacker, *system], timeout_s=240, work_dir=Path(work),
                    isolation=level, mounts=Mounts(), env={"KOPT_CANARY_PASSED": "not a secret"})
Path(out).write_text(json.dumps({"rc": res.returncode, "stdout": res.stdout, "stderr": res.stderr,
                                 "killed": res.killed}))
'''


@pytest.fixture(params=["bwrap", "unshare"])
def level(request):
    try:
        return sandbox.isolation(request.param)
    except IsolationError as e:
        pytest.skip(f"{request.param} does not work here: {e}")


def _system_trees() -> list[str]:
    plan = sandbox.sandbox_fs.plan(Path("/nonexistent"), sandbox.Mounts())
    return sorted({dst for _src, dst in plan.ro if dst.startswith(("/usr", "/opt/kopt-child")) or
                   any(dst == p for p in sandbox.sandbox_fs._python_roots())})


@pytest.mark.slow
def test_no_canary_reaches_a_sandboxed_child(level, tmp_path):
    canary = f"kopt-canary-{uuid.uuid4().hex}"
    home = Path.home()
    planted = [home / f".kopt-canary-{canary[-8:]}", home / ".config" / f"kopt-canary-{canary[-8:]}" / "config.toml"]
    planted[1].parent.mkdir(parents=True, exist_ok=True)
    planted[0].write_text(f"token = {canary}-home\n")
    planted[1].write_text(f'api_key = "{canary}-config"\n')
    system = _system_trees()
    # The planted files must not sit in a tree the attacker only lists (that would hide a leak from this test).
    assert not any(str(p).startswith(tuple(system)) for p in planted)
    patterns = [canary]
    if os.environ.get("KOPT_CI_CANARY"):
        patterns.append(os.environ["KOPT_CI_CANARY"])
    env = dict(os.environ, KOPT_CANARY_PLAIN=f"{canary}-env", OPENAI_API_KEY=f"{canary}-key",
               PYTHONPATH=str(sandbox.sandbox_fs.KOPT_ROOT))
    work, out = tmp_path / "work", tmp_path / "out.json"
    try:
        subprocess.run([sys.executable, "-c", ANCESTOR, level, str(work), ATTACKER, str(out), *system], env=env,
                       check=True, timeout=300, cwd=str(sandbox.sandbox_fs.KOPT_ROOT))
    finally:
        for p in planted:
            p.unlink()
        planted[1].parent.rmdir()
    got = json.loads(out.read_text())
    assert got["rc"] == 0 and got["killed"] is None, got["stderr"][-2000:]
    assert "READ" in got["stdout"] and (work / "dump.bin").stat().st_size > 10_000  # control: it read a lot
    assert "KOPT_CANARY_PASSED=not a secret" in (work / "dump.bin").read_text(errors="replace")  # control
    blobs = {"stdout": got["stdout"], "stderr": got["stderr"]}
    for root, _dirs, files in os.walk(work):
        for n in files:
            blobs[os.path.join(root, n)] = Path(root, n).read_bytes().decode(errors="replace")
    for where, text in blobs.items():
        for pat in patterns:
            assert pat not in text, f"canary found in {where}"
