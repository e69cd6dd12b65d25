"""`kopt_child compile SPEC.json`: build one extension from sources kopt wrote, into kopt's staging dir.

Trusted: this process runs no candidate code. kopt's parent writes SPEC.json (sources, function names, the
flags it kept, its own include dirs) into a fresh staging dir; this runs torch's cpp_extension machinery there
and prints one JSON document: {"ok", "compile_only", "log"}. The built module is never imported here (importing
it would run the candidate's static initialisers), torch's precompiled header is never rebuilt or removed (kopt
builds it, read-only to every child), and the parent installs the result into its store itself.

CUDA without a CUDA torch (a compile-only machine): every source is compiled and only the link step may fail
(a CPU wheel has no CUDA libraries to link); the objects are the result.

Hermetic: standard library and torch only.
"""

from __future__ import annotations

import json
import os
import sys
import types

LOG_BYTES = 64 << 10


def _prepare(cx, spec: dict) -> None:
    # A built module is never loaded here, and torch's PCH is kopt's: never rebuilt, never removed.
    cx._import_module_from_library = lambda name, path, is_python_module: types.ModuleType(name)
    cx._check_and_build_extension_h_precompiler_headers = lambda *a, **k: None
    cx.remove_extension_h_precompiler_headers = lambda: None
    if spec["cuda"] and cx.CUDA_HOME is None and os.environ.get("CUDA_HOME"):
        cx.CUDA_HOME = os.environ["CUDA_HOME"]  # a CPU-only torch leaves it None


def build(spec: dict) -> dict:
    import torch.utils.cpp_extension as cx

    _prepare(cx, spec)
    build_dir = spec["build_dir"]
    name = spec["name"]
    try:
        cx.load_inline(
            name=name, cpp_sources=list(spec["cpp"]), cuda_sources=list(spec["cuda"]) or None,
            functions=spec["functions"], extra_cflags=list(spec["cflags"]),
            extra_cuda_cflags=list(spec["cuda_cflags"]) or None, extra_ldflags=list(spec["ldflags"]),
            extra_include_paths=list(spec["include_paths"]) or None, build_directory=build_dir, verbose=False,
            with_cuda=bool(spec["with_cuda"]), is_python_module=True,
            with_pytorch_error_handling=bool(spec["with_pytorch_error_handling"]),
            no_implicit_headers=bool(spec["no_implicit_headers"]), use_pch=False)
    except Exception as e:  # noqa: BLE001 - a compile error is this process's normal answer
        text = str(e)
        objects = os.path.exists(os.path.join(build_dir, "main.o")) and (
            not spec["cuda"] or os.path.exists(os.path.join(build_dir, "cuda.cuda.o")))
        if spec["compile_only"] and objects and "ld returned" in text:
            return {"ok": True, "compile_only": True, "log": text[-LOG_BYTES:]}
        return {"ok": False, "compile_only": False, "log": text[-LOG_BYTES:]}
    return {"ok": True, "compile_only": False, "log": ""}


def main(argv: list[str]) -> int:
    out = os.dup(1)  # the document goes here; anything torch or the compiler prints goes to stderr
    os.dup2(2, 1)
    with open(argv[0]) as f:
        spec = json.load(f)
    data = json.dumps(build(spec), ensure_ascii=True).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(out, view):]
    os.close(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
