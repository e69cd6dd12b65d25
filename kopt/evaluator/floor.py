"""The speed-of-light floor and the spread of timings: when a figure is too good, or too noisy, to trust.

**Floor.** A forward must read its inputs and write its outputs, so it cannot take less than
`bytes_moved / bandwidth`: bytes_moved = every input byte read + every output byte written (+ parameters and
buffers when the caller passes them), and the bandwidth is the machine's own copy bandwidth at that working-set
size, measured in a trusted process that runs no candidate code (CPU: torch's multi-threaded `copy_`, best of a
few; GPU: a device-to-device copy timed with CUDA events) and cached per device in $KOPT_HOME/floor.json.
Bandwidth falls with size (L1 > L2 > LLC > DRAM), so the floor for W bytes uses the bandwidth measured at the
largest size <= W (or the fastest one, below the smallest size): never more than the truth, so the floor is a
lower bound. A time under floor / MARGIN is *implausible*: either noise (a clock that jumped, a call that did
not run) or a hack (work done outside the timed call, a result served from a cache). MARGIN = 2 covers what an
honest kernel can do better than torch's copy (streaming stores skip the destination's read-for-ownership,
about 1.5x less traffic) and the bandwidth measurement's own noise.

**Spread.** A speedup is a ratio of medians; with each median comes its inter-quartile range. `noisy` warns
when a timing's IQR is over NOISY_IQR_FRACTION (25%) of its median: two candidates within that of each other
cannot be ranked. `format_speedup` writes "2.21x (IQR 2.0-2.4x)": the range divides the reference's quartiles
(median +- IQR/2) by the candidate's, slowest against fastest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MARGIN = 2.0
NOISY_IQR_FRACTION = 0.25
# Copy sizes (bytes per side) measured for the bandwidth curve: L2-sized, LLC-sized, past most LLCs.
CURVE_BYTES = (1 << 20, 16 << 20, 128 << 20)
CACHE_FILE = "floor.json"


@dataclass(frozen=True)
class Bandwidth:
    """Copy bandwidth (bytes read + bytes written per second) at each measured size, for one device."""

    device: str  # "cpu" or "cuda:0"
    key: str  # the cache key: device, its model, the thread count
    points: tuple[tuple[int, float], ...]  # (bytes per side, bytes moved per second), sizes ascending

    def at(self, nbytes: int) -> float:
        """The bandwidth to assume for a working set of `nbytes` (see the module docstring: never too low)."""
        if not self.points:
            return float("inf")
        # The largest size that fits in the working set, raised to any larger size's figure: a smaller copy
        # is never slower in truth, so a lower figure there is the measurement's noise (a busy machine).
        k = max([i for i, (size, _) in enumerate(self.points) if 2 * size <= nbytes], default=0)
        return max(bw for _, bw in self.points[k:]) if k else max(bw for _, bw in self.points)


def tensor_bytes(values) -> int:
    """The bytes of every tensor in `values` (lists, tuples and dicts recursed; other values count 0)."""
    import torch

    if isinstance(values, torch.Tensor):
        return values.numel() * values.element_size()
    if isinstance(values, dict):
        return sum(tensor_bytes(v) for v in values.values())
    if isinstance(values, (list, tuple)):
        return sum(tensor_bytes(v) for v in values)
    return 0


def bytes_moved(inputs, outputs, state=None) -> int:
    """Every input byte read + every output byte written (+ the model's parameters and buffers, `state`)."""
    return tensor_bytes(inputs) + tensor_bytes(outputs) + (tensor_bytes(state) if state is not None else 0)


def floor_ms(nbytes: int, bandwidth: Bandwidth | float) -> float:
    """The least time, in ms, to move `nbytes` at `bandwidth` (a Bandwidth, or bytes per second)."""
    bw = bandwidth.at(nbytes) if isinstance(bandwidth, Bandwidth) else float(bandwidth)
    return 0.0 if bw <= 0 or bw == float("inf") else nbytes / bw * 1e3


def implausible(runtime_ms: float, floor: float, margin: float = MARGIN) -> str | None:
    """A sentence when `runtime_ms` is under the floor (`floor` ms) divided by `margin`, else None."""
    if not floor > 0 or not runtime_ms == runtime_ms:  # no floor, or a NaN time: nothing to say
        return None
    if runtime_ms * margin >= floor:
        return None
    return (f"{runtime_ms:.4g} ms is under the speed of light: moving its inputs and outputs takes at least "
            f"{floor:.4g} ms on this machine ({floor / max(runtime_ms, 1e-12):.1f}x more), so the time is "
            f"noise or the work happened outside the timed call")


def noisy(median_ms: float, iqr_ms: float, limit: float = NOISY_IQR_FRACTION) -> str | None:
    """A warning when the IQR is over `limit` of the median (too wide to rank on), else None."""
    if not median_ms > 0 or not iqr_ms == iqr_ms or iqr_ms <= limit * median_ms:
        return None
    return (f"noisy timing: the IQR {iqr_ms:.3g} ms is {iqr_ms / median_ms:.0%} of the {median_ms:.3g} ms median "
            f"(over {limit:.0%}): too wide to rank on; rerun on an idle machine or time for longer")


def speedup_range(cand_median_ms: float, cand_iqr_ms: float, ref_median_ms: float,
                  ref_iqr_ms: float) -> tuple[float, float, float]:
    """(speedup, low, high): ref/cand medians, and the slowest and fastest ratio of their quartile estimates
    (median -+ IQR/2). A candidate quartile at or below zero gives high = inf."""
    speed = ref_median_ms / cand_median_ms if cand_median_ms > 0 else float("inf")
    c_lo, c_hi = cand_median_ms - cand_iqr_ms / 2, cand_median_ms + cand_iqr_ms / 2
    r_lo, r_hi = max(ref_median_ms - ref_iqr_ms / 2, 0.0), ref_median_ms + ref_iqr_ms / 2
    low = r_lo / c_hi if c_hi > 0 else float("inf")
    high = r_hi / c_lo if c_lo > 0 else float("inf")
    return speed, low, high


def format_speedup(cand_median_ms: float, cand_iqr_ms: float, ref_median_ms: float, ref_iqr_ms: float) -> str:
    """"2.21x (IQR 2.0-2.4x)" for a candidate against the reference, from both medians and IQRs."""
    speed, low, high = speedup_range(cand_median_ms, cand_iqr_ms, ref_median_ms, ref_iqr_ms)
    main = _two_digits(speed) if speed < 1 else _two_digits(speed, 3)
    return f"{main}x (IQR {_two_digits(low)}-{_two_digits(high)}x)"


def _two_digits(x: float, digits: int = 2) -> str:
    """2.0, 0.41, 24, 1350: `digits` significant digits, trailing zeros kept, no exponent."""
    if x == float("inf"):
        return "inf"
    if x >= 10 ** (digits - 1):
        return f"{x:.0f}"
    return f"{x:#.{digits}g}".rstrip(".")


def _device_key(device: str, threads: int, torch) -> str:
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = "unknown cpu"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return f"{device}|{name}|threads={threads}"


def measure(device: str = "cpu", *, sizes: tuple[int, ...] = CURVE_BYTES, repeats: int = 5, rounds: int = 3,
            threads: int | None = None) -> Bandwidth:
    """Measure the copy-bandwidth curve in this process (call it only where no candidate code runs).

    CPU: `dst.copy_(src)` on `threads` torch threads, best of `repeats` after a warm-up copy. GPU: a
    device-to-device copy between CUDA events. Bandwidth counts the bytes read plus the bytes written.
    Noise only ever makes a copy slower, and a figure that is too low makes the floor too high (honest
    kernels flagged), so every size keeps its best over `rounds` passes over the sizes, spread in time."""
    best: dict[int, float] = {}
    key = ""
    for _ in range(max(rounds, 1)):
        key, points = _measure_once(device, sizes, repeats, threads)
        for size, bw in points:
            best[size] = max(best.get(size, 0.0), bw)
    return Bandwidth(device=device, key=key, points=tuple(sorted(best.items())))


def _measure_once(device: str, sizes: tuple[int, ...], repeats: int, threads: int | None):
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    used = torch.get_num_threads()
    cuda = device.startswith("cuda")
    points = []
    for size in sizes:
        n = max(size // 4, 1)
        src = torch.ones(n, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)
        dst.copy_(src)  # warm-up: page faults, the allocator, the clock
        best = float("inf")
        for _ in range(max(repeats, min(50, (64 << 20) // max(size, 1)))):  # small copies are cheap: more tries
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                dst.copy_(src)
                end.record()
                torch.cuda.synchronize()
                seconds = start.elapsed_time(end) / 1e3
            else:
                t0 = time.perf_counter_ns()
                dst.copy_(src)
                seconds = (time.perf_counter_ns() - t0) / 1e9
            best = min(best, seconds)
        points.append((n * 4, 2 * n * 4 / max(best, 1e-9)))
        del src, dst
    return _device_key(device, used, torch), points


def _cache_path() -> Path:
    from kopt.config import kopt_home

    return kopt_home() / CACHE_FILE


def _load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def bandwidth(device: str = "cpu", threads: int | None = None, *, refresh: bool = False,
              timeout_s: float = 120.0, sizes: tuple[int, ...] = CURVE_BYTES) -> Bandwidth | None:
    """The cached copy bandwidth for `device` at `threads`, measured first (in a fresh `python -m
    kopt.evaluator.floor` process, so kopt's own process never opens a CUDA context) when not cached or when
    `refresh`. None when the measurement fails: then there is no floor, and callers say nothing about it."""
    path = _cache_path()
    threads = int(threads or 0)
    wanted = f"{device}|threads={threads}"
    cache = _load_cache(path)
    hit = cache.get(wanted)
    if hit and not refresh:
        try:
            return Bandwidth(device=device, key=str(hit["key"]),
                             points=tuple((int(s), float(b)) for s, b in hit["points"]))
        except (KeyError, TypeError, ValueError):
            pass
    cmd = [sys.executable, "-m", "kopt.evaluator.floor", device, str(threads), *map(str, sizes)]
    root = str(Path(__file__).resolve().parents[2])  # kopt's own tree first, whatever the caller's cwd
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                              env=env)
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        bw = Bandwidth(device=device, key=str(data["key"]), points=tuple((int(s), float(b)) for s, b in data["points"]))
    except (subprocess.TimeoutExpired, OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    cache = _load_cache(path)  # reread: another process may have written meanwhile
    try:  # keep each size's best figure across measurements: a busy moment only ever lowers it
        for size, old in cache.get(wanted, {}).get("points", []):
            merged = dict(bw.points)
            if int(size) in merged and float(old) > merged[int(size)]:
                merged[int(size)] = float(old)
                bw = Bandwidth(device=device, key=bw.key, points=tuple(sorted(merged.items())))
    except (TypeError, ValueError, AttributeError):
        pass
    cache[wanted] = {"key": bw.key, "points": [list(p) for p in bw.points], "measured_at": time.time()}
    tmp = path.with_name(f"{CACHE_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=1))
    os.replace(tmp, path)
    return bw


def main(argv: list[str]) -> int:
    """`python -m kopt.evaluator.floor DEVICE THREADS [SIZE...]`: print the measured curve as one JSON line."""
    device = argv[0] if argv else "cpu"
    threads = int(argv[1]) if len(argv) > 1 and argv[1] != "0" else None
    sizes = tuple(int(a) for a in argv[2:]) or CURVE_BYTES
    bw = measure(device, threads=threads, sizes=sizes)
    print(json.dumps({"key": bw.key, "points": [list(p) for p in bw.points]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
