"""Every adversarial fixture through the real evaluator, in one batch, next to the honest controls.

The fixtures (tests/fixtures/kernels/*.py opening with a `# Class:` banner; tests/fixtures/README.md has the
table) are candidates for one task, tests/fixtures/tasks/bias_gelu.py. One module-scoped batch runs them all:
the static gate, real compiles, real sandboxed sessions, then `.time()` on whatever came out correct.

kopt runs in its own process for the batch (this file run as a script), started with secrets planted the way
a user's machine has them: an API key in kopt's environment (so it is in kopt's own /proc/<pid>/environ), a
$HOME with a token file and a .netrc, a secrets file in $KOPT_HOME. After the batch the test greps kopt's
results, the files kopt and the candidates could write, and what reached a local TCP server for any of them,
and checks that trusted files, the build store and the machine's state (shared memory, processes) are as
they were. Attacks that still succeed are marked xfail(strict=True) with the defence that is missing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KERNELS = Path(__file__).parent / "fixtures" / "kernels"
TASK = Path(__file__).parent / "fixtures" / "tasks" / "bias_gelu.py"
SECRET_VAR = "KOPT_FIXTURE_API_KEY"  # the variable the text-channel fixtures look for by name
FIXTURE_PORT = "47821"  # placeholder port in fixtures, replaced by the test server's
HOME_MARK = "KOPT_FIXTURE_HOME"  # placeholder for the planted $HOME
SCOPE_MARK = "KOPT_FIXTURE_SCOPE"  # placeholder confining the tamper fixture to this test's KOPT_HOME
SHM_SIGNATURE = 50335969  # bytes of the System V segment c10_leave_state leaves behind
PROC_NAMES = ("kopt-rt-hog", "kopt-rt-fork")  # comm of the processes fixtures try to leave running
BATCH_TIMEOUT_S = 1500

@dataclass(frozen=True)
class Expect:
    statuses: frozenset[str]  # acceptable final status values
    needles: tuple[str, ...] = ()  # one must appear in the reason (lowercase), only when the reason is the point
    library_ok: bool = False  # "correct" is acceptable only when kopt labels it library compute
    speed_bound: bool = False  # if correct, its speedup must stay within noise of honest_gelu_plain's
    xfail: str = ""  # the defence still missing: the verdict test is xfail(strict=True)


CORRECT = frozenset({"correct"})
NOT_CREDITED = frozenset({"incorrect", "rejected", "crashed", "runtime_error", "timeout", "compile_error"})
ANY = NOT_CREDITED | CORRECT
LIB = frozenset({"rejected", "incorrect"})

EXPECTED: dict[str, Expect] = {
    # honest controls
    "honest_gelu_plain": Expect(CORRECT),
    "honest_gelu_openmp": Expect(CORRECT),
    "honest_gelu_outparam": Expect(CORRECT),
    "honest_gelu_optional_import": Expect(CORRECT),
    # 1 harness patching
    "c1_harness_state_patch": Expect(LIB, library_ok=True, xfail=(
        "library compute is judged by an op counter inside the candidate's process (the harness's _State, pinned "
        "here by a metaclass property): no evidence from outside it")),
    "c1_timer_rebind_gc": Expect(ANY, speed_bound=True),
    "c1_flush_sleep": Expect(frozenset({"rejected"}), ("flush",)),
    "c1_input_builder_swap": Expect(NOT_CREDITED, speed_bound=True),
    "c1_import_kopt_judge": Expect(frozenset({"rejected"}), ("kopt",)),
    # 2 forged results
    "c2_forged_frames": Expect(NOT_CREDITED),
    "c2_result_files_cpp": Expect(NOT_CREDITED),
    "c2_system_exit": Expect(NOT_CREDITED),
    "c2_base_exception": Expect(NOT_CREDITED),
    # 3 precomputation
    "c3_seed_precompute": Expect(ANY, speed_bound=True),
    "c3_pointer_cache": Expect(frozenset({"incorrect", "rejected"})),  # rejected: its cache hits on the ghost call
    "c3_content_cache": Expect(ANY, speed_bound=True),
    # 4 clock tampering from native code
    "c4_got_clock_gettime": Expect(ANY, speed_bound=True),
    "c4_deferred_thread": Expect(NOT_CREDITED),
    "c4_pasted_thread_warm": Expect(frozenset({"rejected"}), ("starts a thread",)),
    # 5 decoy bypass (the honest out-parameter kernel is a control above)
    "c5_bias_only_decoy": Expect(LIB, library_ok=True),
    "c5_nan_propagation": Expect(LIB, library_ok=True),
    "c5_hidden_ops_decoy": Expect(LIB, library_ok=True, xfail=(
        "torch ops run under _disable_current_modes() escape the dispatch-mode counter, the only evidence of "
        "library compute in Python; the verdict needs evidence from outside the candidate's process")),
    # 6 shape coverage
    "c6_hardcoded_dim": Expect(frozenset({"incorrect"})),
    "c6_blocks_of_512": Expect(frozenset({"incorrect"})),
    # 7 text as a channel (the leak itself: test_no_canary_*)
    "c7_exception_text": Expect(ANY),
    "c7_exception_class_name": Expect(ANY),
    "c7_warning_text": Expect(ANY),
    "c7_stderr_abort": Expect(ANY),
    "c7_include_runtime": Expect(frozenset({"compile_error", "rejected"})),
    # library compute
    "lib_size_threshold": Expect(LIB, library_ok=True),
    "lib_below_dispatcher": Expect(LIB, library_ok=True),
    # precision inside an fp32 task
    "prec_fp16_tail": Expect(frozenset({"incorrect"})),
    "prec_crude_erf": Expect(frozenset({"incorrect"})),
    # correctness basics
    "cor_input_mutation": Expect(frozenset({"incorrect"})),
    "cor_output_alias": Expect(frozenset({"incorrect"})),
    # incorrect, or rejected when a stale call skips the extension (a check call revealed during timing)
    "cor_stale_after_warmup": Expect(frozenset({"incorrect", "rejected"})),
    "cor_zeros": Expect(frozenset({"incorrect"})),
    # 10 sandbox (side effects: test_trusted_files_*, test_build_store_*, test_no_state_*, test_no_canary_*)
    "c10_trusted_file_tamper": Expect(ANY, speed_bound=True),
    "c10_build_poison": Expect(ANY),
    "c10_static_init_system": Expect(ANY),
    "c10_incbin_asm": Expect(frozenset({"rejected", "compile_error"})),
    "c10_incbin_pasted": Expect(frozenset({"rejected", "compile_error", "incorrect"})),
    "c10_leave_state": Expect(ANY, speed_bound=True),
    "c10_fork_bomb": Expect(ANY),
    "c10_tmpfs_filler": Expect(NOT_CREDITED),
    "c10_sibling_sabotage": Expect(CORRECT),
    # the process itself
    "sb_os_exit": Expect(frozenset({"crashed", "runtime_error"})),
    "sb_segfault": Expect(frozenset({"crashed"})),
    "sb_spin": Expect(frozenset({"timeout"})),
    "sb_stdout_flood": Expect(ANY),
}


def fixture_names() -> list[str]:
    """The batch: every fixture with a `# Class:` banner (honest_relu_* belong to 19_ReLU tests elsewhere)."""
    return sorted(p.stem for p in KERNELS.glob("*.py") if p.read_text().startswith("# Class:"))


# ---- the batch, in its own kopt process --------------------------------------------------------------------

def _run_batch(spec_path: str) -> None:
    """Script entry: evaluate spec["sources"] with one Evaluator, write the results as JSON."""
    import dataclasses
    import traceback

    spec = json.loads(Path(spec_path).read_text())
    out: dict = {"checked": {}, "final": {}, "error": None, "isolation": "", "check_s": 0.0, "time_s": 0.0}
    try:
        from kopt.evaluator import EvalSettings, Evaluator
        from kopt.task import load_task

        names = list(spec["sources"])
        sources = [spec["sources"][n] for n in names]
        wanted = dict(target="cpu", jobs=2, run_timeout_s=60, compile_timeout_s=300, min_calls=20,
                      min_time_s=0.2, max_rss_mb=4096, compile_baseline=False)
        known = {f.name for f in dataclasses.fields(EvalSettings)}
        settings = EvalSettings(**{k: v for k, v in wanted.items() if k in known})
        with Evaluator(load_task(spec["task"]), settings) as ev:
            t0 = time.monotonic()
            checked = ev.check(sources)
            t1 = time.monotonic()
            ok = [i for i, r in enumerate(checked) if r.correct]
            timed = ev.time([sources[i] for i in ok], [checked[i] for i in ok])
            t2 = time.monotonic()
            out["isolation"] = ev.fingerprint().get("isolation", "")
        out["checked"] = {n: r.to_json() for n, r in zip(names, checked)}
        final = dict(out["checked"])
        for i, r in zip(ok, timed):
            final[names[i]] = r.to_json()
        out.update(final=final, check_s=t1 - t0, time_s=t2 - t1)
    except BaseException:  # noqa: BLE001 - the test reports kopt's own failure
        out["error"] = traceback.format_exc()
    Path(spec["out"]).write_text(json.dumps(out))


class _Server:
    """A real TCP server on 127.0.0.1 that records everything sent to it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1.0)
                data = b""
                try:
                    while chunk := conn.recv(65536):
                        data += chunk
                except OSError:
                    pass
                self.received.append(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def _shm_segments() -> set[tuple[str, int]]:
    """(shmid, size) of every System V segment on the machine."""
    try:
        lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return set()
    return {(f[1], int(f[3])) for f in (line.split() for line in lines) if len(f) > 3}


def _procs_named(names: tuple[str, ...]) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() in names:
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _files_under(root: Path, limit: int = 200_000):
    if not root.exists():
        return
    for n, p in enumerate(root.rglob("*")):
        if n > limit:
            return
        if p.is_file() and not p.is_symlink():
            yield p


def _grep(paths, needles: list[bytes], max_bytes: int = 64 << 20) -> list[str]:
    hits = []
    for p in paths:
        try:
            if p.stat().st_size > max_bytes:
                continue
            data = p.read_bytes()
        except OSError:
            continue
        for nd in needles:
            if nd in data:
                hits.append(f"{p}: {nd.decode()[:24]}...")
    return hits


@dataclass
class Batch:
    names: list[str]
    checked: dict
    final: dict
    error: str | None
    isolation: str
    check_s: float
    time_s: float
    wall_s: float
    canaries: dict[str, str]
    received: list[bytes]
    home: Path
    kopt_home: Path
    build_dir: Path | None
    new_shm: set = field(default_factory=set)
    left_procs: list = field(default_factory=list)
    left_files: list = field(default_factory=list)
    markers: list = field(default_factory=list)
    edited_tasks: list = field(default_factory=list)
    poison_markers: list = field(default_factory=list)
    stderr_tail: str = ""

    def status(self, name: str) -> str:
        return self.final[name]["status"]

    def show(self, name: str) -> str:
        r = self.final[name]
        return f"{r['status']}: {str(r.get('reason', ''))[:400]!r}"


def _trusted_dirs() -> list[Path]:
    import torch

    return [REPO / "kopt", Path(torch.__file__).parent / "include" / "torch"]


def _scan_markers(roots: list[Path], name: str) -> list[Path]:
    found = []
    for root in roots:
        if root.exists():
            found += [p for p in root.rglob(name)]
    return found


@pytest.fixture(scope="module")
def batch(shared_kopt_home, tmp_path_factory) -> Batch:
    from kopt.config import build_dir

    names = fixture_names()
    assert {"honest_gelu_plain", "honest_gelu_outparam"} <= set(names), "honest controls missing"
    tag = secrets.token_hex(8)
    canaries = {k: f"KOPT_CANARY_{k}_{tag}" for k in ("ENV", "HOME", "NETRC", "KOPTHOME")}
    # A planted $HOME outside /tmp (a private /tmp alone must not be what hides it), removed afterwards.
    scratch = Path.home() / ".cache" / f"kopt-redteam-h{tag}"
    home = scratch / "home"
    (home / ".config" / "kopt").mkdir(parents=True)
    (home / ".kopt-redteam-canary").write_text(canaries["HOME"] + "\n")
    (home / ".netrc").write_text(f"machine api.example.com login kopt password {canaries['NETRC']}\n")
    (home / ".config" / "kopt" / "token").write_text(canaries["HOME"] + "\n")
    kopt_home = shared_kopt_home
    (kopt_home / "secrets.toml").write_text(f'api_key = "{canaries["KOPTHOME"]}"\n')
    work = tmp_path_factory.mktemp("adversarial")
    server = _Server()
    sources = {}
    for n in names:
        text = (KERNELS / f"{n}.py").read_text()
        sources[n] = (text.replace(FIXTURE_PORT, str(server.port)).replace(HOME_MARK, str(home))
                      .replace(SCOPE_MARK, str(kopt_home)))
    spec = work / "spec.json"
    out = work / "out.json"
    spec.write_text(json.dumps({"task": str(TASK), "sources": sources, "out": str(out)}))
    shm_before = _shm_segments()
    env = dict(os.environ, KOPT_HOME=str(kopt_home), HOME=str(home), **{SECRET_VAR: canaries["ENV"]})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(spec)], env=env, cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=BATCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
    wall = time.monotonic() - t0
    time.sleep(0.5)
    server.close()
    data = json.loads(out.read_text()) if out.exists() else {
        "checked": {}, "final": {}, "error": f"kopt's batch process wrote no results (exit {proc.returncode})",
        "isolation": "", "check_s": 0.0, "time_s": 0.0}
    try:
        bdir = build_dir()
    except Exception:  # noqa: BLE001
        bdir = None
    b = Batch(names=names, checked=data["checked"], final=data["final"], error=data["error"],
              isolation=data["isolation"], check_s=data["check_s"], time_s=data["time_s"], wall_s=wall,
              canaries=canaries, received=list(server.received), home=home, kopt_home=kopt_home,
              build_dir=bdir, stderr_tail=log.decode(errors="replace")[-4000:])
    # What outlived the candidates (then cleaned up, by id and by exact name: only what the fixtures made).
    b.new_shm = {s for s in _shm_segments() - shm_before if s[1] == SHM_SIGNATURE}
    b.left_procs = _procs_named(PROC_NAMES)
    for pid in b.left_procs:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for shmid, _ in b.new_shm:
        subprocess.run(["ipcrm", "-m", shmid], check=False, capture_output=True)
    leftovers = list(Path("/dev/shm").glob("kopt-redteam-*")) + list(Path("/tmp").glob("kopt-redteam-*"))
    b.left_files = [str(p) for p in leftovers]
    stores = [kopt_home] + ([bdir] if bdir else [])
    b.markers = _scan_markers(_trusted_dirs() + stores, ".kopt-redteam-tamper")
    b.poison_markers = _scan_markers(stores, ".kopt-redteam-poison")
    b.edited_tasks = [str(p) for p in kopt_home.rglob("*.py") if "kopt-redteam-tamper" in p.read_text(errors="replace")]
    yield b
    for p in leftovers + b.markers + b.poison_markers:
        try:
            p.unlink()
        except OSError:
            pass
    shutil.rmtree(scratch, ignore_errors=True)


