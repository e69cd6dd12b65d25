"""`kopt check`: does each committed kernel (`kernels/<task>/`) still match its reference?

For every kernel directory, cheapest check first:

1. staleness: the reference's current task hash (an AST hash, kopt/task.py: no torch, milliseconds) against
   the one report.json recorded. A different hash means the module changed: "stale".
2. integrity: model_new.py against the winner's recorded code_sha256, and kernel.cpp|kernel.cu against the
   source embedded in model_new.py. A kernel someone edited is re-checked for correctness.
3. correctness on this machine, through the evaluator, for stale and edited kernels (all kernels with
   --all). Verdicts are cached by (kernel code sha256, task hash, target, machine fingerprint, settings).
4. timing, only when this machine's device is the recorded one (re-timing elsewhere says nothing about the
   recorded speedup), and only for kernels that step 3 checked: a slowdown beyond --tolerance fails.

What passes: a kernel whose task hash is unchanged and whose files are the recorded winner needs no process
at all (its report.json verdict stands), so a no-op check costs a few file reads. A stale kernel never
passes, even when it is still correct against the new reference: its recorded speedup was measured against
the old module, so the fix is always to re-record it with `kopt optimize ... --force`. The cached verdict
makes a repeated blocking check as cheap as a passing one.
"""

from __future__ import annotations

import contextlib
import enum
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from kopt import kernels
from kopt.errors import KoptError
from kopt.git import changed_since_merge_base, repo_root
from kopt.kernels import KERNEL_FILES, MODEL_NEW, REPORT, KernelRecord, sha256_text
from kopt.records import Progress, no_progress

# Default --tolerance: a re-timed speedup may fall 10% below the recorded one before it fails. Timing noise
# on a quiet machine is a few percent (kopt reports median and IQR; docs/evaluator.md §3); 10% leaves room.
DEFAULT_TOLERANCE = 0.10


class Verdict(str, enum.Enum):
    """What `kopt check` concluded for one kernel. The values are what `--json` prints."""

    PASS = "pass"
    STALE = "stale"  # the reference changed since the kernel was recorded
    INCORRECT = "incorrect"  # fails (or no longer compiles) against the current reference on this machine
    SLOWER = "slower"  # re-timed on the recorded device, speedup fell beyond --tolerance
    MISMATCH = "mismatch"  # kernel.cpp|cu differs from the source model_new.py runs
    BROKEN = "broken"  # report.json unreadable, reference missing or unloadable

    def __str__(self) -> str:
        return self.value

    @property
    def ok(self) -> bool:
        return self is Verdict.PASS


@dataclass(frozen=True)
class CheckSettings:
    tolerance: float = DEFAULT_TOLERANCE
    timing: bool = True
    check_all: bool = False  # correctness for every kernel, not only stale or edited ones
    use_cache: bool = True


@dataclass(frozen=True)
class KernelCheck:
    """One kernel directory's result. `skipped` names each check that did not run, and why."""

    kernel_dir: str
    task: str
    reference: str  # the reference TARGET as seen from the current directory
    verdict: Verdict
    reason: str = ""
    stale: bool = False
    edited: bool = False
    recorded_hash: str = ""
    current_hash: str = ""
    correctness: str = "recorded"  # recorded | cached | checked | skipped
    status: str | None = None  # the evaluator's Status value when correctness ran (or came from the cache)
    recorded_speedup: float | None = None
    current_speedup: float | None = None
    skipped: tuple[str, ...] = ()
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["verdict"] = self.verdict.value
        d["skipped"] = list(self.skipped)
        return d


@dataclass(frozen=True)
class CheckReport:
    results: tuple[KernelCheck, ...]
    selected_by: str  # "all kernels" or "changed since <merge base>"
    not_selected: tuple[str, ...] = ()  # kernel dirs found but left out by --base
    elapsed_s: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> tuple[KernelCheck, ...]:
        return tuple(r for r in self.results if not r.verdict.ok)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": not self.failed,
            "selected_by": self.selected_by,
            "checked": [r.to_json() for r in self.results],
            "not_selected": list(self.not_selected),
            "failed": [r.kernel_dir for r in self.failed],
            "elapsed_s": round(self.elapsed_s, 3),
            "notes": list(self.notes),
        }


