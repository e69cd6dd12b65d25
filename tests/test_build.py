"""The build stage end to end (kopt/evaluator/build.py): real sandboxed capture and compile children, the real
compiler, a real store on disk. Compiles are few and shared: one honest kernel serves the store, dedupe,
poisoning and run-child tests (one store for the module, as two kopt runs sharing one KOPT_HOME would have).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kopt.evaluator import EvalSettings
from kopt.evaluator.build import Builder
from kopt.evaluator.build_store import sha256_file
from kopt.evaluator.capture_stage import CaptureError, parse_capture
from kopt.records import EvalResult, Status

KERNEL = r'''
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

src = r"""
torch::Tensor double_it(torch::Tensor x) {
    auto xc = x.contiguous();
    auto out = torch::empty_like(xc);
    const float* in = xc.data_ptr<float>();
    float* o = out.data_ptr<float>();
    for (int64_t i = 0; i < xc.numel(); ++i) o[i] = 2.0f * in[i];  // kopt test_build honest kernel
    return out;
}
"""
ext = load_inline(name="double_it", cpp_sources=src, functions=["double_it"]PLACEHOLDER)


class ModelNew(nn.Module):
    def forward(self, x):
        return ext.double_it(x)
'''
HONEST = KERNEL.replace("PLACEHOLDER", "")
SETTINGS = EvalSettings(target="cpu", compile_timeout_s=600, run_timeout_s=120)


def _base(source: str, **kw) -> EvalResult:
    return EvalResult(source_sha256="x", target="cpu", **kw)


@pytest.fixture(scope="module")
def store_env(tmp_path_factory, kopt_build_dir):
    """One KOPT_HOME for the module and the session's KOPT_BUILD_DIR (its PCH is built once per session): the
    runs below share them as two kopt runs on one machine would."""
    home = tmp_path_factory.mktemp("home")
    old = {k: os.environ.get(k) for k in ("KOPT_HOME", "KOPT_BUILD_DIR")}
    os.environ.update(KOPT_HOME=str(home), KOPT_BUILD_DIR=str(kopt_build_dir))
    yield home, Path(kopt_build_dir)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _builder(store_env, settings=SETTINGS) -> Builder:
    os.environ.update(KOPT_HOME=str(store_env[0]), KOPT_BUILD_DIR=str(store_env[1]))
    return Builder(target="cpu", settings=settings, base=_base)


def _run_child(table: list[dict], source: str, tmp: Path) -> str:
    """A run child's view: kopt_child.extensions loads the prebuilt .so; prints ModelNew()(x)."""
    cand = tmp / "cand.py"
    cand.write_text(source)
    evaluator = Path(__file__).resolve().parent.parent / "kopt" / "evaluator"
    code = (f"import sys, json; sys.path.insert(0, {str(evaluator)!r})\n"
            "import torch\nfrom kopt_child.extensions import install\n"
            f"install(json.loads({json.dumps(json.dumps(table))}), lambda m: m)\n"
            "import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('cand', {str(cand)!r})\n"
            "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
            "print(mod.ModelNew()(torch.arange(4, dtype=torch.float32)).tolist())\n")
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=300)
    return proc.stdout.strip() + proc.stderr[-2000:]


# ---- the capture document is parsed strictly (no compile) -----------------------------------------------------

GOOD = {"version": 1, "calls": [{"kind": "load_inline", "cpp": ["int f();"], "cuda": [], "functions": ["f"],
                                 "options": {"extra_cflags": ["-O3"]}}],
        "model": True, "error": None, "error_type": None, "line": None}


@pytest.mark.parametrize("forged", [
    b'{"version": 1, "calls": [], "model": true, "error": null, "error_type": null, "line": NaN}',
    b'{"version": 1, "version": 1, "calls": [], "model": true, "error": null, "error_type": null, "line": null}',
    json.dumps({**GOOD, "status": "correct"}).encode(),
    json.dumps({**GOOD, "error": "correct"}).encode(),
    json.dumps({**GOOD, "line": True}).encode(),
    json.dumps({**GOOD, "calls": [{**GOOD["calls"][0], "sha256": "ab"}]}).encode(),
    json.dumps({**GOOD, "calls": [{**GOOD["calls"][0], "options": {"extra_cflags": [1]}}]}).encode(),
    json.dumps({**GOOD, "calls": [{**GOOD["calls"][0], "options": {"so_path": "/x"}}]}).encode(),
    json.dumps({**GOOD, "calls": GOOD["calls"] * 9}).encode(),
    b"[" * 100000 + b"]" * 100000,
    b"x" * (2 << 20),
    json.dumps(GOOD).encode() + b"{}",
    b"\xff\xfe",
])
def test_forged_capture_documents_are_refused(forged):
    with pytest.raises(CaptureError):
        parse_capture(forged)
    assert parse_capture(json.dumps(GOOD).encode())["calls"][0]["functions"] == ["f"]