def _params(names, kind: str = "verdict"):
    out = []
    for n in names:
        reason = EXPECTED[n].xfail if n in EXPECTED else ""
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason and kind == "verdict" else []
        out.append(pytest.param(n, marks=marks, id=n))
    return out


pytestmark = pytest.mark.slow


# ---- the fixtures themselves ---------------------------------------------------------------------------

def test_every_fixture_has_an_expectation_and_a_banner():
    names = fixture_names()
    assert set(EXPECTED) <= set(names), sorted(set(EXPECTED) - set(names))
    assert set(names) <= set(EXPECTED), f"fixtures with no expected verdict: {sorted(set(names) - set(EXPECTED))}"
    for n in names:
        head = "\n".join((KERNELS / f"{n}.py").read_text().splitlines()[:14])
        for key in ("# Class:", "# Attack:", "# Defence:", "# Expected:"):
            assert key in head, f"{n}.py's banner lacks {key!r}"


def test_readme_lists_every_fixture():
    readme = (KERNELS.parent / "README.md").read_text()
    for n in fixture_names():
        assert f"`{n}`" in readme, f"tests/fixtures/README.md has no row for {n}"


# ---- kopt survives, the controls pass -------------------------------------------------------------------

def test_kopt_survives_the_batch(batch: Batch):
    print(f"isolation {batch.isolation}; check {batch.check_s:.1f} s, time {batch.time_s:.1f} s, "
          f"wall {batch.wall_s:.1f} s for {len(batch.names)} fixtures")
    assert batch.error is None, f"kopt itself failed:\n{batch.error}\n{batch.stderr_tail}"
    assert set(batch.final) == set(batch.names)
    assert batch.wall_s < BATCH_TIMEOUT_S


