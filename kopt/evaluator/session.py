"""The parent side of one child session (kopt_child.harness): spawn, framing, strict schema, parent clock.

Everything the child sends is a claim read by kopt_child.protocol.read_message (caps, exact schemas, no NaN);
anything it cannot parse, any death, timeout or flood becomes a SessionFailure whose status and sentence are
written here. Timing is parent-clocked: each call's inputs are written only after the previous call's
commitment (`done`, a hash of outputs and inputs-after computed inside the call) arrived, and the parent
stamps both ends with its own time.perf_counter_ns. The child runs under kopt.evaluator.sandbox.spawn (the
isolation level, mounts and limits of every child); its CPU time is read by the parent from its cgroup or
/proc, never asked of the child.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kopt.evaluator.kopt_child import protocol
from kopt.records import Status

# The parent's sentence for each closed failure code a child may report.
FAIL_SENTENCES = {
    "setup_failed": (Status.CRASHED, "kopt's child could not set up the session (device, cache flush or extensions)"),
    "import_failed": (Status.RUNTIME_ERROR, "importing {what} raised {exc}{at}"),
    "syntax_error": (Status.COMPILE_ERROR, "Python syntax error{at}"),
    "no_model_class": (Status.COMPILE_ERROR, "the candidate defines no class {cls}(nn.Module)"),
    "init_failed": (Status.RUNTIME_ERROR, "constructing {cls} raised {exc}{at}"),
    "forward_raised": (Status.RUNTIME_ERROR, "forward raised {exc}{at}"),
    "not_a_tensor": (Status.REJECTED, "output {index} is not exactly a torch.Tensor (lazy or subclassed outputs)"),
    "no_storage": (Status.REJECTED, "output {index} has no storage (lazy outputs)"),
    "extension_unknown": (Status.REJECTED, "load_inline was called with sources that were not built at the compile stage"),
    "extension_failed": (Status.RUNTIME_ERROR, "loading the compiled extension raised {exc}"),
    "bad_message": (Status.CRASHED, "kopt's child rejected a message from kopt"),
}


class SessionFailure(Exception):
    """The session's verdict when it cannot go on: a Status and a sentence kopt wrote."""

    def __init__(self, status: Status, reason: str, transient: bool = False):
        super().__init__(reason)
        self.status, self.reason, self.transient = status, reason, transient


@dataclass(frozen=True)
class ModelSpec:
    args: tuple = ()
    kwargs: Mapping = None  # type: ignore[assignment]
    seed: int = 0
    state: tuple = ()  # ((name, tensor), ...) sent as raw bytes


@dataclass(frozen=True)
class SessionSpec:
    module: str  # the module's path as the child sees it
    cls: str  # "ModelNew" (candidate) or "Model" (trusted reference)
    models: tuple[ModelSpec, ...]
    extensions: tuple[dict, ...] = ()  # [{"key","name","so"}] from the build stage
    ext_by_key: bool = False  # match load_inline calls by the build stage's key (else in compile order)
    threads: int = 1
    device: str = "cpu"
    search_path: str | None = None
    what: str = "the candidate"
    compile: bool = False  # the trusted reference only: torch.compile every model (default mode)


@dataclass(frozen=True)
class Call:
    """One call as the parent saw it. interval_ns: parent clock, call frame written -> `done` read."""

    call: int
    h: str
    ext_calls: int
    lib_ops: int
    child_ns: int
    alias: bool
    interval_ns: int


def _dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


def tensor_bytes(t) -> bytes:
    import ctypes

    c = t.detach().contiguous().cpu()
    n = c.numel() * c.element_size()
    return ctypes.string_at(c.data_ptr(), n) if n else b""


def encode_args(args: Sequence) -> tuple[list[dict], bytes]:
    import torch

    metas, blobs = [], []
    for a in args:
        if isinstance(a, torch.Tensor):
            metas.append({"kind": "tensor", "dtype": _dtype_name(a), "shape": list(a.shape)})
            blobs.append(tensor_bytes(a))
        else:
            metas.append({"kind": "value", "value": a})
    return metas, b"".join(blobs)


