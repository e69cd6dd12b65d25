"""The speed-of-light floor (a real copy-bandwidth measurement, cached in KOPT_HOME) and the spread helpers."""

from __future__ import annotations

import json
import math
import time

import torch

from kopt.evaluator import floor
from kopt.evaluator.floor import Bandwidth


def test_measure_gives_an_ascending_curve_of_plausible_bandwidths():
    bw = floor.measure("cpu", sizes=(1 << 16, 1 << 20), repeats=3)
    assert [s for s, _ in bw.points] == [1 << 16, 1 << 20]
    assert all(b > 1e8 for _, b in bw.points)  # any machine copies faster than 100 MB/s
    assert bw.key.startswith("cpu|") and "threads=" in bw.key


def test_bandwidth_is_measured_in_its_own_process_and_cached(kopt_home):
    t0 = time.monotonic()
    first = floor.bandwidth("cpu", 1, sizes=(1 << 16, 1 << 20))
    assert first is not None and [s for s, _ in first.points] == [1 << 16, 1 << 20]
    cache = json.loads((kopt_home / "floor.json").read_text())
    assert list(cache) == ["cpu|threads=1"] and cache["cpu|threads=1"]["key"].endswith("threads=1")
    assert time.monotonic() - t0 < 60
    cache["cpu|threads=1"]["points"] = [[1 << 20, 123.0]]  # the cache is what a later call returns
    (kopt_home / "floor.json").write_text(json.dumps(cache))
    assert floor.bandwidth("cpu", 1).points == ((1 << 20, 123.0),)


def test_the_curve_never_assumes_less_than_a_larger_copy_showed():
    bw = Bandwidth("cpu", "k", ((1 << 20, 50e9), (16 << 20, 1e9), (128 << 20, 10e9)))  # a noisy middle point
    assert bw.at(1000) == 50e9  # below the smallest size: the fastest figure
    assert bw.at(40 << 20) == 10e9  # 16 MiB fits but measured slower than 128 MiB: raised to 10 GB/s
    assert bw.at(1 << 30) == 10e9
    assert Bandwidth("cpu", "k", ()).at(10) == math.inf and floor.floor_ms(10, Bandwidth("cpu", "k", ())) == 0.0


def test_floor_ms_and_bytes_moved():
    x, y = torch.empty(64, 16384), torch.empty(64, 16384)
    state = {"w": torch.empty(16384)}
    assert floor.bytes_moved([x, 2.0], [y]) == 2 * 64 * 16384 * 4
    assert floor.bytes_moved([x], [y], state) == 2 * 64 * 16384 * 4 + 16384 * 4
    assert math.isclose(floor.floor_ms(8 << 20, 8e9), (8 << 20) / 8e9 * 1e3)


def test_an_impossible_time_is_flagged_a_real_one_is_not():
    """x * alpha (the scalar loop once reported 10.6x faster than torch.mul): torch's own time on this machine
    is above the floor; a tenth of the floor is flagged; a deliberately slow time is not."""
    x = torch.randn(512, 4096)  # 8 MiB in, 8 MiB out
    out = torch.empty_like(x)
    bw = floor.measure("cpu", sizes=(1 << 20, 8 << 20), repeats=5)
    least = floor.floor_ms(floor.bytes_moved([x], [out]), bw)
    assert least > 0
    best = math.inf
    for _ in range(15):
        t0 = time.perf_counter_ns()
        torch.mul(x, 0.5, out=out)
        best = min(best, (time.perf_counter_ns() - t0) / 1e6)
    assert floor.implausible(best, least) is None, (best, least)
    why = floor.implausible(least / 10, least)
    assert why and "speed of light" in why and "10.0x" in why
    assert floor.implausible(least * 100, least) is None
    assert floor.implausible(float("nan"), least) is None and floor.implausible(1.0, 0.0) is None


def test_noisy_warns_over_a_quarter():
    why = floor.noisy(1.0, 0.6)
    assert why and "60%" in why and "rank" in why
    assert floor.noisy(1.0, 0.2) is None and floor.noisy(0.0, 1.0) is None and floor.noisy(1.0, float("nan")) is None


def test_speedup_spread():
    assert floor.format_speedup(1.0, 0.1, 2.21, 0.2) == "2.21x (IQR 2.0-2.4x)"
    assert floor.format_speedup(2.0, 0.1, 0.86, 0.02) == "0.43x (IQR 0.41-0.45x)"
    speed, low, high = floor.speedup_range(1.0, 3.0, 2.0, 0.0)
    assert speed == 2.0 and math.isclose(low, 0.8) and high == math.inf
    assert floor.format_speedup(1.0, 3.0, 2.0, 0.0) == "2.00x (IQR 0.80-infx)"