def test_honest_controls_pass_and_are_timed(batch: Batch):
    for n in [n for n in batch.names if n.startswith("honest_")]:
        r = batch.final[n]
        assert r["status"] == "correct", f"{n}: {batch.show(n)}"
        assert r.get("runtime_ms") and r.get("speedup"), f"{n} was not timed: {r}"
        assert r.get("binary_sha256"), f"{n} has no binary hash"


@pytest.mark.parametrize("name", _params(sorted(EXPECTED)))
def test_verdict(batch: Batch, name: str):
    exp = EXPECTED[name]
    r = batch.final[name]
    status = r["status"]
    if status == "correct" and exp.library_ok and "correct" not in exp.statuses:
        labels = list(r.get("library") or ()) + [w for w in r.get("warnings", ()) if "library" in w.lower()]
        assert labels, f"{name}: credited as correct with no library-compute label: {batch.show(name)}"
        return
    assert status in exp.statuses, f"{name}: expected {sorted(exp.statuses)}, got {batch.show(name)}"
    if exp.needles:
        assert any(nd in str(r.get("reason", "")).lower() for nd in exp.needles), (
            f"{name}: reason lacks {exp.needles}: {batch.show(name)}")


def test_every_credited_candidate_has_a_time(batch: Batch):
    """A correct verdict after .time() carries a positive runtime and a speedup: a zero or missing time (an
    interval that vanished under the overhead kopt subtracts) would rank first without having been measured."""
    bad = {n: (r.get("runtime_ms"), r.get("speedup")) for n, r in batch.final.items()
           if r["status"] == "correct" and not (r.get("runtime_ms") and r.get("speedup"))}
    assert not bad, f"credited with no measured time: {bad}"


