"""`kopt.swap(model, "kernels/<task>")`: put a winning kernel back into a user's model.

What is replaced: every submodule whose class is the recorded reference class (kernels/<task>/report.json:
its name AND the file it is defined in), never another class that happens to share the name (KernelBench
calls every task `Model`; so do many networks). Each one becomes the kernel's `ModelNew`, built with the
task's constructor arguments, sharing the replaced module's parameters and buffers (a trained model keeps
its weights, and an optimizer built before the swap still updates what the kernel reads).

Gradients: the kernel is forward-only C++/CUDA. When autograd needs gradients through it, the forward runs
the kernel and the backward recomputes the *reference* module's forward on the saved inputs and
differentiates that, so gradients are exactly the reference's (at the cost of one extra reference forward
per backward, like activation checkpointing; a reference that draws random numbers, e.g. dropout, would see
different draws). `gradients="refuse"` raises instead, with one line, whenever gradients are needed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
import time
from pathlib import Path
from typing import Any, Callable

from kopt.errors import KoptError

GRADIENT_MODES = ("reference", "refuse")


def _say(message: str) -> None:
    sys.stderr.write(f"kopt.swap: {message}\n")


def _load_model_new(kernel_dir: Path, say: Callable[[str], None]) -> type:
    path = kernel_dir / "model_new.py"
    name = f"kopt_model_new_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name].ModelNew
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    say(f"loading {path}: its kernel compiles on first use (about a minute for C++, then cached by torch)")
    t0 = time.perf_counter()
    try:
        with _keep_precompiled_header():
            spec.loader.exec_module(module)  # compiles (or loads torch's cached build of) the kernel
    except BaseException:
        del sys.modules[name]
        raise
    took = time.perf_counter() - t0
    if took > 1.0:
        say(f"kernel ready in {took:.0f} s")
    return module.ModelNew


@contextlib.contextmanager
def _keep_precompiled_header():
    """torch's load_inline(use_pch=False) deletes torch/extension.h.gch, the precompiled header kopt's
    evaluator builds once (~50 s) to halve every later compile; loading a kernel must not throw it away."""
    import torch.utils.cpp_extension as cx

    remove = getattr(cx, "remove_extension_h_precompiler_headers", None)
    if remove is None:
        yield
        return
    cx.remove_extension_h_precompiler_headers = lambda: None
    try:
        yield
    finally:
        cx.remove_extension_h_precompiler_headers = remove


def _init_args(record, kernel_dir: Path) -> Any:
    loaded = record.load_reference(kernel_dir)
    namespace: dict[str, Any] = {}
    sys.path.insert(0, loaded.search_path)
    try:
        exec(compile(loaded.source, loaded.path, "exec"), namespace)  # the user's own reference module
    finally:
        sys.path.remove(loaded.search_path)
    return namespace["get_init_inputs"]()


def _defined_in(cls: type) -> Path | None:
    """The file a class is defined in: from its module, else from its own methods' code (a module loaded
    with importlib by path and never put in sys.modules has no module object to ask)."""
    try:
        src = inspect.getsourcefile(cls) or inspect.getfile(cls)
    except (TypeError, OSError):
        src = next((f.__code__.co_filename for f in vars(cls).values() if hasattr(f, "__code__")), None)
    return Path(src).resolve() if src and not src.startswith("<") else None


def _reference_files(record, kernel_dir: Path) -> set[Path]:
    """The reference file as seen from the kernel dir (any clone) and where kopt ran."""
    files = {record.reference_path(kernel_dir).resolve()}
    if record.task.path:
        files.add(Path(record.task.path).resolve())
    return files


def _describe(cls: type) -> str:
    where = _defined_in(cls)
    return f"{cls.__qualname__} from {where}" if where else f"{cls.__module__}.{cls.__qualname__}"


# ---- gradients ---------------------------------------------------------------------------------------

def _grad_needed(torch, args: tuple, params: list) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(isinstance(a, torch.Tensor) and a.requires_grad for a in args) or any(p.requires_grad for p in params)


def _make_function(torch):
    class KernelWithReferenceGrad(torch.autograd.Function):
        """Forward: the kernel. Backward: the reference module's own gradient, recomputed on the saved inputs."""

        @staticmethod
        def forward(ctx, kernel, reference, spec, *flat):
            n_args = spec[0]
            args, params = flat[:n_args], flat[n_args:]
            ctx.reference, ctx.n_args, ctx.n_params = reference, n_args, len(params)
            is_t = [isinstance(a, torch.Tensor) for a in args]
            ctx.is_t = is_t
            ctx.others = [None if t else a for a, t in zip(args, is_t)]
            ctx.save_for_backward(*[a for a, t in zip(args, is_t) if t])
            ctx.params = params
            with torch.no_grad():
                out = kernel(*args)
            return out

        @staticmethod
        def backward(ctx, *grads):
            saved = iter(ctx.saved_tensors)
            args = []
            for t, other in zip(ctx.is_t, ctx.others):
                if t:
                    x = next(saved)
                    args.append(x.detach().requires_grad_(x.requires_grad))
                else:
                    args.append(other)
            with torch.enable_grad():
                out = ctx.reference(*args)
            outs = out if isinstance(out, (tuple, list)) else (out,)
            wanted = [a for a, t in zip(args, ctx.is_t) if t and a.requires_grad]
            wanted += [p for p in ctx.params if p.requires_grad]
            pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
            got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                           allow_unused=True) if pairs and wanted else [None] * len(wanted))
            arg_grads = [next(got) if t and a.requires_grad else None for a, t in zip(args, ctx.is_t)]
            param_grads = [next(got) if p.requires_grad else None for p in ctx.params]
            return (None, None, None, *arg_grads, *param_grads)

    return KernelWithReferenceGrad