# ---- finding kernel directories ---------------------------------------------------------------------

def find_kernel_dirs(paths: Sequence[Path] | None, root: Path) -> list[Path]:
    """Kernel dirs named by PATHS (a kernel dir, or a folder holding several); default kernels/*/ under root."""
    if not paths:
        base = root / "kernels"
        return sorted(p.parent for p in base.glob(f"*/{REPORT}")) if base.is_dir() else []
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_file() and p.name == REPORT:
            p = p.parent
        if (p / REPORT).is_file():
            found.append(p)
        elif p.is_dir():
            inner = sorted(r.parent for r in p.rglob(REPORT) if not any(s.startswith(".") for s in r.parts))
            if not inner:
                raise KoptError(f"{p} holds no kernel directory (no {REPORT} under it)",
                                "name a kernels/<task>/ directory written by `kopt optimize`")
            found.extend(inner)
        else:
            raise KoptError(f"{p}: no such kernel directory", "name a kernels/<task>/ directory or a folder of them")
    return list(dict.fromkeys(found))


def read_report(kernel_dir: Path) -> KernelRecord:
    """The kernel dir's record (kopt/kernels.py); KoptError when it is missing or unreadable."""
    return kernels.read(kernel_dir)


# ---- the evaluator side (imported only when something must run) ---------------------------------------

class _Machine:
    """Evaluator access shared by all kernels of one check: fingerprints per target, lazily."""

    def __init__(self) -> None:
        self._fp: dict[str, dict[str, str] | None] = {}

    def fingerprint(self, target: str) -> dict[str, str] | None:
        """None when this machine cannot run `target` kernels (no evaluator, no GPU)."""
        if target not in self._fp:
            try:
                from kopt.evaluator import machine_fingerprint

                ok = target != "cuda" or _has_cuda()
                self._fp[target] = machine_fingerprint(target) if ok else None
            except (ImportError, KoptError):
                self._fp[target] = None
        return self._fp[target]


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@contextlib.contextmanager
def _evaluator(task, settings):
    from kopt.evaluator import Evaluator

    ev = Evaluator(task, settings)
    try:
        yield ev
    finally:
        ev.close()


def _eval_settings(record: KernelRecord, target: str):
    """The settings the kernel was judged with (tolerances, trials, threads), on this machine's target."""
    import dataclasses

    from kopt.evaluator import EvalSettings

    names = {f.name for f in dataclasses.fields(EvalSettings)}
    keep = {k: v for k, v in record.eval_settings.items() if k in names and k in ("atol", "rtol", "trials", "threads")}
    return EvalSettings(target=target, **keep)


# ---- checking one kernel ----------------------------------------------------------------------------------

Display = Callable[[Path], str]