def test_flag_rejection_needs_no_compile(store_env):
    src = HONEST.replace('functions=["double_it"]', 'functions=["double_it"], extra_ldflags=["-L/tmp", "-lfoo"]')
    r = _builder(store_env).build(src)
    assert r.failure is not None and r.failure.status is Status.REJECTED
    assert "-L/tmp" in r.failure.reason and "-lfoo" in r.failure.reason
    # the build stage's own judgement of the captured keywords (behind the static gate)
    from kopt.evaluator.build import plan_call

    call = {"kind": "load_inline", "cpp": ["int f();"], "cuda": [], "functions": ["f"],
            "options": {"extra_ldflags": ["-L/tmp", "-lfoo"], "extra_cflags": ["-O2", ""],
                        "build_directory": "/tmp/x"}}
    warnings: list[str] = []
    plan, why = plan_call(_builder(store_env), call, warnings)
    assert plan is None and any("-L/tmp" in w for w in why) and any("build_directory" in w for w in why)
    call["options"] = {"extra_cflags": ["-O2", "", "-ffast-math"], "extra_ldflags": ["-fopenmp"]}
    plan, why = plan_call(_builder(store_env), call, warnings)
    assert plan is not None and "-O2" in plan.cflags and "-ffast-math" not in plan.cflags
    assert any("-ffast-math dropped" in w for w in warnings)


def test_code_in_function_names_is_rejected(store_env):
    """torch pastes each function name into the bindings it generates: a name is code there."""
    from kopt.evaluator.build import plan_call

    call = {"kind": "load_inline", "cpp": ["int f();"], "cuda": [], "options": {},
            "functions": ['f", f); } static int injected = system("id"); PYBIND11_MODULE(x, m) { m.def("g']}
    plan, why = plan_call(_builder(store_env), call, [])
    assert plan is None and any("not a C++ function name" in w for w in why)
    call["functions"] = ["f", "ns::g"]
    plan, why = plan_call(_builder(store_env), call, [])
    assert plan is not None and not why


# ---- one honest build: store, dedupe, verify, run child, poisoning ----------------------------------------------

@pytest.fixture(scope="module")
def honest(store_env):
    b = _builder(store_env)
    r = b.build(HONEST)
    assert r.failure is None, r.failure.reason
    return b, r


@pytest.mark.slow
def test_honest_build_lands_read_only_in_the_store(honest, store_env, tmp_path):
    b, r = honest
    [ext] = r.extensions
    entry = Path(ext.so_path).parent
    assert entry.parent.name == "entries" and entry.parent.parent.name == "v2"
    assert not os.stat(ext.so_path).st_mode & 0o222 and not os.stat(entry).st_mode & 0o222
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["files"][f"{ext.name}.so"] == ext.sha256 == sha256_file(ext.so_path)
    assert b.verify(r) is None
    assert not list((store_env[1] / "v2" / "staging").iterdir())  # staging cleaned up
    # identical C++ in other Python, and a second process's Builder: no new compile, the same entry
    other = HONEST.replace('name="double_it"', 'name="other_name", verbose=True') + "\n# other Python\n"
    b2 = _builder(store_env)
    r2 = b2.build(other)
    assert r2.failure is None and r2.extensions[0].so_path == ext.so_path and r2.compile_s < 5
    assert any("verbose" in w for w in r2.warnings)
    assert "[0.0, 2.0, 4.0, 6.0]" in _run_child(b2.child_table(r2), other, tmp_path)


