"""Starting child sessions: the reference's Model or a candidate's ModelNew in a fresh sandboxed process
(session.py over kopt_child.harness), with its budget, environment and mounts, and spare sessions started
ahead of need so process start and the torch import stay off the critical path.

Check and time sessions of a candidate get the same argv, environment and init message: a child cannot tell
the modes apart (docs/evaluator.md "Check and time indistinguishable").
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import shutil
import threading
import uuid
from pathlib import Path

from kopt.records import Status

SPARE_IDLE_S = 3600.0  # how long a spare session may wait for its candidate
SESSION_STARTUP_S = 60.0  # a child session's start-up allowance (process, torch import, extension load)


class Launcher:
    def __init__(self, *, task, task_dir: Path, root: Path, build_dir: Path, settings, target, builder):
        self.task, self.task_dir, self.root, self.build_dir = task, task_dir, root, build_dir
        self.settings, self.target, self.builder = settings, target, builder
        self._lock = threading.Lock()
        self._spares: list = []
        self._spawner: cf.ThreadPoolExecutor | None = None
        self._closed = False

    def device(self) -> str:
        return "cuda" if self.settings.target == "cuda" else "cpu"

    def run_timeout(self, ref_check_s: float, timing: bool = False) -> float:
        """A session's budget from the reference's own measured check time, with a floor (never a flat 120 s):
        start-up (process + torch import) + max(10 s, 50 x the reference's check calls) (+ the timing loop),
        capped by --timeout."""
        work = max(10.0, 50.0 * ref_check_s)
        if timing:
            work += 4 * self.settings.min_time_s + 0.2 * max(self.settings.min_calls, 20) + 50.0 * ref_check_s
        return min(self.settings.run_timeout_s, SESSION_STARTUP_S + work) if not timing else SESSION_STARTUP_S + work

    def session(self, source: str | None, build, work: Path, ref, timing: bool = False, compiled: bool = False):
        """One child session: the candidate's ModelNew (source) or the trusted reference's Model (None).
        `ref` is the ReferenceData the session's models are built from."""
        from kopt.evaluator.session import Session, SessionFailure, SessionSpec

        # Timing sessions are started fresh and nothing is spawned while they run: a spare importing torch
        # beside a timed call takes a core from it and stretches kopt's intervals (2 cores: all of them).
        spare = self._take_spare(ref.check_s) if source is not None and not timing else None
        if spare is not None:
            work = spare.work  # the spare's own dir, bound into it at spawn
        work.mkdir(parents=True, exist_ok=True)
        readable: list[Path] = []
        if source is None:
            module, cls, what = str(self.task_dir / "task.py"), "Model", f"the reference {self.task.target}"
            readable.append(self.task_dir)
            if self.task.search_path and Path(self.task.search_path).is_dir():
                readable.append(Path(self.task.search_path))
            table: tuple = ()
        else:
            (work / "candidate.py").write_text(source)
            module, cls, what = str(work / "candidate.py"), "ModelNew", "the candidate"
            # Each .so is copied into the session's own dir and its copy re-hashed there: the child sees no
            # build store at all, and only kopt's harness runs in it before the copies are loaded.
            (work / "ext").mkdir(exist_ok=True)
            rows = []
            for row, ext in zip(self.builder.child_table(build), [e for e in build.extensions if not e.compile_only]):
                copy = work / "ext" / f"{ext.name}.so"
                shutil.copyfile(ext.so_path, copy)
                if hashlib.sha256(copy.read_bytes()).hexdigest() != ext.sha256:
                    if spare is not None:
                        spare.close()
                    raise SessionFailure(Status.REJECTED, "the compiled extension changed since it was built")
                rows.append(dict(row, so=str(copy)))
            table = tuple(rows)
        spec = SessionSpec(module=module, cls=cls, models=ref.model_specs(), extensions=table, ext_by_key=True,
                           threads=self.settings.resolved_threads(), device=self.device(),
                           search_path=self.task.search_path if source is None else None, what=what,
                           compile=compiled)
        env = self.env()
        writable: list[Path] = []
        timeout = self.run_timeout(ref.check_s, timing)
        if source is None:  # the trusted reference is not held to a candidate's budget (a loaded machine)
            timeout = max(timeout, 2 * self.settings.run_timeout_s)
        if spare is not None:
            return spare.assign(spec, timeout)
        if compiled:  # trusted reference only: Inductor needs the compiler and its own cache, never a candidate's
            cache = self.build_dir.parent / (self.build_dir.name + "-inductor")
            cache.mkdir(parents=True, exist_ok=True)
            writable.append(cache)
            env["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
            timeout += self.settings.compile_timeout_s
        budget = self.run_timeout(ref.check_s, True) + (self.settings.compile_timeout_s if compiled else 0)
        return Session(spec, work=work, readable=readable, timeout_s=timeout, writable=writable, toolchain=compiled,
                       max_rss_mb=self.settings.max_rss_mb, env=env, gpu=self.settings.target == "cuda",
                       cpu_budget_s=budget)

    def env(self) -> dict[str, str]:
        from kopt.evaluator import device_env

        env = {"OMP_NUM_THREADS": str(self.settings.resolved_threads())}
        env.update(self.target.build_env())
        env.update(device_env(self.settings))
        return env

    def close_spares(self) -> None:
        with self._lock:
            spares, self._spares = self._spares, []
        for spare in spares:
            spare.close()

    def close(self) -> None:
        self._closed = True
        self.close_spares()
        if self._spawner is not None:
            self._spawner.shutdown(wait=False)

    def _spawn_spare(self, ref_check_s: float):
        from kopt.evaluator.session import Session

        work = self.root / "work" / f"session-{uuid.uuid4().hex[:10]}"
        budget = self.run_timeout(ref_check_s, True)
        return Session(None, work=work, timeout_s=SPARE_IDLE_S + budget, max_rss_mb=self.settings.max_rss_mb,
                       env=self.env(), gpu=False, cpu_budget_s=budget, threads=self.settings.resolved_threads(),
                       remove_work=True)

    def _take_spare(self, ref_check_s: float):
        """A candidate session started ahead of need: every candidate still gets a fresh process of its own,
        with the same argv, environment and mounts. CPU only (a GPU device runs one child at a time)."""
        if self.settings.target != "cpu" or self._closed:
            return None
        # Spawned from one long-lived thread: the sandbox kills a child when the thread that started it exits
        # (bwrap --die-with-parent is per thread), and check()'s pool threads end before time() runs.
        with self._lock:
            if self._spawner is None:
                self._spawner = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kopt-spawner")
            spare = self._spares.pop(0) if self._spares else None
            while len(self._spares) < max(1, self.settings.jobs):
                self._spares.append(self._spawner.submit(self._spawn_spare, ref_check_s).result())
        return spare or self._spawner.submit(self._spawn_spare, ref_check_s).result()