def check_kernel(kernel_dir: Path, settings: CheckSettings, cache, machine: _Machine,
                 display: Display = str, progress: Progress = no_progress) -> KernelCheck:
    shown = display(kernel_dir)
    try:
        record = read_report(kernel_dir)
    except KoptError as e:
        return KernelCheck(kernel_dir=shown, task=kernel_dir.name, reference="?", verdict=Verdict.BROKEN,
                           reason=e.message, fix=e.hint)
    assert record.winner is not None
    target_shown = display(record.reference_path(kernel_dir))
    cls = kernels.split_target(record.reference_target(kernel_dir))[1]
    if cls:
        target_shown += f":{cls}"
    base = KernelCheck(kernel_dir=shown, task=record.task.name or kernel_dir.name, reference=target_shown,
                       verdict=Verdict.PASS, recorded_hash=record.task.hash,
                       recorded_speedup=record.winner.speedup,
                       fix=record.rerecord_command(target_shown, shown))
    try:
        task = record.load_reference(kernel_dir)
    except KoptError as e:
        return replace(base, verdict=Verdict.BROKEN, reason=f"reference: {e.message}",
                       fix=f"restore {target_shown}, or delete {shown} if the module is gone")
    try:
        files = kernels.integrity(kernel_dir, record)
    except OSError as e:
        return replace(base, current_hash=task.hash, verdict=Verdict.BROKEN, reason=f"{MODEL_NEW}: {e}")
    code, edited, mismatch = files.code, files.edited, files.mismatch
    stale = task.hash != base.recorded_hash
    base = replace(base, current_hash=task.hash, stale=stale, edited=edited)
    if mismatch and not edited:
        return _mismatch(base, mismatch)
    if not (stale or edited or settings.check_all):
        return base  # the recorded verdict stands: nothing relevant changed

    skipped: list[str] = []
    target = record.target
    fp = machine.fingerprint(target)
    if fp is None:
        why = ("the evaluator is not available" if target != "cuda"
               else "the kernel targets CUDA and this machine has no CUDA GPU")
        skipped.append(f"correctness: {why}")
        skipped.append(f"timing: {why}")
        return _conclude(base, None, None, skipped, settings, mismatch)

    from kopt.records import EvalResult, Status

    key = {"code": sha256_text(code), "task": task.hash, "target": target, "machine": fp,
           "settings": _settings_key(record, target)}
    verdict_json = cache.get("kcheck", key) if settings.use_cache else None
    if verdict_json is not None:
        checked, how = EvalResult.from_json(verdict_json), "cached"
    else:
        progress(f"check {task.name}", 0, 1)
        with _evaluator(task, _eval_settings(record, target)) as ev:
            [checked] = ev.check([code])
            how = "checked"
            cache.set("kcheck", key, checked.to_json())
            timed = _maybe_time(ev, code, checked, record, fp, stale, settings, cache, key, skipped)
        progress(f"check {task.name}", 1, 1)
        return _conclude(replace(base, correctness=how, status=checked.status.value), checked, timed, skipped,
                         settings, mismatch)
    timed = None
    if checked.status is Status.CORRECT and _wants_timing(record, fp, stale, settings, skipped):
        cached_t = cache.get("ktime", key) if settings.use_cache else None
        if cached_t is not None:
            timed = EvalResult.from_json(cached_t)
        else:
            with _evaluator(task, _eval_settings(record, target)) as ev:
                [timed] = ev.time([code], [checked])
            cache.set("ktime", key, timed.to_json())
    return _conclude(replace(base, correctness=how, status=checked.status.value), checked, timed, skipped, settings,
                     mismatch)


def _settings_key(record: KernelRecord, target: str) -> Any:
    s = _eval_settings(record, target)
    return s.key() if hasattr(s, "key") else repr(s)


def _wants_timing(record: KernelRecord, fp: dict[str, str], stale: bool, settings: CheckSettings,
                  skipped: list[str]) -> bool:
    if not settings.timing:
        skipped.append("timing: --no-timing")
        return False
    if stale:
        skipped.append("timing: the kernel is stale; `kopt optimize --force` re-times it against the new reference")
        return False
    if fp.get("device") != record.device:
        skipped.append(f"timing: recorded on {record.device!r}, this machine is {fp.get('device')!r}; "
                       "a speedup measured elsewhere is not comparable")
        return False
    return True


def _maybe_time(ev, code, checked, record, fp, stale, settings, cache, key, skipped):
    from kopt.records import Status

    if checked.status is not Status.CORRECT or not _wants_timing(record, fp, stale, settings, skipped):
        return None
    [timed] = ev.time([code], [checked])
    cache.set("ktime", key, timed.to_json())
    return timed


def _mismatch(base: KernelCheck, why: str) -> KernelCheck:
    d = base.kernel_dir
    return replace(base, verdict=Verdict.MISMATCH, reason=why,
                   fix=f"put the change into {d}/{MODEL_NEW} (then re-check), or `git checkout -- {d}`")


