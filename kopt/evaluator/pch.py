"""The precompiled torch header: built by kopt's parent into its build store (never by a child), installed
like a build (read-only, MAC'd manifest), verified by hash once per process and by stat before every compile,
and read-only to every compile child. It cuts a C++ candidate's compile by the time torch/extension.h takes
to parse.

`b` below is the build.Builder (its target's flags, its store, its settings).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
from pathlib import Path

from kopt.evaluator.build_store import remove_tree


def _sha(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()


_PCH_LOCK = threading.Lock()
_PCH: dict[str, tuple] = {}  # store pch key -> the verified .gch's (ino, size, mtime, ctime)


def _torch_header() -> Path:
    import torch.utils.cpp_extension as cx

    return Path(cx.__file__).resolve().parent.parent / "include" / "torch" / "extension.h"


def _stat_sig(path: Path) -> tuple:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _pch_cmd(b, header: Path, out: Path) -> list[str]:
    """torch's own PCH command (cpp_extension._check_and_build_extension_h_precompiler_headers) with kopt's
    flags, writing to kopt's staging dir instead of torch's include dir."""
    import sysconfig

    import torch.utils.cpp_extension as cx

    include = _torch_header().parent.parent
    return [cx.get_cxx_compiler(), "-x", "c++-header", str(header), "-o", str(out), "-I", str(include),
            "-I", sysconfig.get_path("include"), "-I", str(include / "torch" / "csrc" / "api" / "include"),
            *b.target.CFLAGS, "-DTORCH_API_INCLUDE_EXTENSION_H", "-std=c++20", "-fPIC"]


def ensure_pch(b, wait_s: float = 90.0) -> Path | None:
    """The store's PCH entry, v2/pch/<key>/torch/extension.h(.gch): compiled here (trusted, kopt's flags,
    torch's headers only), installed like a build (read-only, MAC'd manifest), verified by hash once per process
    and by stat before every compile. None: no PCH (builds are only slower), also when another process holds
    its lock longer than `wait_s` (it is building it)."""
    if not getattr(b.target, "USE_PCH", False):
        return None
    header = _torch_header()
    key = _sha(json.dumps({"cmd": _pch_cmd(b, Path("H"), Path("O")), "header": header.read_text(),
                           "toolchain": b.target.toolchain()}, sort_keys=True))
    entry = b.store.root / "pch" / key
    gch = entry / "torch" / "extension.h.gch"
    with _PCH_LOCK:
        with contextlib.suppress(OSError):
            if _PCH.get(key) == _stat_sig(gch):
                return entry
        _PCH.pop(key, None)
        try:
            with open(b.store.root / "locks" / f"pch-{key}.lock", "a") as lock:
                deadline = time.monotonic() + wait_s
                while True:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            return None
                        time.sleep(0.5)
                sig = _stat_sig(gch) if gch.exists() else None
                doc, why = b.store.lookup(key, "pch")
                if why is not None:
                    b.store.discard(key, "pch")
                if doc is None:
                    _build_pch(b, header, key)
                    sig = _stat_sig(gch)
                elif sig != _stat_sig(gch):
                    return None  # changed while it was being hashed
                _PCH[key] = sig
                return entry
        except Exception:  # noqa: BLE001 - without a PCH builds are only slower
            return None


def _build_pch(b, header: Path, key: str) -> None:
    import subprocess

    staging = b.store.staging()
    try:
        (staging / "torch").mkdir()
        copy = staging / "torch" / "extension.h"
        copy.write_text(header.read_text())
        subprocess.run(_pch_cmd(b, copy, staging / "torch" / "extension.h.gch"), check=True,
                       capture_output=True, timeout=float(b.settings.compile_timeout_s) * 3)
        b.store.install(key, "pch", staging, ["torch/extension.h", "torch/extension.h.gch"], False, "pch")
    finally:
        remove_tree(staging)


def pch_include_paths(b, staging: Path) -> list[str]:
    """The store's PCH dir first on the include path (gcc uses a .gch found next to the header it resolves, and
    -I dirs come before torch's -isystem ones); without one, a dir whose torch/extension.h has no .gch beside
    it, so torch's own (unverified) one is never used."""
    entry = ensure_pch(b)
    if entry is not None:
        return [str(entry)]
    shadow = staging / "no-pch"
    (shadow / "torch").mkdir(parents=True, exist_ok=True)
    (shadow / "torch" / "extension.h").write_text(_torch_header().read_text())
    return [str(shadow)]
