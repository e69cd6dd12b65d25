"""Run mode's load_inline: hand the candidate the extension kopt built, never build anything here.

`install(table, wrap)` replaces torch.utils.cpp_extension.load_inline and load in the run child. Each call is
named with capture.extension_key, the function kopt's parent used on the captured calls; a known key imports
the prebuilt .so from kopt's read-only store (the parent re-verified its sha256 before this process started)
and returns wrap(module). An unknown key (sources that differ from the ones captured, an extension first asked
for at run time) raises UnknownExtension, a RuntimeError the harness reports as a closed failure code.

Hermetic: standard library, torch and this package only.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import inspect
import sys
from collections.abc import Callable

from .capture import extension_key, record_call


class UnknownExtension(RuntimeError):
    """The candidate asked for an extension kopt did not build from its captured calls."""


def _load_so(name: str, path: str):
    if name in sys.modules:
        return sys.modules[name]
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules[name] = module
    return module


def install(table: list[dict], wrap: Callable) -> None:
    """Replace load_inline/load: table rows are {"key", "name", "so"} (Builder.child_table)."""
    import torch.utils.cpp_extension as cx

    by_key = {row["key"]: row for row in table}
    for kind in ("load_inline", "load"):
        sig = inspect.signature(getattr(cx, kind))

        def loader(*args, _kind=kind, _sig=sig, **kwargs):
            bound = _sig.bind(*args, **kwargs)
            row = by_key.get(extension_key(record_call(_kind, bound.arguments)))
            if row is None:
                raise UnknownExtension(f"{_kind}: this extension was not built by kopt (its sources or options "
                                       "differ from the ones captured at import)")
            return wrap(_load_so(row["name"], row["so"]))

        loader.__signature__ = sig
        setattr(cx, kind, loader)