POISON = HONEST.replace("import torch\n", '''import torch, os, glob
# Cross-candidate build poisoning: at import, try to overwrite every kernel in kopt's store and plant files.
hits = []
for root in [os.environ.get("KOPT_BUILD_DIR", ""), "STORE"]:
    for so in glob.glob(os.path.join(root, "**", "*.so"), recursive=True):
        try:
            os.chmod(so, 0o644)
            with open(so, "r+b") as f:
                f.write(b"\\x7fELF planted")
            hits.append(so)
        except OSError:
            pass
    try:
        open(os.path.join(root, "v2", "entries", "planted"), "w").write("x")
    except OSError:
        pass
''', 1)


@pytest.mark.slow
def test_a_candidate_cannot_poison_another_kernels_build(honest, store_env, tmp_path):
    b, r = honest
    [ext] = r.extensions
    before = sha256_file(ext.so_path)
    from kopt.evaluator.capture_stage import run_capture

    poison = POISON.replace("STORE", str(store_env[1]))
    # The capture stage directly (the static gate, which rejects this source, is defence in depth only):
    # the candidate's Python runs, attacks, and still only gets its calls recorded.
    calls, failure = run_capture(_builder(store_env), poison)
    assert failure is None and len(calls) == 1, failure
    assert sha256_file(ext.so_path) == before and b.verify(r) is None
    assert not (store_env[1] / "v2" / "entries" / "planted").exists()
    # a later run (new Builder, same KOPT_HOME) evaluates the honest kernel with its own verified binary
    b3 = _builder(store_env)
    r3 = b3.build(HONEST)
    assert r3.extensions[0].sha256 == before and b3.verify(r3) is None
    assert "[0.0, 2.0, 4.0, 6.0]" in _run_child(b3.child_table(r3), HONEST, tmp_path)


@pytest.mark.slow
def test_a_tampered_store_entry_is_caught_and_rebuilt(honest, store_env, tmp_path):
    """What a candidate with write access would do: kopt's recorded hash and the manifest's MAC catch it."""
    b, r = honest
    [ext] = r.extensions
    os.chmod(ext.so_path, 0o644)
    with open(ext.so_path, "r+b") as f:
        f.seek(100)
        f.write(b"planted")
    assert "changed on disk" in b.verify(r)
    b2 = _builder(store_env)
    r2 = b2.build(HONEST)
    assert r2.failure is None and any("failed kopt's verification" in w for w in r2.warnings)
    assert b2.verify(r2) is None and sha256_file(r2.extensions[0].so_path) == r2.extensions[0].sha256
    assert "[0.0, 2.0, 4.0, 6.0]" in _run_child(b2.child_table(r2), HONEST, tmp_path)
    # the run child refuses an extension that was not captured (other sources at run time)
    out = _run_child(b2.child_table(r2), HONEST.replace("2.0f * in[i]", "3.0f * in[i]"), tmp_path)
    assert "UnknownExtension" in out


# ---- flags, compile errors, canaries, timeouts -------------------------------------------------------------

FLAGS = HONEST.replace('functions=["double_it"]', 'functions=["double_it"], '
                       'extra_cflags=["-O2", "", "-ffast-math", "-DKOPT_KEPT=1"], extra_ldflags=["-fopenmp"]') \
              .replace('src = r"""', 'src = r"""\n#ifndef KOPT_KEPT\n#error kept flag missing\n#endif\n'
                       '#ifdef __FAST_MATH__\n#error fast math was not dropped\n#endif')


@pytest.mark.slow
def test_flags_kept_and_dropped_reach_the_compiler(store_env):
    r = _builder(store_env).build(FLAGS)
    assert r.failure is None, r.failure.reason
    assert any("empty flag dropped" in w for w in r.warnings)
    assert any("-ffast-math dropped" in w for w in r.warnings)


def _compile_call(b: Builder, cpp: str):
    """The compile stage alone, on a call as the capture would record it (the static gate rejects these
    sources; this checks the wall behind it)."""
    from kopt.evaluator.build import compile_and_install, plan_call, store_key

    call = {"kind": "load_inline", "cpp": [cpp], "cuda": [], "functions": ["double_it"], "options": {}}
    plan, why = plan_call(b, call, [])
    assert plan is not None, why
    return compile_and_install(b, plan, store_key(b, plan))


KERNEL_CPP = HONEST.split('src = r"""')[1].split('"""')[0]
# .incbin spelled through token pasting (no "incbin" token, no asm keyword next to a path string)
INCBIN = ('#define STR2(x) #x\n#define STR(x) STR2(x)\n#define CAT(a, b) a##b\n'
          'asm(STR(CAT(.inc, bin)) " \\"CANARY\\"");\n' + KERNEL_CPP)
