"""The untrusted child: `python -m kopt.evaluator.worker compile|check|time SPEC.json`.

It runs inside sandbox.run_sandboxed and imports ONE candidate. Everything it relies on (the clock, torch.save,
os.urandom, clone) is bound before the candidate is imported (hack #8), and `load_inline` is wrapped first so
kopt owns the extension's name, build dir and flags (hacking-and-sandbox.md TL;DR 4). It never sees reference
outputs: it ships raw outputs, inputs-after-call and timings to kopt, which judges them (judge.py).

Payload: OUT/result.json (small, JSON) and OUT/payload.pt (tensors, read back with weights_only=True).
"""

from __future__ import annotations

import time

_perf_counter_ns = time.perf_counter_ns  # bound before anything else can patch it

import contextlib
import fcntl
import hashlib
import importlib.util
import inspect
import json
import os
import sys
import traceback
from pathlib import Path

_urandom = os.urandom
_json_dump = json.dump


def _write_result(out_dir: Path, result: dict) -> None:
    tmp = out_dir / "result.json.tmp"
    with open(tmp, "w") as f:
        _json_dump(result, f)
    os.replace(tmp, out_dir / "result.json")


def _sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _as_list(x) -> list[str]:
    if x is None:
        return []
    return [x] if isinstance(x, str) else [str(s) for s in x]


BUILT_MARK = "kopt-built"  # written into an extension's build dir, under its lock, once the build succeeded


def extension_name(cpp: list[str], cuda: list[str], functions, target_mod, toolchain: dict) -> str:
    """kopt_<sha256(sources, functions, flags, torch/compiler versions, arch)[:16]> (the brief).

    It is also the build dir's name under the shared build root (config.build_dir()): candidates whose
    extensions are byte-identical (the Python around them may differ) compile once."""
    from kopt.evaluator.targets import cpu

    blob = json.dumps({
        "cpp": cpp, "cuda": cuda, "functions": functions if not isinstance(functions, str) else [functions],
        "cflags": target_mod.CFLAGS, "ldflags": target_mod.LDFLAGS, "cuda_cflags": target_mod.CUDA_CFLAGS,
        "toolchain": toolchain, "env": target_mod.build_env(), "host_isa": cpu.host_isa(),  # -march=native
    }, sort_keys=True, default=str)
    return "kopt_" + hashlib.sha256(blob.encode()).hexdigest()[:16]


class _State:
    calls = 0
    ghost = False
    extensions: list[dict] = []
    warnings: list[str] = []


def _ghost_value(v):
    import torch

    if isinstance(v, torch.Tensor):
        if v.is_floating_point() or v.is_complex():
            return torch.full_like(v, float("nan"))
        if v.dtype == torch.bool:
            return ~v
        return torch.full_like(v, -1234567)
    if isinstance(v, (tuple, list)):
        return type(v)(_ghost_value(x) for x in v)
    return v


class _CountingModule:
    """What the candidate gets from load_inline: counts calls into the extension; in ghost mode its tensor
    results are replaced by NaN so a ModelNew whose output is still right never used them (decoy, hack #4)."""

    def __init__(self, module):
        object.__setattr__(self, "_kopt_module", module)

    def __getattr__(self, attr):
        value = getattr(object.__getattribute__(self, "_kopt_module"), attr)
        if not callable(value):
            return value

        def call(*args, **kwargs):
            _State.calls += 1
            out = value(*args, **kwargs)
            return _ghost_value(out) if _State.ghost else out

        return call


def _shadow_header(cx, out_dir: Path) -> str:
    """An include dir whose torch/extension.h has no .gch beside it: a plain (no-PCH) build even when the
    PCH exists (gcc uses a .gch found next to the header it resolves; -I dirs come before -isystem). It lives in
    the extension's own build dir, so its path (part of build.ninja) is the same for every build of it."""
    src = Path(cx.__file__).resolve().parent.parent / "include" / "torch" / "extension.h"
    shadow = out_dir / "no-pch"
    (shadow / "torch").mkdir(parents=True, exist_ok=True)
    (shadow / "torch" / "extension.h").write_text(src.read_text())
    return str(shadow)