def _conclude(base: KernelCheck, checked, timed, skipped: list[str], settings: CheckSettings,
              mismatch: str | None = None) -> KernelCheck:
    from kopt.records import Status

    out = replace(base, skipped=tuple(skipped))
    if checked is None:
        out = replace(out, correctness="skipped")
    failed = checked is not None and checked.status is not Status.CORRECT
    if failed:
        first = (checked.reason or "").strip().splitlines()
        why = f"{checked.status.value}: {first[0] if first else 'no reason given'}"
    if base.stale:
        # Stale wins over incorrect: the cause is the reference change, and the fix is the same either way.
        how = (f"and now fails against it ({why})" if failed else
               "still correct against it, but its speedup was measured on the old module" if checked is not None
               else "correctness not checked here")
        return replace(out, verdict=Verdict.STALE, reason=f"the reference changed since the kernel was recorded, {how}")
    if failed:
        return replace(out, verdict=Verdict.INCORRECT, reason=f"fails against its reference on this machine ({why})")
    if timed is not None and timed.speedup is not None and base.recorded_speedup:
        out = replace(out, current_speedup=timed.speedup)
        floor = base.recorded_speedup * (1.0 - settings.tolerance)
        if timed.speedup < floor:
            return replace(out, verdict=Verdict.SLOWER,
                           reason=f"{timed.speedup:.2f}x now vs {base.recorded_speedup:.2f}x recorded "
                                  f"(more than {settings.tolerance:.0%} slower)")
    if mismatch:
        return _mismatch(out, mismatch)
    if base.edited:
        return replace(out, reason=f"{MODEL_NEW} differs from the recorded winner but is correct here", fix=None)
    return replace(out, fix=None)


# ---- selection by git changes (--base) --------------------------------------------------------------------

def select_changed(dirs: Iterable[Path], changed: set[Path]) -> tuple[list[Path], list[Path]]:
    """Kernel dirs whose own files or whose reference file is among `changed`; and the rest."""
    picked, rest = [], []
    for d in dirs:
        touched = any((d / name).resolve() in changed for name in KERNEL_FILES)
        if not touched:
            try:
                touched = read_report(d).reference_path(d).resolve() in changed
            except KoptError:
                touched = True  # an unreadable report is a failure worth reporting
        (picked if touched else rest).append(d)
    return picked, rest


# ---- the whole check ------------------------------------------------------------------------------------

def run_check(paths: Sequence[Path] | None = None, base: str | None = None, settings: CheckSettings | None = None,
              cwd: Path | None = None, progress: Progress = no_progress, changed: set[Path] | None = None,
              changed_label: str = "") -> CheckReport:
    """Check the kernels under PATHS (default kernels/*/ at the repo root or cwd).

    `base` selects only the kernels touched since the merge base of BASE and HEAD; `changed` (used by the
    hook) passes that set directly.
    """
    from kopt.cache import Cache

    t0 = time.perf_counter()
    settings = settings or CheckSettings()
    cwd = (cwd or Path.cwd()).resolve()
    root = None
    if not paths or base is not None:
        root = repo_root(cwd) if (base is not None or not (cwd / "kernels").is_dir()) else None
    if base is not None and root is None:
        raise KoptError("--base needs a git repository", "run kopt check inside the repository, or drop --base")
    dirs = [d.resolve() for d in find_kernel_dirs(paths, root or cwd)]
    selected_by = "all kernels"
    rest: list[Path] = []
    if base is not None:
        changed, selected_by = changed_since_merge_base(root, base)
    elif changed is not None:
        selected_by = changed_label or "changed files"
    if changed is not None:
        dirs, rest = select_changed(dirs, changed)

    def display(p: Path) -> str:
        try:
            return os.path.relpath(p, cwd)
        except ValueError:
            return str(p)

    notes: list[str] = []
    if not dirs and not rest:
        notes.append("no kernel directories found (kernels/<task>/report.json)")
    machine = _Machine()
    results = []
    with Cache(enabled=settings.use_cache) as cache:
        for d in dirs:
            results.append(check_kernel(d, settings, cache, machine, display, progress))
    return CheckReport(results=tuple(results), selected_by=selected_by, not_selected=tuple(display(d) for d in rest),
                       elapsed_s=time.perf_counter() - t0, notes=tuple(notes))
