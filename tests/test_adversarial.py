"""Every adversarial fixture through the real evaluator, in one batch, next to the honest controls.

One module-scoped batch: the static gate, real compiles, real sandboxed check processes, then `.time()` on
whatever came out correct. Each fixture's verdict is asserted below (tests/fixtures/README.md has the table).
The batch also shows kopt survives: segfaults, timeouts, floods and huge allocations cost one candidate each.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from kopt.records import EvalResult, Status

KERNELS = Path(__file__).parent / "fixtures" / "kernels"
KERNELBENCH = Path(__file__).resolve().parent.parent.parent / "shared" / "kernelbench" / "level1"
SECRET_VAR = "KOPT_FIXTURE_API_KEY"  # the name the env_secret fixtures read
FIXTURE_PORT = "47821"  # the tcp_connect fixtures' placeholder port, replaced by the test server's

S = Status
# fixture -> (acceptable final statuses, substrings of which one must appear in the reason (lowercase), or ())
EXPECTED: dict[str, tuple[frozenset[Status], tuple[str, ...]]] = {
    "honest_relu_naive": (frozenset({S.CORRECT}), ()),
    "honest_relu_fast": (frozenset({S.CORRECT}), ()),
    # rejected by the static gate before anything runs
    "subclass_model": (frozenset({S.REJECTED}), ("subclasses the reference model",)),
    "try_fallback": (frozenset({S.REJECTED}), ("try/except",)),
    "timer_monkeypatch": (frozenset({S.REJECTED}), ("time.perf_counter_ns",)),
    "lazy_tensor": (frozenset({S.REJECTED}), ("tensor subclass",)),
    "env_secret": (frozenset({S.REJECTED}), ("os.environ",)),
    "tcp_connect": (frozenset({S.REJECTED}), ("socket",)),
    "include_passwd": (frozenset({S.REJECTED}), ("/etc/passwd",)),
    "build_flags": (frozenset({S.REJECTED}), ("extra_include_paths",)),
    "background_thread": (frozenset({S.REJECTED}), ("std::thread",)),
    # compile stage
    "compile_error": (frozenset({S.COMPILE_ERROR}), ("error",)),
    # correctness: the judge and the check process
    "wrong_answer": (frozenset({S.INCORRECT}), ()),
    "zeros": (frozenset({S.INCORRECT}), ()),
    "input_mutation": (frozenset({S.INCORRECT}), ("mutat", "input")),
    "output_alias": (frozenset({S.INCORRECT}), ("alias", "mutat")),
    "result_cache_ptr": (frozenset({S.INCORRECT}), ("same buffers", "trial")),
    "correct_first_n": (frozenset({S.INCORRECT}), ()),
    "background_thread_hidden": (frozenset({S.INCORRECT}), ()),
    "decoy": (frozenset({S.REJECTED}), ("decoy",)),
    "decoy_no_call": (frozenset({S.REJECTED}), ("never called",)),
    # timing stage
    "timer_monkeypatch_cpp": (frozenset({S.REJECTED}), ("tamper",)),
    "result_cache_content": (frozenset({S.CORRECT, S.INCORRECT, S.REJECTED}), ()),  # see its own test
    # the sandbox
    "segfault": (frozenset({S.CRASHED}), ("sigsegv",)),
    "infinite_loop": (frozenset({S.TIMEOUT}), ()),
    "infinite_loop_cpp": (frozenset({S.TIMEOUT}), ()),
    "os_exit": (frozenset({S.CRASHED, S.COMPILE_ERROR}), ("without a result", "exit")),
    "huge_alloc": (frozenset({S.RUNTIME_ERROR, S.CRASHED}), ("memory", "alloc", "rss")),
    "huge_alloc_cpp": (frozenset({S.RUNTIME_ERROR, S.CRASHED}), ("malloc refused", "memory", "rss")),
    "stdout_flood": (frozenset({S.CRASHED}), ("flood",)),
    "stdout_flood_cpp": (frozenset({S.CRASHED}), ("flood",)),
    "env_secret_cpp": (frozenset({S.RUNTIME_ERROR}), ("leak:<unset>",)),
    "tcp_connect_cpp": (frozenset({S.RUNTIME_ERROR}), ("connect failed",)),
}


def fixture_names() -> list[str]:
    return sorted(p.stem for p in KERNELS.glob("*.py"))


class _Server:
    """A real TCP server on 127.0.0.1 that records every connection it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections: list[bytes] = []
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
                try:
                    self.connections.append(conn.recv(4096))
                except OSError:
                    self.connections.append(b"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@dataclass
class Batch:
    names: list[str]
    checked: dict[str, EvalResult]
    final: dict[str, EvalResult]  # after .time() for the ones that were correct
    secret: str
    isolation: str
    connections: list[bytes]
    check_s: float
    time_s: float


@pytest.fixture(scope="module")
def batch(shared_kopt_home) -> Batch:
    if not KERNELBENCH.is_dir():
        pytest.skip("../shared/kernelbench/level1 is not beside the repo")
    from kopt.evaluator import EvalSettings, Evaluator
    from kopt.task import load_task

    names = fixture_names()
    missing = [n for n in ("honest_relu_naive", "honest_relu_fast") if n not in names]
    assert not missing, f"honest controls missing from {KERNELS}: {missing}"
    secret = "sk-kopt-" + secrets.token_hex(16)
    server = _Server()
    sources = [(KERNELS / f"{n}.py").read_text().replace(FIXTURE_PORT, str(server.port)) for n in names]
    task = load_task(str(KERNELBENCH / "19_ReLU.py"), sets=["batch_size=16", "dim=4096"])
    settings = EvalSettings(target="cpu", jobs=2, run_timeout_s=20, compile_timeout_s=240,
                            min_calls=30, min_time_s=1.0, max_rss_mb=4096)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KOPT_HOME", str(shared_kopt_home))
        mp.setenv(SECRET_VAR, secret)  # in kopt's own environment: the sandbox must not pass it on
        try:
            with Evaluator(task, settings) as ev:
                t0 = time.monotonic()
                checked = ev.check(sources)
                t1 = time.monotonic()
                ok = [i for i, r in enumerate(checked) if r.correct]
                timed = ev.time([sources[i] for i in ok], [checked[i] for i in ok])
                t2 = time.monotonic()
                isolation = ev.fingerprint()["isolation"]
        finally:
            time.sleep(0.3)
            server.close()
    final = dict(zip(names, checked))
    for i, r in zip(ok, timed):
        final[names[i]] = r
    return Batch(names=names, checked=dict(zip(names, checked)), final=final, secret=secret,
                 isolation=isolation, connections=list(server.connections), check_s=t1 - t0, time_s=t2 - t1)


def _show(r: EvalResult) -> str:
    return f"{r.status.value}: {r.reason[:400]!r}"


# ---- the fixtures themselves ---------------------------------------------------------------------------

def test_every_fixture_has_an_expectation_and_a_header():
    names = fixture_names()
    assert set(EXPECTED) <= set(names), sorted(set(EXPECTED) - set(names))
    assert set(names) <= set(EXPECTED), f"fixtures with no expected verdict: {sorted(set(names) - set(EXPECTED))}"
    for n in names:
        if n.startswith("honest_"):
            continue
        head = (KERNELS / f"{n}.py").read_text().splitlines()[:8]
        assert head[0].startswith(f"# Hack: {n} "), f"{n}.py must open with '# Hack: {n} -- ...'"
        text = "\n".join(head)
        assert "# Source:" in text and "# Expected:" in text, f"{n}.py must name its source row and verdict"


def test_readme_lists_every_fixture():
    readme = (KERNELS.parent / "README.md").read_text()
    for n in fixture_names():
        assert f"`{n}`" in readme, f"tests/fixtures/README.md has no row for {n}"


# ---- verdicts ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_verdict(batch: Batch, name: str):
    statuses, needles = EXPECTED[name]
    r = batch.final[name]
    assert r.status in statuses, f"{name}: expected {sorted(s.value for s in statuses)}, got {_show(r)}"
    if needles:
        assert any(n in r.reason.lower() for n in needles), f"{name}: reason lacks {needles}: {_show(r)}"


def test_kopt_survives_and_controls_pass_in_the_same_batch(batch: Batch):
    assert set(batch.final) == set(batch.names)
    for n in ("honest_relu_naive", "honest_relu_fast"):
        r = batch.final[n]
        assert r.status is Status.CORRECT, _show(r)
        assert r.runtime_ms and r.runtime_ms > 0 and r.speedup and r.speedup > 0, r
        assert r.trials_passed == r.trials_total >= 5
        assert r.binary_sha256


def test_static_rejections_never_ran(batch: Batch):
    # Rejected by the gate => never compiled: no binary, no compile time.
    for n in ("subclass_model", "try_fallback", "timer_monkeypatch", "include_passwd", "build_flags"):
        r = batch.checked[n]
        assert r.status is Status.REJECTED and r.binary_sha256 is None, _show(r)


def test_timer_patch_from_cpp_passes_check_and_is_caught_by_timing(batch: Batch):
    assert batch.checked["timer_monkeypatch_cpp"].status is Status.CORRECT, _show(batch.checked["timer_monkeypatch_cpp"])
    r = batch.final["timer_monkeypatch_cpp"]
    assert r.status is Status.REJECTED and "tamper" in r.reason.lower(), _show(r)


def test_content_cache_gets_no_inflated_speedup(batch: Batch):
    """A content-keyed cache returns a stored tensor in O(1) when timing rotates a few fixed input sets.
    Defence (hacking-and-sandbox.md §1 row 9): every timed call gets fresh floating content (the trial's input
    perturbed from kopt's nonce and the call index), so the cache never hits; the re-checked calls' inputs are
    regenerated by kopt and judged against the trusted reference. Its speedup must stay within noise of the
    honest kernels' (or of the reference's), or the timing stage must mark it."""
    r = batch.final["result_cache_content"]
    if r.status is not Status.CORRECT:
        return  # marked by the timing stage: fine
    honest = [batch.final[n].speedup for n in ("honest_relu_fast", "honest_relu_naive")]
    assert r.speedup is not None and None not in honest, _show(r)
    bound = 1.5 * max(*honest, 1.0)
    fast = batch.final["honest_relu_fast"]
    assert r.speedup <= bound, (
        f"result_cache_content timed at {r.runtime_ms:.4f} ms ({r.speedup:.2f}x) vs honest_relu_fast "
        f"{fast.runtime_ms:.4f} ms ({fast.speedup:.2f}x): the cache is timed, not the kernel")


def test_correct_first_n_is_caught_at_check(batch: Batch):
    """Trials run in two interleaved passes, so the call after the 10th meets another trial's input: the stale
    output is caught by .check() already, not left to the re-checks after timing."""
    r = batch.checked["correct_first_n"]
    assert r.status is Status.INCORRECT, _show(r)


def test_no_secret_anywhere_in_results(batch: Batch):
    blob = json.dumps({n: r.to_json() for n, r in batch.final.items()})
    assert batch.secret not in blob


def test_no_tcp_connection_reached_the_server(batch: Batch):
    if batch.isolation == "none":
        pytest.skip("no network isolation available on this machine")
    assert batch.connections == [], f"the candidate reached the test server: {batch.connections}"


def test_batch_time_is_bounded(batch: Batch):
    # Two run timeouts in parallel jobs, plus compiles: nothing hangs past its budget.
    print(f"check {batch.check_s:.1f} s, time {batch.time_s:.1f} s")
    assert batch.check_s < 900 and batch.time_s < 300