def decode_tensors(metas: list[dict], payload: bytes) -> list:
    import torch

    out, off = [], 0
    for m in metas:
        n = protocol.nbytes(m)
        dt = getattr(torch, m["dtype"])
        buf = bytearray(payload[off:off + n])
        off += n
        t = torch.frombuffer(buf, dtype=dt) if n else torch.empty(0, dtype=dt)
        out.append(t.reshape(m["shape"]))
    return out


class Session:
    """A live child session. Use as a context manager; every method raises SessionFailure, nothing else."""

    def __init__(self, spec: SessionSpec | None, *, work: Path, readable: Sequence[Path] = (), timeout_s: float,
                 max_rss_mb: int | None, env: Mapping[str, str] | None = None, gpu: bool = False,
                 writable: Sequence[Path] = (), toolchain: bool = False, cpu_budget_s: float | None = None,
                 threads: int = 1, remove_work: bool = False):
        """spec None: a spare, started now and given its spec by assign() once its candidate is known."""
        self.spec, self.work, self.remove_work = spec, work, remove_work
        work.mkdir(parents=True, exist_ok=True)
        self.killed: str | None = None
        self.max_rss_mb = max_rss_mb
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self._done = threading.Event()
        self._flushing = False  # a `flushed` the child owes kopt (read before the next frame goes out)
        self._done_at = 0
        self.flush_ns: list[int] = []  # kopt's clock from each call's `done` to its `flushed`
        self.flush_cpu_ns: list[int] = []  # the child's CPU time (read by kopt) over the same windows
        self._done_cpu = 0
        cores = max(1, spec.threads if spec else threads)
        # The CPU rlimit is visible to the child (getrlimit): callers pass one budget for check and time
        # sessions alike, so it cannot tell them apart.
        cpu_s = int((cpu_budget_s or timeout_s) * (cores + 2)) + 30
        as_mb = None if gpu or not max_rss_mb else max_rss_mb + 8192
        from kopt.evaluator.sandbox import Limits, Mounts, python_cmd, spawn

        env = {k: v for k, v in (env or {}).items() if k != "PYTHONPATH"}
        self.sandboxed = spawn(python_cmd(["run"]), work=work, timeout_s=timeout_s, env=env, gpu=gpu,
                               mounts=Mounts(readonly=tuple(str(p) for p in readable),
                                             writable=tuple(str(p) for p in writable), toolchain=toolchain),
                               limits=Limits(cpu_s=cpu_s, as_mb=as_mb, rss_mb=max_rss_mb))
        self.isolation = self.sandboxed.isolation
        if self.sandboxed.stdin is None:
            raise SessionFailure(Status.CRASHED, "cannot start the sandboxed child")
        self.fd_in, self.fd_out = self.sandboxed.stdout.fileno(), self.sandboxed.stdin.fileno()
        threading.Thread(target=self._deadline_watch, daemon=True).start()

    # ---- plumbing -----------------------------------------------------------------------------------

    def _deadline_watch(self) -> None:
        """kopt's own run budget (assign() may set it later than the spawn: a spare waits unbudgeted)."""
        while not self._done.wait(0.05):
            if time.monotonic() > self.deadline:
                self.killed = "timeout"
                self.sandboxed.kill("timeout")
                return

    def assign(self, spec: SessionSpec, timeout_s: float) -> Session:
        """Give a spare session (started before its candidate was known, torch already imported) its spec
        and its run budget, counted from now. The argv, environment and mounts were the same for every one."""
        self.spec, self.timeout_s = spec, timeout_s
        self.deadline = time.monotonic() + timeout_s
        return self

    def _death(self, fallback: str) -> SessionFailure:
        """Why the session ended, in kopt's words."""
        if fallback != "the stream ended" and self.sandboxed.alive():
            self.sandboxed.kill("protocol")  # a child that broke the protocol gets no grace period
        res = self.sandboxed.finish(timeout_s=5)
        self._result = res
        if self.killed == "timeout" or (res.killed == "timeout" and time.monotonic() >= self.deadline - 1):
            return SessionFailure(Status.TIMEOUT, f"killed after {self.timeout_s:.0f} s (run timeout)")
        if res.killed == "timeout":  # finish()'s 5 s: its stream ended and it did not exit
            return SessionFailure(Status.CRASHED, f"the child broke kopt's protocol: {fallback}, and did not exit")
        if res.killed == "protocol":
            return SessionFailure(Status.CRASHED, f"the child broke kopt's protocol: {fallback}")
        if res.killed in ("output flood", "memory", "disk") or res.signal:
            # A SIGKILL kopt did not send (no limit of kopt's was hit): the machine's OOM killer, most likely.
            machine = res.signal == signal.SIGKILL and not res.killed
            return SessionFailure(Status.CRASHED, res.describe() + (" (not by kopt: the machine may be short of "
                                  "memory; not cached, a rerun tries again)" if machine else ""), transient=machine)
        if fallback == "the stream ended" or res.returncode not in (0, None):
            return SessionFailure(Status.CRASHED, f"the process exited with code {res.returncode} without a "
                                  "result (exit at import?)")
        return SessionFailure(Status.CRASHED, f"the child broke kopt's protocol: {fallback}")

    def _send(self, header: dict, payload: bytes = b"") -> None:
        try:
            protocol.write_frame(self.fd_out, header, payload)
        except (OSError, protocol.ProtocolError):
            raise self._death("the stream ended") from None

    def _recv(self, expect: tuple[str, ...], max_payload: int = 0) -> tuple[dict, bytes]:
        try:
            header, payload = protocol.read_message(self.fd_in, expect + ("fail",), max_payload)
        except protocol.ProtocolError as e:
            raise self._death(str(e)) from None
        except (KeyboardInterrupt, SystemExit):  # the user's Ctrl-C (kopt's own signal), never the child's doing
            raise
        except BaseException:  # noqa: BLE001 - nothing a child sends may end kopt's batch (RecursionError, ...)
            raise self._death("a malformed frame") from None
        if header["t"] == "fail":
            raise self._fail(header)
        return header, payload

    def _fail(self, h: dict) -> SessionFailure:
        status, text = FAIL_SENTENCES[h["code"]]
        exc = h["exc"] or "an exception"
        at = f" at line {h['line']}" if h["line"] else ""
        return SessionFailure(status, text.format(what=self.spec.what, exc=exc, at=at, index=h["index"],
                                                  cls=self.spec.cls))

    # ---- the session --------------------------------------------------------------------------------

    def start(self) -> int:
        """Send init, wait for ready. Returns the ops torch ran while the models were constructed."""
        metas, blobs, models = [], [], []
        for m in self.spec.models:
            state = []
            for name, t in m.state:
                state.append({"name": name, "kind": "tensor", "dtype": _dtype_name(t), "shape": list(t.shape)})
                blobs.append(tensor_bytes(t))
            models.append({"args": list(m.args), "kwargs": dict(m.kwargs or {}), "seed": int(m.seed), "state": state})
        del metas
        header = {"t": "init", "module": self.spec.module, "name": "kopt_candidate" if self.spec.cls == "ModelNew"
                  else "kopt_task", "cls": self.spec.cls, "models": models, "ext": list(self.spec.extensions),
                  "ext_by_key": self.spec.ext_by_key, "compile": self.spec.compile,
                  "count_ops": self.spec.cls == "ModelNew",
                  "threads": self.spec.threads, "device": self.spec.device, "search_path": self.spec.search_path}
        self._send(header, b"".join(blobs))
        h, _ = self._recv(("ready",))
        self._flushing = True
        return h["init_ops"]

    def _flushed(self) -> None:
        # The child flushes the cache after every commitment and says `flushed`; kopt reads that only when it
        # has the next frame ready, so the call's inputs go out the moment the flush ends: the child's thread
        # pool is still awake from the flush (a pool asleep since the last call costs ms to wake on a VM,
        # noise that the per-call overhead cannot subtract) and nothing else runs between the two.
        if self._flushing:
            self._flushing = False
            self._recv(("flushed",))
            if self._done_at:
                # `done` to `flushed` on kopt's clock: at least the flush's own time (more when kopt was still
                # encoding the next frame), the evidence that the child flushed at all (timed_run, judged by
                # the evaluator against the reference's).
                self.flush_ns.append(time.perf_counter_ns() - self._done_at)
                # A flush replaced by a sleep of the same length keeps the wall-clock gap but burns no CPU.
                self.flush_cpu_ns.append(self.cpu_ns() - self._done_cpu)
                self._done_at = 0

    def flush(self) -> None:
        self._flushed()
        self._send({"t": "flush"})
        self._recv(("flushed",))

    def call(self, call: int, model: int, args: Sequence, ghost: bool = False) -> Call:
        metas, payload = encode_args(args)
        frame = protocol.encode({"t": "call", "call": call, "model": model, "ghost": ghost, "args": metas}, payload)
        self._flushed()
        t0 = time.perf_counter_ns()
        try:
            view = memoryview(frame)
            while view:
                view = view[os.write(self.fd_out, view):]
        except OSError:
            raise self._death("the stream ended") from None
        h, _ = self._recv(("done",))
        t1 = time.perf_counter_ns()
        if h["call"] != call:
            raise self._death("a done message for another call")
        self._flushing = True  # the child flushes the cache after its commitment (read before the next frame)
        self._done_at = t1
        self._done_cpu = self.cpu_ns()  # after t1: never inside the call's interval
        return Call(call=call, h=h["h"], ext_calls=h["ext_calls"], lib_ops=h["lib_ops"], child_ns=h["child_ns"],
                    alias=h["alias"], interval_ns=t1 - t0)

    def reveal(self, call: int, committed: str, max_bytes: int) -> tuple[list, list]:
        """The call's outputs and inputs-after, as tensors built here; SessionFailure(REJECTED) if their hash is
        not the one committed inside the call."""
        self._flushed()
        self._send({"t": "reveal", "call": call})
        return self._read_revealed(call, committed, max_bytes)

    def _read_revealed(self, call: int, committed: str, max_bytes: int) -> tuple[list, list]:
        h, payload = self._recv(("outputs",), max_payload=max_bytes)
        if h["call"] != call:
            raise self._death("an outputs message for another call")
        metas = h["out"] + h["after"]
        sizes = [protocol.nbytes(m) for m in metas]
        blobs, off = [], 0
        for n in sizes:
            blobs.append(payload[off:off + n])
            off += n
        if protocol.digest(metas, blobs) != committed:
            raise SessionFailure(Status.REJECTED, f"call {call}'s revealed outputs do not match the hash committed "
                                 "inside the call (outputs changed after the call returned)")
        tensors = decode_tensors(metas, payload)
        return tensors[: len(h["out"])], tensors[len(h["out"]):]

    def reveal_many(self, calls: Sequence[tuple[int, str]], max_bytes: int) -> list[tuple[list, list]]:
        """reveal() for several calls, the requests sent at once (one round trip, not one per call)."""
        self._flushed()
        for call, _h in calls:
            self._send({"t": "reveal", "call": call})
        return [self._read_revealed(call, h, max_bytes) for call, h in calls]

    def cpu_ns(self) -> int:
        """The child's CPU time so far, read by kopt (cgroup or /proc), never asked of the child."""
        return self.sandboxed.cpu_ns()

    def close(self) -> None:
        try:
            protocol.write_frame(self.fd_out, {"t": "bye"})
        except (OSError, protocol.ProtocolError):
            pass
        self._done.set()
        self.sandboxed.finish(timeout_s=5)
        if self.remove_work:
            import shutil

            shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