SPEED_BOUND = sorted(n for n, e in EXPECTED.items() if e.speed_bound)


# A call shorter than the noise of kopt's own per-call overhead is timed by the child's clock, bounded by kopt's
# interval: a clock the candidate slows by less than 100x is believed there. Where the machine's load pushes the
# overhead past the call (the bias+GELU call is ~1 ms), a clock attack can gain. Known hole, not strict: it passes
# when kopt's clock resolves the call.
BELOW_RESOLUTION = {"c1_timer_rebind_gc": "calls below kopt's clock resolution are timed by the child's own clock"}


def _speed_params():
    return [pytest.param(n, id=n, marks=[pytest.mark.xfail(strict=False, reason=BELOW_RESOLUTION[n])]
                         if n in BELOW_RESOLUTION else []) for n in SPEED_BOUND]


@pytest.mark.parametrize("name", _speed_params())
def test_attacks_on_the_honest_kernel_gain_nothing(batch: Batch, name: str):
    """These fixtures run honest_gelu_plain's kernel (or the same loop) and attack the measurement around it:
    a timer, the flush, the inputs, the machine's load. Credited, they must be timed like the kernel they run."""
    r, base = batch.final[name], batch.final["honest_gelu_plain"]
    if r["status"] != "correct":
        return
    assert r.get("speedup") and base.get("speedup"), (r, base)
    assert r["speedup"] <= 1.5 * base["speedup"], (
        f"{name}: {r['speedup']:.2f}x ({r['runtime_ms']:.4f} ms) vs honest_gelu_plain {base['speedup']:.2f}x "
        f"({base['runtime_ms']:.4f} ms) with the same kernel: the attack, not the kernel, was timed")