def _share_state(dst, src) -> None:
    """Make `dst` hold the very tensors `src` holds (parameters and buffers, by name), so the kernel and the
    reference kept for its backward read and train one set of weights."""
    params = dict(src.named_parameters())
    buffers = dict(src.named_buffers())
    for name, mod in dst.named_modules():
        prefix = f"{name}." if name else ""
        for key in list(mod._parameters):
            if f"{prefix}{key}" in params:
                mod._parameters[key] = params[f"{prefix}{key}"]
        for key in list(mod._buffers):
            if f"{prefix}{key}" in buffers:
                mod._buffers[key] = buffers[f"{prefix}{key}"]


def _with_gradients(new, old, mode: str, label: str):
    """Give the kernel module a forward that is differentiable (mode "reference") or refuses (mode "refuse")."""
    import torch

    kernel_forward = new.forward
    function = _make_function(torch)
    new.__dict__["_kopt_reference"] = old  # a plain attribute: not a submodule, not in state_dict()

    def forward(*args, **kwargs):
        params = [p for p in new.parameters()]
        if kwargs or not _grad_needed(torch, args, params):
            if kwargs and _grad_needed(torch, tuple(kwargs.values()) + args, params):
                raise RuntimeError(f"kopt.swap: {label} was called with keyword arguments while gradients are "
                                   "needed; pass them positionally")
            return kernel_forward(*args, **kwargs)
        if mode == "refuse":
            raise RuntimeError(f"kopt.swap: {label} has no backward (swapped with gradients='refuse'); run it "
                               "under torch.no_grad(), or swap with gradients='reference'")
        _share_state(old, new)  # .to()/.cuda() replace buffers: re-share before every differentiable call
        old.train(new.training)
        return function.apply(kernel_forward, old, (len(args),), *args, *params)

    new.forward = forward
    return new


# ---- swap ----------------------------------------------------------------------------------------------

def swap(model, kernel_dir: str | Path, cls: type | None = None, *, gradients: str = "reference",
         quiet: bool = False):
    """Replace every instance of the recorded reference class inside `model` with the kernel's ModelNew.

    A submodule matches when its class has the recorded name and is defined in the recorded reference file
    (`cls` names the class object instead). Returns the model, replaced in place (a model that *is* the
    reference comes back as the new module). Prints what it replaced on stderr unless `quiet`.
    """
    import torch

    from kopt import kernels

    if gradients not in GRADIENT_MODES:
        raise KoptError(f"gradients={gradients!r}", "use gradients='reference' (exact, via the reference's "
                        "backward) or gradients='refuse'")
    say = (lambda s: None) if quiet else _say
    kernel_dir = Path(kernel_dir)
    record = kernels.read(kernel_dir)
    class_name = record.task.class_name
    files = _reference_files(record, kernel_dir)
    shown = f"{record.reference_path(kernel_dir)}:{class_name}"

    def matches(module: torch.nn.Module) -> bool:
        if cls is not None:
            return type(module) is cls
        t = type(module)
        return t.__name__ == class_name and _defined_in(t) in files

    found = [("", model)] if matches(model) else [
        (f"{pname}.{name}" if pname else name, child)
        for pname, parent in model.named_modules() for name, child in parent.named_children() if matches(child)]
    if not found:
        same_name = sorted({_describe(type(m)) for m in model.modules() if type(m).__name__ == class_name})
        hint = (f"found {', '.join(same_name)}, a different class with the same name; pass cls= to swap it anyway"
                if same_name else f"kopt.swap replaces submodules of class {class_name} defined in {shown}")
        raise KoptError(f"no {shown} module inside the model", hint)

    model_new = _load_model_new(kernel_dir, say)
    init = _init_args(record, kernel_dir)

    def replacement(old: torch.nn.Module, where: str) -> torch.nn.Module:
        new = model_new(**init) if isinstance(init, dict) else model_new(*init)
        state = old.state_dict()
        if state:
            try:
                new.load_state_dict(state)
            except RuntimeError as e:
                raise KoptError(
                    f"cannot carry {where or class_name}'s weights into the kernel's ModelNew: "
                    f"{str(e).splitlines()[0]}",
                    "this instance was built with other constructor arguments than the task's; rerun "
                    "`kopt optimize` with matching --init-args",
                ) from None
        ref = next(iter(old.parameters()), None)
        if ref is not None:
            new = new.to(device=ref.device, dtype=ref.dtype)
        new.train(old.training)
        _share_state(new, old)  # the replaced module's own Parameters: an existing optimizer keeps working
        return _with_gradients(new, old, gradients, where or class_name)

    for where, child in found:
        if where == "":
            out = replacement(model, "")
            say(f"replaced the model itself ({_describe(type(model))}) with {kernel_dir}'s ModelNew")
            return out
        parent_name, _, attr = where.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, replacement(child, where))
    names = ", ".join(w for w, _ in found)
    say(f"replaced {len(found)} {class_name} module{'s' if len(found) != 1 else ''} ({names}) with "
        f"{kernel_dir}'s ModelNew; backward: " + ("the reference's (exact)" if gradients == "reference" else "refused"))
    return model