def _build_objects_only(real, build_dir: Path, name, cpp, cuda, functions, target, use_pch, a):
    """No usable CUDA torch here (a CPU wheel has no libtorch_cuda to link against): compile every source
    with nvcc/g++ and accept a failure at the link step only, with a warning."""
    import types

    try:
        return real(name=name, cpp_sources=cpp, cuda_sources=cuda or None, functions=functions,
                    extra_cflags=list(target.CFLAGS), extra_cuda_cflags=list(target.CUDA_CFLAGS) or None,
                    extra_ldflags=list(target.LDFLAGS), build_directory=str(build_dir), verbose=False,
                    with_cuda=bool(cuda), is_python_module=True,
                    with_pytorch_error_handling=a.get("with_pytorch_error_handling", True), use_pch=use_pch)
    except RuntimeError as e:
        objects_ok = (build_dir / "main.o").exists() and (not cuda or (build_dir / "cuda.cuda.o").exists())
        if not (objects_ok and "ld returned" in str(e)):
            raise
        _State.warnings.append("compile only: sources compiled, not linked (this torch has no CUDA libraries)")
        return types.ModuleType(name)


def _cuda_usable() -> bool:
    import torch

    return bool(torch.version.cuda) and torch.cuda.is_available()


def _install_load_inline(spec: dict) -> None:
    import torch.utils.cpp_extension as cx

    from kopt.evaluator.targets import get_target

    target = get_target(spec["target"])
    real = cx.load_inline
    sig = inspect.signature(real)
    tool = target.toolchain()
    build_root = Path(spec["build_root"])
    prebuilt = {e["name"]: e for e in spec.get("extensions", [])}
    # The PCH is built by kopt's trusted warm-up; a build must neither rebuild nor delete it (the torch
    # include dir is read-only in the sandbox; use_pch=False would otherwise delete it for everyone).
    if spec["target"] == "cuda" and cx.CUDA_HOME is None and os.environ.get("CUDA_HOME"):
        cx.CUDA_HOME = os.environ["CUDA_HOME"]  # a CPU-only torch leaves it None: compile-only machines
    compile_only = spec["mode"] == "compile" and spec["target"] == "cuda" and not _cuda_usable()
    if compile_only:
        # Compile-only machine (no GPU): build the .so but do not load it (it needs libcudart and a device).
        import types

        cx._import_module_from_library = lambda name, path, is_python_module: types.ModuleType(name)
    cx.remove_extension_h_precompiler_headers = lambda: None
    cx._check_and_build_extension_h_precompiler_headers = lambda *a, **k: None

    def load_inline(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        a = bound.arguments
        cpp, cuda = _as_list(a.get("cpp_sources")), _as_list(a.get("cuda_sources"))
        functions = a.get("functions")
        for opt in ("extra_cflags", "extra_cuda_cflags", "extra_ldflags", "extra_include_paths",
                    "build_directory", "extra_sycl_cflags", "sycl_sources"):
            if a.get(opt):
                _State.warnings.append(f"load_inline {opt}={a[opt]!r} dropped: kopt owns build flags")
        if cuda and spec["target"] == "cpu":
            raise RuntimeError("load_inline got cuda_sources but the target is cpu: write C++ (OpenMP) for --target cpu")
        name = extension_name(cpp, cuda, functions, target, tool)
        build_dir = build_root / name
        if spec["mode"] == "compile":
            build_dir.mkdir(parents=True, exist_ok=True)
            with open(build_root / f"{name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # two kopt processes never build the same dir at once
                with open(Path(spec["out_dir"]) / "building", "a") as f:  # kopt cleans these up on a timeout
                    f.write(name + "\n")
                for stale in ("lock", BUILT_MARK):  # torch's FileBaton left by a killed build would hang us
                    with contextlib.suppress(FileNotFoundError):
                        (build_dir / stale).unlink()
                use_pch = bool(target.USE_PCH and spec.get("use_pch", True))
                module = real(
                    name=name, cpp_sources=cpp, cuda_sources=cuda or None, functions=functions,
                    extra_cflags=list(target.CFLAGS), extra_cuda_cflags=list(target.CUDA_CFLAGS) or None,
                    extra_ldflags=list(target.LDFLAGS), build_directory=str(build_dir), verbose=False,
                    extra_include_paths=None if use_pch else [_shadow_header(cx, build_dir)],
                    with_cuda=bool(cuda), is_python_module=True,
                    with_pytorch_error_handling=a.get("with_pytorch_error_handling", True),
                    use_pch=use_pch,
                ) if not compile_only else _build_objects_only(real, build_dir, name, cpp, cuda, functions, target,
                                                               use_pch, a)
                so = build_dir / ("cuda.cuda.o" if compile_only else f"{name}.so")
                _State.extensions.append({"name": name, "so": str(so), "sha256": _sha256_file(so)})
                (build_dir / BUILT_MARK).touch()
        else:
            entry = prebuilt.get(name)
            so = build_dir / f"{name}.so"
            if entry is None or not so.exists():
                raise RuntimeError(f"extension {name} was not built at the compile stage (sources built at run time?)")
            digest = _sha256_file(so)
            _State.extensions.append({"name": name, "so": str(so), "sha256": digest})
            if digest != entry["sha256"]:
                raise RuntimeError(f"extension {name}: the .so changed since it was compiled")
            module = cx._import_module_from_library(name, str(build_dir), True)
        return _CountingModule(module)

    load_inline.__signature__ = sig
    cx.load_inline = load_inline


def _import_candidate(path: str):
    spec = importlib.util.spec_from_file_location("kopt_candidate", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["kopt_candidate"] = module
    spec.loader.exec_module(module)
    return module


def _first_error_lines(text: str, limit: int = 600) -> str:
    """The compiler's FIRST error line(s): what a person needs to fix the kernel."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith(("collect2:", "ninja:", "FAILED:"))]
    for line in lines:  # the linker's own message names the missing symbol or library
        if "cannot find -l" in line or "undefined reference" in line or "undefined symbol" in line:
            return line.strip()[:limit]
    for i, line in enumerate(lines):
        if " error:" in line or line.startswith("error:") or ": error " in line or "error: " in line:
            picked = [line.strip()] + [ln.strip() for ln in lines[i + 1 : i + 3] if ln.strip() and "error" not in ln.lower()]
            return " | ".join(picked)[:limit]
    for line in lines:
        if "undefined symbol" in line or "undefined reference" in line:
            return line.strip()[:limit]
    return (lines[-1] if lines else text)[:limit]


def _new_model(cls, trial: dict, torch, device: str = "cpu"):
    init = trial["init"]
    torch.manual_seed(trial["seed"])  # KernelBench's rule: seed, then construct
    model = cls(**init) if isinstance(init, dict) else cls(*init)
    ref_sd = trial.get("state_dict") or {}
    own = model.state_dict()
    if ref_sd and set(own) == set(ref_sd) and all(own[k].shape == ref_sd[k].shape for k in own):
        model.load_state_dict(ref_sd)
    return model.to(device)


def _outputs(out, torch) -> tuple[list, dict]:
    """Clone the forward's outputs now (a thread finishing later leaves the clone wrong, hack #6)."""
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    meta = {"tuple": isinstance(out, (tuple, list)), "bad_type": None, "ptrs": []}
    cloned = []
    for i, o in enumerate(outs):
        if type(o) is not torch.Tensor:  # exactly torch.Tensor: a lazy subclass fails (hack #7)
            meta["bad_type"] = f"output {i} is {type(o).__module__}.{type(o).__name__}, not torch.Tensor"
            cloned.append(None)
            continue
        if o.numel() > 0 and o.untyped_storage().nbytes() == 0:
            meta["bad_type"] = f"output {i} has no storage"
        meta["ptrs"].append(o.untyped_storage().data_ptr() if o.numel() else 0)
        cloned.append(o.detach().clone())
    return cloned, meta


def _cpu(xs):
    return None if xs is None else [x.cpu() if hasattr(x, "cpu") else x for x in xs]


def _poison(torch, nbytes: int, device: str = "cpu") -> None:
    """Fill and free a large NaN block so a kernel returning uninitialised memory sees NaN (hack #1)."""
    buf = torch.empty(max(nbytes, 1 << 20) // 4, dtype=torch.float32, device=device)
    buf.fill_(float("nan"))
    del buf


def _check(spec: dict, module, torch) -> tuple[dict, dict]:
    """Every trial once, then every trial again (interleaved passes), so the second call on a trial's input
    comes after other trials' calls: a kernel that goes stale after N calls meets different inputs at call
    N+1 (hack #11), and a pointer-keyed cache sees the same buffers with other content (hack #9)."""
    data = torch.load(spec["inputs"], weights_only=True)
    device = spec.get("device", "cpu")
    cls = module.ModelNew
    bufs: dict[tuple, object] = {}
    trials = data["trials"]
    models, argsets, states = [], [], []
    for trial in trials:
        models.append(_new_model(cls, trial, torch, device))
        args, originals = [], []
        for i, x in enumerate(trial["inputs"]):
            if isinstance(x, torch.Tensor):
                key = (i, tuple(x.shape), str(x.dtype))
                if key not in bufs:  # the SAME tensors across trials: a pointer-keyed cache goes stale (hack #9)
                    bufs[key] = torch.empty_like(x, device=device)
                args.append(bufs[key])
                originals.append(x)  # stays on the host; copied into the shared buffers before each call
            else:
                args.append(x)
                originals.append(None)
        argsets.append((args, originals))
        states.append({"runs": [], "meta": [], "calls": [], "inputs_after": None, "ghost": None})

    def load(args, originals) -> None:
        for a, o in zip(args, originals):
            if o is not None:
                a.copy_(o)

    for r in range(2):  # two passes: determinism is reported, both runs must pass
        for t, (model, (args, originals), st) in enumerate(zip(models, argsets, states)):
            in_ptrs = [a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)]
            nbytes = 2 * sum(a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor))
            load(args, originals)
            _poison(torch, nbytes, device)
            _State.calls = 0
            with torch.no_grad():
                out = model(*args)
            cloned, meta = _outputs(out, torch)
            meta["aliases_input"] = any(p and p in in_ptrs for p in meta.pop("ptrs"))
            del out
            st["calls"].append(_State.calls)
            st["runs"].append(_cpu(cloned))
            st["meta"].append(meta)
            if r == 0:
                st["inputs_after"] = _cpu([a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args])
            if r == 0 and t == 0:
                load(args, originals)
                _State.ghost = True
                try:
                    with torch.no_grad():
                        ghost, _ = _outputs(model(*args), torch)
                finally:
                    _State.ghost = False
                st["ghost"] = _cpu(ghost)
    payload = {"trials": [{"runs": st["runs"], "inputs_after": st["inputs_after"], "ghost": st["ghost"]}
                          for st in states]}
    result = {"trials": [{"meta": st["meta"], "calls": st["calls"]} for st in states]}
    return result, payload


def _time(spec: dict, module, torch, target) -> tuple[dict, dict]:
    from kopt.evaluator.targets import timing_loop

    data = torch.load(spec["inputs"], weights_only=True)
    trials = [data["trials"][i] for i in spec["time_trials"]]
    model = _new_model(module.ModelNew, trials[0], torch, spec.get("device", "cpu"))
    timer = target.Timer(clock=_perf_counter_ns)
    report = timing_loop(model, trials, timer, torch, spec["min_calls"], spec["min_time_s"], spec["nonce"],
                         keep=spec.get("keep", 8), rand=_urandom, clock=_perf_counter_ns,
                         device=spec.get("device", "cpu"))
    tampered = []
    if time.perf_counter_ns is not _perf_counter_ns:
        tampered.append("time.perf_counter_ns was replaced")
    payload = {"kept": report.pop("kept")}
    report["tampered"] = tampered
    return report, payload


def main(argv: list[str]) -> int:
    mode, spec_path = argv[0], argv[1]
    spec = json.loads(Path(spec_path).read_text())
    spec["mode"] = mode
    out_dir = Path(spec["out_dir"])
    threads = spec.get("threads")
    import torch

    _save = torch.save
    if threads:
        torch.set_num_threads(int(threads))
    from kopt.evaluator.targets import get_target

    target = get_target(spec["target"])
    result: dict = {"ok": False, "mode": mode}
    t0 = _perf_counter_ns()
    try:
        _install_load_inline(spec)
    except Exception as e:  # noqa: BLE001
        result.update(error="runtime_error", reason=f"kopt worker setup failed: {e}")
        _write_result(out_dir, result)
        return 0
    try:
        module = _import_candidate(spec["candidate"])
    except SyntaxError as e:
        result.update(error="compile_error", reason=f"Python syntax error at line {e.lineno}: {e.msg}")
    except Exception as e:  # noqa: BLE001
        text = f"{type(e).__name__}: {e}"
        if "Error building extension" in text or "error:" in text:
            result.update(error="compile_error", reason=_first_error_lines(text))
        else:
            tb = traceback.extract_tb(e.__traceback__)
            where = next((f"line {f.lineno}" for f in reversed(tb) if f.filename == spec["candidate"]), "")
            result.update(error="runtime_error",
                          reason=f"importing the candidate failed{(' at ' + where) if where else ''}: {text}"[:600])
    else:
        cls = getattr(module, "ModelNew", None)
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            result.update(error="compile_error", reason="the candidate defines no class ModelNew(nn.Module)")
        elif mode == "compile":
            if not _State.extensions:
                result.update(error="rejected", reason="the candidate never called load_inline: no kernel of its own")
            else:
                result.update(ok=True)
        else:
            try:
                body, payload = (_check(spec, module, torch) if mode == "check" else _time(spec, module, torch, target))
                _save(payload, out_dir / "payload.pt")
                result.update(ok=True, **body)
            except Exception as e:  # noqa: BLE001 - the candidate's forward raised
                tb = traceback.extract_tb(e.__traceback__)
                where = next((f"line {f.lineno}" for f in reversed(tb) if f.filename == spec["candidate"]), "")
                result.update(error="runtime_error",
                              reason=f"forward raised{(' at ' + where) if where else ''}: {type(e).__name__}: {e}"[:600])
    result["extensions"] = _State.extensions
    result["warnings"] = _State.warnings
    result["seconds"] = (_perf_counter_ns() - t0) / 1e9
    _write_result(out_dir, result)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
