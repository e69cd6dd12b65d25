"""The static gate: reject cheating candidates before anything runs (docs/evaluator.md §5 step 1).

Nothing here executes candidate code. Two passes:
- an AST pass over the Python (imports, names, attribute writes through any alias, classes, the `load_inline`
  call, whose literal build flags go through kopt/evaluator/flags.py, the policy the build applies too);
- a token/regex pass over every string constant that holds C++/CUDA (kopt/evaluator/static_cpp.py), and over the
  whole source for `#include` lines.

The gate is defence in depth, a tripwire and not a wall: an attacker can always build a banned name at run time
(token pasting, string concatenation). The runtime defences (the sandbox, the symbol check of the built .so, the
library-compute evidence, the judge outside the candidate's process) are what hold; this gate catches the common
hacks cheaply, with a reason a person can act on, and is never skipped. Precision counts as much: every rule
names the hack it stops, and benchmarks/bench_gate.py measures what it costs honest real-world kernels.
The rules are data (kopt/evaluator/static_rules.py). Sources: KernelBench's regex checker (PR #110) and
docs/evaluator.md §1 rows 4-9, 12-13, 16-17 and §5.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from kopt.evaluator.static_cpp import check_includes, looks_like_cpp, scan_cpp, strip_comments
from kopt.evaluator.static_rules import (  # noqa: F401 - the rule tables, re-exported
    BACKEND_PRECISE_VALUES,
    BACKEND_PRECISION,
    BACKEND_WARN,
    BANNED_ATTRS,
    BANNED_BUILTINS,
    BANNED_MODULES,
    BANNED_NAMES,
    BANNED_PREFIXES,
    BENIGN_KWARGS,
    FLAG_KWARGS,
    MODULE_ARG_OK,
    MODULE_LEAVES,
    NN_NON_COMPUTE,
    PRECISION_ATTRS,
    PRECISION_NAMES,
    STREAM_NAMES,
    TENSOR_BASES,
    TENSOR_COMPUTE_METHODS,
    TORCH_LIBRARY_ROOTS,
    TORCH_NON_COMPUTE,
)
from kopt.evaluator.static_scope import ModuleScope, attr_used, is_import_guard, string_constants

TARGETS = ("cpu", "cuda")


@dataclass(frozen=True)
class StaticReport:
    rejections: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.rejections


# ---- rules: Python in kopt/evaluator/static_rules.py, C++/CUDA in kopt/evaluator/static_cpp.py ----------

class _Checker(ModuleScope, ast.NodeVisitor):
    def __init__(self, target: str, fp32_task: bool = True):
        self.target = target
        self.fp32_task = fp32_task
        self.modules: set[str] = set()  # names bound by `import x [as y]`: module objects
        self.mod_names: dict[str, str] = {}  # local names that may hold a module (`m = [torch][0]`)
        self.mod_attrs: dict[str, str] = {}  # self.<attr> that may hold a module (`self.t = torch`)
        self.handled: set[int] = set()  # attribute stores judged by a more specific rule
        self.rejections: list[str] = []
        self.warnings: list[str] = []
        self.aliases: dict[str, str] = {}  # local name -> fully qualified name
        self.load_inline_calls: list[ast.Call] = []
        self.ext_names: set[str] = set()  # names bound to load_inline(...) results
        self.name_uses: dict[str, int] = {}
        self.func_stack: list[str] = []
        self.has_model_new = False

    def in_runtime_code(self) -> bool:
        # forward-time code: any function other than a constructor (module level runs once at import)
        return bool(self.func_stack) and self.func_stack[-1] != "__init__"

    def check_qualname(self, node: ast.AST, qn: str) -> None:
        root = qn.split(".")[0]
        # Only the innermost node of a chain names the module (`subprocess` in `subprocess.run`): one reason.
        if root in BANNED_MODULES and not isinstance(node, ast.Attribute):
            self.reject(node, f"uses {qn}: {BANNED_MODULES[root]}")
        if qn in BANNED_NAMES:
            self.reject(node, f"uses {qn}: {BANNED_NAMES[qn]}")
        for prefix, reason in BANNED_PREFIXES.items():
            if qn.startswith(prefix):
                self.reject(node, f"uses {qn}: {reason}")
        for name, reason in PRECISION_NAMES.items():
            if qn == name:
                self.warn(node, f"{qn}: {reason}")
        if qn in STREAM_NAMES:
            self.warn(node, f"uses {qn}: creates a stream (work can escape the timing events; hack §1 row 5)")

    # -- imports --
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            root = a.name.split(".")[0]
            if root in BANNED_MODULES:
                self.reject(node, f"imports {a.name}: {BANNED_MODULES[root]}")
            self.check_qualname(node, a.name)
            if a.asname:
                self.aliases[a.asname] = a.name
                self.modules.add(a.asname)
            else:
                self.aliases[root] = root
                self.modules.add(root)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = "." * node.level + (node.module or "")
        root = (node.module or "").split(".")[0]
        if node.level or root in ("task", "reference"):
            self.reject(node, f"imports from {mod or '.'}: candidates import only torch and the standard "
                              "library, never the task or the harness")
        if root in BANNED_MODULES:
            self.reject(node, f"imports {mod}: {BANNED_MODULES[root]}")
        for a in node.names:
            if a.name == "*":
                self.reject(node, f"`from {mod} import *` hides which names it brings in")
                continue
            qn = f"{mod}.{a.name}"
            if a.name == "Model":
                self.reject(node, "imports the reference Model: ModelNew must not call or reuse it")
            self.check_qualname(node, qn)
            self.aliases[a.asname or a.name] = qn
        self.generic_visit(node)

    # -- names and attributes --
    def visit_Name(self, node: ast.Name) -> None:
        self.name_uses[node.id] = self.name_uses.get(node.id, 0) + isinstance(node.ctx, ast.Load)
        if node.id == "Model":
            self.reject(node, "uses the name `Model` (the reference): ModelNew must compute the result itself")
        if node.id in BANNED_BUILTINS and node.id not in self.aliases:
            self.reject(node, f"uses {node.id}(): {BANNED_BUILTINS[node.id]}")
        if node.id in BANNED_ATTRS:
            self.reject(node, f"uses {node.id}: {BANNED_ATTRS[node.id]}")
        qn = self.aliases.get(node.id)
        if qn:
            self.check_qualname(node, qn)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        own_dict = (node.attr == "__dict__" and isinstance(node.value, ast.Name) and node.value.id == "self"
                    and isinstance(node.ctx, ast.Load))
        if node.attr in BANNED_ATTRS and not own_dict:  # reading the model's own attributes reaches nothing else
            self.reject(node, f"uses .{node.attr}: {BANNED_ATTRS[node.attr]}")
        if node.attr in PRECISION_ATTRS and isinstance(node.ctx, ast.Load):
            self.warn(node, f".{node.attr}: {PRECISION_ATTRS[node.attr]}")
        qn = self.qualname(node)
        if qn:
            self.check_qualname(node, qn)
        if isinstance(node.ctx, (ast.Store, ast.Del)) and id(node) not in self.handled:
            self._check_attr_store(node, qn)
        self.generic_visit(node)

    def _check_attr_store(self, node: ast.Attribute, qn: str | None) -> None:
        if node.attr == "__class__":
            self.reject(node, "assigns __class__: turns an object into another class (a tensor into a lazy "
                              "subclass; hack §1 row 7)")
            return
        base = node.value
        if (isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "type") or (
                isinstance(base, ast.Attribute) and base.attr == "__class__"):
            self.reject(node, f"assigns .{node.attr} on type(...)/__class__: patches a class such as torch.Tensor "
                              "(its comparison or copy; hack §1 row 8)")
            return
        target = qn or self.module_valued(base)
        if target and not qn:
            target = f"{target}.{node.attr}"
        if target:
            self.reject(node, f"assigns or deletes {target}: patching imported modules (the timer, torch, "
                              "comparison functions), here or through an alias, games the harness (hack §1 row 8)")

    def _check_backend_write(self, target: ast.Attribute, value: ast.AST | None) -> bool:
        """`torch.backends.*.x = v`: its own reason. True if the target was a torch.backends setting."""
        qn = self.qualname(target)
        if not qn or not qn.startswith("torch.backends."):
            return False
        self.handled.add(id(target))
        literal = value.value if isinstance(value, ast.Constant) else object()
        if target.attr in BACKEND_PRECISION:
            if literal in BACKEND_PRECISE_VALUES:
                return True
            msg = (f"sets {qn}: lowers fp32 precision for the whole process (TF32 or reduced-precision "
                   "reductions pass a loose tolerance at a fraction of the cost; hack §1 row 13)")
            if self.fp32_task:
                self.reject(target, msg + "; not allowed in an fp32 task")
            else:
                self.warn(target, msg)
        elif target.attr in BACKEND_WARN:
            self.warn(target, f"sets {qn}: {BACKEND_WARN[target.attr]}")
        else:
            self.warn(target, f"sets {qn}: changes a torch backend setting for the candidate's process")
        return True

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            if node.value in BANNED_ATTRS:
                self.reject(node, f"names {node.value!r} in a string: {BANNED_ATTRS[node.value]}")

    # -- statements --
    def visit_Try(self, node: ast.AST) -> None:
        if not is_import_guard(node):
            self.reject(node, "try/except: a fallback can route around the kernel (KernelBench PR #110); "
                              "let errors propagate")
        self.generic_visit(node)

    visit_TryStar = visit_Try

    def _check_store_targets(self, targets: list[ast.AST]) -> None:
        for t in targets:
            if isinstance(t, ast.Subscript):
                qn = self.qualname(t.value)
                if qn:
                    self.reject(t, f"writes into {qn}[...]: patching imported modules games the harness")

    def visit_Assign(self, node: ast.Assign) -> None:
        self._check_store_targets(node.targets)
        for t in node.targets:
            if isinstance(t, ast.Attribute):
                self._check_backend_write(t, node.value)
            self.bind(t, node.value)
        # The extension module and its aliases (`self.mod = _ext`): calls on them are the kernel.
        if (isinstance(node.value, ast.Call) and self._is_load_inline(node.value)) or self._is_ext(node.value):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    self.ext_names.add(t.id)
                elif isinstance(t, ast.Attribute):
                    self.ext_names.add(t.attr)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_store_targets([node.target])
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            if isinstance(node.target, ast.Attribute):
                self._check_backend_write(node.target, node.value)
            self.bind(node.target, node.value)
        self.generic_visit(node)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.bind(node.target, node.value)
        self.generic_visit(node)

    def visit_For(self, node: ast.For) -> None:
        self.bind(node.target, node.iter)  # `for m in [torch]: m.allclose = ...`
        self.generic_visit(node)

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            if item.optional_vars is not None:
                self.bind(item.optional_vars, item.context_expr)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        self._check_store_targets(node.targets)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name in BANNED_ATTRS:
            self.reject(node, f"defines {node.name}: {BANNED_ATTRS[node.name]}")
        for d in [*node.args.defaults, *node.args.kw_defaults]:
            mod = d is not None and self.bare_module(d)
            if mod:
                self.reject(d, f"binds the module {mod} to a parameter: a function can then patch it under "
                               "another name (hack §1 row 8)")
        self.func_stack.append(node.name)
        self.generic_visit(node)
        self.func_stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if node.name == "ModelNew":
            self.has_model_new = True
            for b in node.bases:
                if isinstance(b, ast.Name) and b.id == "Model":
                    self.reject(node, "ModelNew subclasses the reference Model: it must compute the result "
                                      "itself (subclass nn.Module)")
        for b in node.bases:
            qn = self.qualname(b)
            if qn in TENSOR_BASES:
                self.reject(node, f"class {node.name} subclasses {qn}: a tensor subclass can compute lazily "
                                  "when compared (hack §1 row 7)")
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.MatMult) and self.in_runtime_code():
            self.warn(node, "uses the @ operator: torch's matmul, not the candidate's kernel, does that work")
        self.generic_visit(node)

    # -- calls --
    def _is_load_inline(self, call: ast.Call) -> bool:
        qn = self.qualname(call.func)
        if qn:
            return qn.endswith("cpp_extension.load_inline") or qn == "load_inline"
        return isinstance(call.func, ast.Attribute) and call.func.attr == "load_inline"

    def visit_Call(self, node: ast.Call) -> None:
        qn = self.qualname(node.func)
        if self._is_load_inline(node):
            self.load_inline_calls.append(node)
            self._check_load_inline(node)
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name in ("setattr", "delattr") and node.args:
            obj = self.module_valued(node.args[0])
            if obj:
                self.reject(node, f"{name}() on {obj}: patching imported modules, here or through an alias, games "
                                  "the harness (hack §1 row 8)")
            elif (isinstance(node.args[0], ast.Call) and isinstance(node.args[0].func, ast.Name)
                  and node.args[0].func.id == "type"):
                self.reject(node, f"{name}() on type(...): patches a class such as torch.Tensor (hack §1 row 8)")
        if isinstance(node.func, ast.Attribute) and node.func.attr in ("__setattr__", "__delattr__"):
            first = node.args[0] if node.args else None
            on_self = (isinstance(node.func.value, ast.Name) and node.func.value.id == "self") or (
                isinstance(node.func.value, ast.Call) and isinstance(node.func.value.func, ast.Name)
                and node.func.value.func.id == "super") or (isinstance(first, ast.Name) and first.id == "self")
            if not on_self:
                self.reject(node, f"calls {node.func.attr} on something other than the model itself: patches "
                                  "another object's attributes past the assignment rules (hack §1 row 8)")
        if name not in MODULE_ARG_OK and not self._is_load_inline(node):
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                mod = self.bare_module(arg)
                if mod:
                    self.reject(arg, f"passes the module {mod} to a call: a function can then patch it under "
                                     "another name (hack §1 row 8)")
        if qn == "torch.set_float32_matmul_precision":
            arg = node.args[0] if node.args else None
            if not (isinstance(arg, ast.Constant) and arg.value == "highest"):
                msg = ("torch.set_float32_matmul_precision(...) lowers fp32 matmul precision (TF32; hack §1 row 13)")
                if self.fp32_task:
                    self.reject(node, msg + "; not allowed in an fp32 task")
                else:
                    self.warn(node, msg)
        if name == "getattr" and len(node.args) >= 2 and not isinstance(node.args[1], ast.Constant):
            self.warn(node, "getattr() with a computed name: the gate cannot see what it reaches")
        if qn and self.in_runtime_code():
            self._warn_library(node, qn)
        elif (isinstance(node.func, ast.Attribute) and qn is None and self.in_runtime_code()
              and node.func.attr in TENSOR_COMPUTE_METHODS and not self._is_ext(node.func.value)):
            self.warn(node, f"calls .{node.func.attr}(): torch, not the candidate's kernel, does that work")
        if qn and qn.startswith("torch.nn.") and qn.split(".")[2] not in NN_NON_COMPUTE \
                and qn.split(".")[2][:1].isupper():
            self.warn(node, f"uses {qn}: a torch library layer, not the candidate's kernel, does that work")
        self.generic_visit(node)

    def _is_ext(self, node: ast.AST) -> bool:
        """Is this the module load_inline returned (`_ext` or `self._ext`)? Calls on it are the kernel."""
        if isinstance(node, ast.Name):
            return node.id in self.ext_names
        return isinstance(node, ast.Attribute) and node.attr in self.ext_names

    def _warn_library(self, node: ast.Call, qn: str) -> None:
        for root in TORCH_LIBRARY_ROOTS:
            if qn.startswith(root):
                rest = qn[len(root):]
                if "." in rest or rest in TORCH_NON_COMPUTE or rest.startswith("_"):
                    continue
                self.warn(node, f"calls {qn}: torch, not the candidate's kernel, does that work")
                return

    def _check_load_inline(self, node: ast.Call) -> None:
        from kopt.evaluator.flags import classify

        kw = {k.arg: k.value for k in node.keywords}
        if None in kw:
            self.warn(node, "load_inline(**kwargs): the gate cannot see these build arguments; kopt judges the "
                            "flags of the call it captures at build time")
        for k, value in kw.items():
            if k is None or k in BENIGN_KWARGS:
                continue
            try:
                literal = ast.literal_eval(value)
            except ValueError:
                if k == "build_directory":
                    self.reject(node, "load_inline(build_directory=...): kopt owns the build directories (can "
                                      "overwrite another candidate's build)")
                else:
                    self.warn(node, f"load_inline({k}=<computed>): kopt judges the value it captures at build time")
                continue
            verdict = classify(k, literal, target=self.target)
            for r in verdict.rejections:
                self.reject(node, f"load_inline {r}")
            for w in verdict.warnings:
                self.warn(node, f"load_inline {w}")
        if self.target == "cpu" and "cuda_sources" in kw:
            self.reject(node, "load_inline(cuda_sources=...) for the cpu target: write C++ in cpp_sources")


def check_source(source: str, target: str, *, fp32_task: bool = True) -> StaticReport:
    """Check a candidate's source without running it. `target` is "cpu" or "cuda"; `fp32_task` (kopt's tasks
    are fp32 unless the task says otherwise) decides whether lowering fp32 precision is a rejection."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return StaticReport(rejections=(f"line {e.lineno}: Python syntax error: {e.msg}",), warnings=())
    except ValueError as e:  # e.g. null bytes
        return StaticReport(rejections=(f"the source cannot be parsed: {e}",), warnings=())
    try:  # what the parser accepts but Python does not (a repeated keyword hides the value the gate reads)
        compile(tree, "<candidate>", "exec", dont_inherit=True)
    except SyntaxError as e:
        return StaticReport(rejections=(f"line {e.lineno}: Python syntax error: {e.msg}",), warnings=())

    c = _Checker(target, fp32_task)
    c.visit(tree)
    rejections, warnings = c.rejections, c.warnings

    if not c.has_model_new:
        rejections.append("no `class ModelNew` is defined: the candidate must define ModelNew(nn.Module)")
    if not c.load_inline_calls:
        rejections.append("no load_inline(...) call: nothing is compiled, so no kernel of the candidate's runs")
    elif c.ext_names and not any(c.name_uses.get(n, 0) > 0 or attr_used(tree, n) for n in c.ext_names):
        rejections.append("the module built by load_inline is never used: the kernel is compiled but not "
                          "called (decoy)")

    cpp_strings = [s for s in string_constants(tree) if looks_like_cpp(s)]
    # #include lines anywhere (a C++ string may be assembled from pieces the string scan misses).
    check_includes(source, rejections.append, computed=False)
    for s in cpp_strings:
        check_includes(strip_comments(s), rejections.append)
        scan_cpp(s, rejections, warnings)
    if target == "cuda" and not any(re.search(r"\b__global__\b", strip_comments(s)) for s in cpp_strings):
        rejections.append("no __global__ kernel in the CUDA sources: the cuda target needs a CUDA kernel")
    return StaticReport(rejections=tuple(dict.fromkeys(rejections)), warnings=tuple(dict.fromkeys(warnings)))