INCLUDE = '#include "CANARY"\n' + KERNEL_CPP


@pytest.mark.slow
def test_incbin_and_include_of_a_canary_never_reach_a_binary_or_the_reason(store_env):
    canary_dir = Path(tempfile.mkdtemp(prefix="kopt-canary-", dir="/var/tmp"))
    try:
        canary = canary_dir / "secret.txt"
        canary.write_text("kopt_canary_token_5f1e = 987654321;\n")
        os.chmod(canary_dir, 0o755)
        os.chmod(canary, 0o644)
        b = _builder(store_env)
        for cpp in (INCBIN, INCLUDE):
            doc, reason = _compile_call(b, cpp.replace("CANARY", str(canary)))
            assert doc is None, "the compile sandbox read a file outside its allowlist"
            assert reason and "kopt_canary_token_5f1e" not in reason and "987654321" not in reason
    finally:
        import shutil

        shutil.rmtree(canary_dir, ignore_errors=True)


BROKEN = HONEST.replace("auto out = torch::empty_like(xc);", "auto out = torch::empty_like(xc) // no semicolon")


@pytest.mark.slow
def test_compile_error_quotes_only_the_candidates_lines(store_env):
    r = _builder(store_env).build(BROKEN)
    assert r.failure is not None and r.failure.status is Status.COMPILE_ERROR
    assert r.failure.reason.startswith("compile error: C++ source line ")
    assert "expected" in r.failure.reason and "/" not in r.failure.reason  # no paths of kopt's


def test_a_killed_compile_leaves_nothing_in_the_store(store_env):
    import dataclasses

    src = HONEST.replace("2.0f * in[i]", "4.0f * in[i]")
    b = _builder(store_env, dataclasses.replace(SETTINGS, compile_timeout_s=2))
    before = set((store_env[1] / "v2" / "entries").iterdir()) if (store_env[1] / "v2" / "entries").exists() else set()
    r = b.build(src)
    assert r.failure is not None and r.failure.status is Status.TIMEOUT
    assert set((store_env[1] / "v2" / "entries").iterdir()) == before
    assert not [p for p in (store_env[1] / "v2" / "staging").iterdir() if not p.name.startswith("install-")]


def test_the_pch_is_kopts_own_and_read_only(store_env):
    from kopt.evaluator import sandbox
    from kopt.evaluator.pch import ensure_pch

    b = _builder(store_env)
    entry = ensure_pch(b)
    if entry is None:
        pytest.skip("no precompiled header on this machine")
    gch = entry / "torch" / "extension.h.gch"
    assert entry.parent.name == "pch" and not os.stat(gch).st_mode & 0o222 and not os.stat(entry).st_mode & 0o222
    doc, why = b.store.lookup(entry.name, "pch")
    assert doc is not None and why is None
    work = Path(tempfile.mkdtemp(prefix="kopt-pch-"))
    res = sandbox.run_sandboxed([sys.executable, "-I", "-c", f"open({str(gch)!r}, 'r+b').write(b'x')"],
                                timeout_s=60, work_dir=work,
                                mounts=sandbox.Mounts(readonly=(str(entry),), toolchain=True))
    assert res.returncode != 0
    assert b.store.lookup(entry.name, "pch")[1] is None


@pytest.mark.slow
def test_example_pools_build_and_link_only_allowed_symbols(kopt_build_dir, kopt_home, monkeypatch):
    """Every honest kernel of the example pools builds, with no library compute or rejected symbol (the
    session's shared build dir: these are the builds the example tests evaluate)."""
    monkeypatch.setenv("KOPT_BUILD_DIR", str(kopt_build_dir))
    monkeypatch.setenv("KOPT_HOME", str(kopt_home))
    b = Builder(target="cpu", settings=SETTINGS, base=_base)
    pools = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*/candidates_cpu/*.py"))
    assert len(pools) >= 10
    for path in pools:
        r = b.build(path.read_text())
        if "compile_error" in path.name:
            assert r.failure is not None and r.failure.status is Status.COMPILE_ERROR, path.name
            assert r.failure.reason.startswith("compile error: C++ source line"), r.failure.reason
            continue
        assert r.failure is None, (path.name, r.failure.reason)
        assert not r.library and b.verify(r) is None, path.name