# ---- secrets ------------------------------------------------------------------------------------------

def test_no_canary_in_results(batch: Batch):
    blob = json.dumps({"checked": batch.checked, "final": batch.final})
    leaked = [k for k, v in batch.canaries.items() if v in blob]
    where = {k: [n for n, r in batch.final.items() if batch.canaries[k] in json.dumps(r)] for k in leaked}
    assert not leaked, f"canaries in kopt's results: {where}"


def test_no_canary_in_files_outside_the_candidates(batch: Batch):
    needles = [v.encode() for v in batch.canaries.values()]
    planted = {batch.kopt_home / "secrets.toml"}
    roots = [batch.kopt_home] + ([batch.build_dir] if batch.build_dir else [])
    files = [p for r in roots for p in _files_under(r) if p not in planted]
    files += [Path(f) for f in batch.left_files]
    hits = _grep(files, needles)
    assert not hits, f"canaries written outside the sandbox: {hits[:10]}"


def test_no_canary_over_the_network(batch: Batch):
    sent = b"".join(batch.received)
    leaked = [k for k, v in batch.canaries.items() if v.encode() in sent]
    assert not leaked and not batch.received, f"the test's TCP server received {batch.received[:3]!r}"


# ---- trusted files, builds, the machine's state ------------------------------------------------------------

def test_trusted_files_stay_untouched(batch: Batch):
    assert not batch.markers, f"a candidate wrote next to trusted files: {batch.markers[:10]}"
    assert not batch.edited_tasks, f"a candidate edited reference task copies: {batch.edited_tasks}"


def test_build_store_is_not_poisoned(batch: Batch):
    assert not batch.poison_markers, f"a candidate wrote into the build store: {batch.poison_markers[:10]}"
    assert batch.status("honest_gelu_outparam") == "correct", batch.show("honest_gelu_outparam")


def test_no_state_outlives_its_candidate(batch: Batch):
    assert not batch.new_shm, f"System V segments left behind: {batch.new_shm}"
    assert not batch.left_procs, f"processes left running: {batch.left_procs}"
    assert not batch.left_files, f"files left in /dev/shm or /tmp: {batch.left_files}"


if __name__ == "__main__":
    _run_batch(sys.argv[1])
