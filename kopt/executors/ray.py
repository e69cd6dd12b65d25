"""`--executor ray`: the evaluator's stages as work on a Ray cluster (https://docs.ray.io/en/latest/ray-core/).

- Compiles and checks: one `NodeWorker` actor per CPU (CPU target) or per GPU (`num_gpus=1`, CUDA target)
  of the chosen nodes, each evaluating one candidate at a time with its own kopt Evaluator (the reference is
  run once per actor, not once per candidate). They are retired before timing starts, so nothing of kopt's
  is left running beside a timed call.
- Timing: one actor per device (per host for the CPU target, whose device is the whole machine; per GPU for
  CUDA), one candidate at a time, the reference re-timed around each candidate on the same device (A/B/A,
  as Evaluator.time does locally).
- Sources travel as text; each node builds what it runs itself (its own content-addressed build store) and
  runs the candidate in its sandboxed child, as locally. What comes back is a claim: the driver accepts it
  only if it is a valid EvalResult for the source hash it sent, from a node of the fingerprint verdicts are
  cached under (`accept`); the driver alone assigns verdicts, and the pool caches each as it arrives.
- Nodes of another kind (device, toolchain, isolation) than the chosen one are not used: verdicts of two
  kinds are never mixed under one cache key. The chosen kind is the one most nodes have.
- A node lost mid-candidate (its actor dies) costs nothing: the candidate goes to another actor, up to
  MAX_ATTEMPTS times, after which it is reported as transient (never cached; a rerun evaluates it again).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kopt.errors import KoptError
from kopt.records import EvalResult, Progress, Status, no_progress
from kopt.task import Task

MAX_ATTEMPTS = 3  # actors a candidate may lose before it is reported as transient
PROBE_TIMEOUT_S = 120.0  # a node's first actor starts a Python worker and imports kopt
RETIRE_TIMEOUT_S = 60.0
_NUMBERS = ("runtime_ms", "runtime_iqr_ms", "reference_runtime_ms", "speedup", "speedup_vs_compile",
            "compile_reference_runtime_ms", "compile_s")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def connect(address: str | None):
    """Join the Ray cluster at `address` ("auto": the one this machine belongs to) once per process, shipping
    this kopt package to the nodes so they run the driver's own evaluator."""
    try:
        import ray
    except ImportError:
        raise KoptError("--executor ray needs Ray", 'pip install "kopt[ray]"') from None
    if not ray.is_initialized():
        import kopt

        kopt_dir = str(Path(kopt.__file__).resolve().parent)
        try:
            ray.init(address=address or "auto", runtime_env={"py_modules": [kopt_dir]}, log_to_driver=False,
                     logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise KoptError(f"no Ray cluster at {address or 'auto'}: {str(exc).splitlines()[0][:200]}",
                            "start one (ray start --head) or pass --ray-address HOST:PORT") from None
    return ray


def accept(payload: Any, source: str, kind: dict[str, str], target: str) -> EvalResult:
    """The verdict a node's answer holds, if it is one the driver can stand behind; else a transient result
    (never cached) that says why. The node runs kopt's trusted code, so a refusal means a mismatched kopt
    version or a broken node, not a candidate's doing."""
    sha = sha256_text(source)

    def refuse(why: str) -> EvalResult:
        return EvalResult(status=Status.CRASHED, source_sha256=sha, target=target, transient=True,
                          reason=f"the Ray node's answer was refused: {why}")

    if not isinstance(payload, dict) or set(payload) != {"source_sha256", "result", "fingerprint"}:
        return refuse("not a kopt node answer")
    if payload["source_sha256"] != sha:
        return refuse("it is for another source than the one sent")
    if payload["fingerprint"] != kind:
        return refuse(f"the node is not of the kind verdicts are cached under ({kind.get('device')})")
    try:
        result = EvalResult.from_json(payload["result"])
    except (KeyError, TypeError, ValueError) as exc:
        return refuse(f"not a valid verdict ({exc})")
    if result.source_sha256 not in ("", sha) or result.target not in ("", target):
        return refuse("the verdict names another source or target")
    for name in _NUMBERS:
        value = getattr(result, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            return refuse(f"{name} is not a finite non-negative number")
    if result.status in (Status.NO_CODE, Status.SKIPPED) or result.transient and result.status is Status.CORRECT:
        return refuse(f"{result.status} is not an evaluator verdict")
    return result


def lost(source: str, target: str, attempts: int) -> EvalResult:
    return EvalResult(status=Status.CRASHED, source_sha256=sha256_text(source), target=target, transient=True,
                      reason=(f"the Ray node evaluating it went away {attempts} time(s); not cached, a rerun "
                              "evaluates it again"))


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    node_id: str
    address: str  # the node's IP: nodes sharing one share a machine
    cpus: int
    gpus: int


class RayExecutor:
    """The evaluator's public API over a Ray cluster (see the module docstring)."""

    remote = True

    def __init__(self, task: Task, settings: Any, progress: Progress = no_progress, address: str | None = None,
                 devices: Any = None):  # the cluster schedules its own GPUs (Pool refuses --devices with ray)
        self.ray = connect(address)
        # The driver's thread count, so every node runs (and keys verdicts) alike whatever its core count.
        self.settings = dataclasses.replace(settings, threads=settings.resolved_threads(), jobs=1)
        self.task, self.progress, self.target = task, progress, settings.target
        self._task_ref = self.ray.put(task)
        self._worker_cls = self.ray.remote(max_restarts=0, max_task_retries=0)(_node_worker())
        self.kinds = self._probe()
        self.kind, self.nodes = max(self.kinds.values(), key=lambda kv: len(kv[1]))
        self._checkers: list = []
        self._timers: list = []

    # ---- nodes ------------------------------------------------------------------------------------
    def _alive(self) -> list[NodeInfo]:
        return [NodeInfo(n["NodeID"], n["NodeManagerAddress"], int(n["Resources"].get("CPU", 0)),
                         int(n["Resources"].get("GPU", 0))) for n in self.ray.nodes() if n.get("Alive")]

    def _actor(self, node: NodeInfo, **resources: float):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return self._worker_cls.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
                                        **resources).remote()

    def _probe(self) -> dict[str, tuple[dict[str, str], list[NodeInfo]]]:
        """Every alive node's fingerprint, grouped by kind."""
        import json

        nodes = self._alive()
        actors = [self._actor(n, num_cpus=0) for n in nodes]
        try:
            answers = self.ray.get([a.fingerprint.remote(self.target) for a in actors], timeout=PROBE_TIMEOUT_S)
        finally:
            for a in actors:
                self.ray.kill(a)
        kinds: dict[str, tuple[dict[str, str], list[NodeInfo]]] = {}
        for node, answer in zip(nodes, answers):
            fp = answer["fingerprint"]
            kinds.setdefault(json.dumps(fp, sort_keys=True), (fp, []))[1].append(node)
        if not kinds:
            raise KoptError("the Ray cluster has no alive node", "check `ray status` on the head node")
        return kinds

    def _eligible(self) -> list[NodeInfo]:
        ids = {n.node_id for n in self.nodes}
        return [n for n in self._alive() if n.node_id in ids]

    def _spawn_checkers(self) -> list:
        out = []
        for node in self._eligible():
            if self.target == "cuda":
                out += [self._actor(node, num_cpus=0, num_gpus=1) for _ in range(node.gpus)]
            else:
                out += [self._actor(node, num_cpus=1) for _ in range(node.cpus)]
        return out

    def _spawn_timers(self) -> list:
        out, hosts = [], set()
        for node in self._eligible():
            if self.target == "cuda":
                out += [self._actor(node, num_cpus=0, num_gpus=1) for _ in range(node.gpus)]
            elif node.address not in hosts and node.cpus:  # the CPU target's device is the whole machine
                hosts.add(node.address)
                out.append(self._actor(node, num_cpus=1))
        return out

    def _retire(self, actors: list) -> None:
        """Close each actor's evaluators (their sessions and work dirs), then end the actor."""
        from ray.exceptions import GetTimeoutError, RayError

        refs = [a.close.remote() for a in actors]
        try:
            self.ray.get(refs, timeout=RETIRE_TIMEOUT_S)
        except (RayError, GetTimeoutError):
            pass  # an actor already gone has nothing left to close
        for a in actors:
            self.ray.kill(a)
        actors.clear()

    # ---- the evaluator's API -------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, str]:
        return dict(self.kind)

    def prepare(self) -> None:
        """The reference on one node first: a task that cannot run fails fast with its real cause."""
        if not self._checkers:
            self._retire(self._timers)
            self._checkers = self._spawn_checkers()
        if not self._checkers:
            raise KoptError(f"no Ray node of kind {self.kind.get('device')} has a free "
                            f"{'GPU' if self.target == 'cuda' else 'CPU'}", "check `ray status`")
        self._get(self._checkers[0].prepare.remote(self._task_ref, self.settings))

    def check(self, sources: Sequence[str], on_result=None) -> list[EvalResult]:
        self.prepare()
        n = len(sources)
        self.progress("compile", 0, n)
        self.progress("check", 0, n)

        def call(actor, j):
            return actor.check.remote(self._task_ref, self.settings, sources[j])

        def bump(done: int) -> None:
            self.progress("compile", done, n)
            self.progress("check", done, n)

        results = self._dispatch(list(range(n)), sources, self._checkers, self._spawn_checkers, call, on_result, bump)
        return [results[j] for j in range(n)]

    def time(self, sources: Sequence[str], results: Sequence[EvalResult], on_result=None) -> list[EvalResult]:
        if len(sources) != len(results):
            raise ValueError("time() needs one result per source")
        self._retire(self._checkers)  # nothing of kopt's runs beside a timed call
        if not self._timers:
            self._timers = self._spawn_timers()
        todo = [i for i, r in enumerate(results) if r.correct]
        self.progress("time", 0, len(todo))

        def call(actor, j):
            return actor.time.remote(self._task_ref, self.settings, sources[j], results[j].to_json())

        out = list(results)
        timed = self._dispatch(todo, sources, self._timers, self._spawn_timers, call, on_result,
                               lambda done: self.progress("time", done, len(todo)))
        for j, r in timed.items():
            out[j] = r
        return out

    def close(self) -> None:
        self._retire(self._checkers)
        self._retire(self._timers)

    # ---- scheduling ----------------------------------------------------------------------------------
    def _get(self, ref):
        from ray.exceptions import RayTaskError

        try:
            return self.ray.get(ref)
        except RayTaskError as exc:  # kopt's own error on the node (e.g. the task's reference fails): the user's
            cause = getattr(exc, "cause", None)
            if isinstance(cause, KoptError):
                raise cause from None
            raise

    def _dispatch(self, jobs: list[int], sources: Sequence[str], actors: list, respawn: Callable[[], list],
                  call: Callable, on_result, bump: Callable[[int], None]) -> dict[int, EvalResult]:
        """Run `jobs` on `actors`, one job per actor at a time; a job whose actor dies goes to another
        (respawned on the alive nodes when none is left). Each accepted verdict goes to on_result at once."""
        from ray.exceptions import RayActorError, RayTaskError

        queue = deque(jobs)
        attempts = dict.fromkeys(jobs, 0)
        idle = deque(actors)
        busy: dict[Any, tuple[Any, int]] = {}
        done: dict[int, EvalResult] = {}

        def finish(j: int, result: EvalResult) -> None:
            done[j] = result
            if on_result:
                on_result(j, result)
            bump(len(done))

        while queue or busy:
            if not idle and not busy:
                fresh = respawn()
                actors.extend(fresh)
                idle.extend(fresh)
                if not fresh:  # no node left to run them on
                    while queue:
                        j = queue.popleft()
                        finish(j, lost(sources[j], self.target, attempts[j]))
                    break
            while queue and idle:
                actor, j = idle.popleft(), queue.popleft()
                busy[call(actor, j)] = (actor, j)
            ready, _ = self.ray.wait(list(busy), num_returns=1)
            for ref in ready:
                actor, j = busy.pop(ref)
                try:
                    payload = self._get(ref)
                except (RayActorError, RayTaskError) as exc:
                    if isinstance(exc, RayTaskError) and not isinstance(exc, RayActorError):
                        raise
                    if actor in actors:
                        actors.remove(actor)
                    attempts[j] += 1
                    if attempts[j] >= MAX_ATTEMPTS:
                        finish(j, lost(sources[j], self.target, attempts[j]))
                    else:
                        queue.appendleft(j)
                    continue
                idle.append(actor)
                finish(j, accept(payload, sources[j], self.kind, self.target))
        return done


def _node_worker():
    from kopt.executors.node import NodeWorker

    return NodeWorker
