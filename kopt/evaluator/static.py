"""The static gate: reject cheating candidates before anything runs (hacking-and-sandbox.md §5 step 1).

Nothing here executes candidate code. Two passes:
- an AST pass over the Python (imports, names, attribute writes, classes, the `load_inline` call);
- a token/regex pass over every string constant that holds C++/CUDA, and over the whole source for
  `#include` lines.

The gate is a tripwire, not a wall: an attacker can always build a banned name at run time (token pasting,
string concatenation). The runtime defences (sandbox, judge outside the candidate's process) are what hold;
this gate catches the common hacks cheaply and with a reason a person can act on. The rules are data: each
table maps a name or pattern to the reason that is reported, so the tables read as the list of rules.
Sources: KernelBench's regex checker (PR #110; kernelbench.md §2), hacking-and-sandbox.md §1 rows 4-9, 12-13,
16-17 and §5.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

TARGETS = ("cpu", "cuda")


@dataclass(frozen=True)
class StaticReport:
    rejections: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.rejections


# ---- Python rules -------------------------------------------------------------------------------------

# Modules a kernel candidate never needs; importing (or reaching) any of them is a rejection.
BANNED_MODULES: dict[str, str] = {
    "threading": "starts threads (work can escape the timed window; hack §1 row 6)",
    "_thread": "starts threads (work can escape the timed window; hack §1 row 6)",
    "multiprocessing": "starts processes (work can escape the timed window and the sandbox)",
    "concurrent": "starts threads or processes (work can escape the timed window)",
    "asyncio": "schedules work outside the call (work can escape the timed window)",
    "subprocess": "runs other programs",
    "pty": "runs other programs",
    "socket": "opens network connections",
    "ssl": "opens network connections",
    "http": "opens network connections",
    "urllib": "opens network connections",
    "requests": "opens network connections",
    "ctypes": "calls arbitrary C functions and writes raw memory (undoes any in-process guard)",
    "cffi": "calls arbitrary C functions and writes raw memory (undoes any in-process guard)",
    "signal": "installs signal handlers (can survive or hide a timeout)",
    "gc": "walks live objects (can find the reference's outputs; hack §1 row 17)",
    "inspect": "reads stack frames (can find the grader's state; hack §1 row 17)",
    "importlib": "imports modules by computed names (hides what it imports)",
    "builtins": "can replace built-in functions",
    "pickle": "runs arbitrary code while loading",
    "marshal": "loads arbitrary code objects",
    "mmap": "maps files or shared memory (replay through /dev/shm; hack §1 row 9)",
    "shutil": "touches the filesystem (candidates never need files)",
    "tempfile": "touches the filesystem (candidates never need files)",
}

# Fully qualified names (after resolving import aliases) that are rejected wherever they appear.
BANNED_NAMES: dict[str, str] = {
    "os.system": "runs a shell command",
    "os.popen": "runs a shell command",
    "os.fork": "forks the process",
    "os.forkpty": "forks the process",
    "os.vfork": "forks the process",
    "os.kill": "sends signals to other processes",
    "os.killpg": "sends signals to other processes",
    "os.environ": "reads the environment (API keys live there)",
    "os.environb": "reads the environment (API keys live there)",
    "os.getenv": "reads the environment (API keys live there)",
    "os.getenvb": "reads the environment (API keys live there)",
    "os.putenv": "changes the environment",
    "os.unsetenv": "changes the environment",
    "os.open": "opens files (candidates never need files)",
    "os.fdopen": "opens files (candidates never need files)",
    "os.remove": "deletes files",
    "os.unlink": "deletes files",
    "os.setsid": "leaves the process group (escapes the timeout kill)",
    "os.setpgid": "leaves the process group (escapes the timeout kill)",
    "sys._getframe": "reads stack frames (can find the grader's state; hack §1 row 17)",
    "sys._current_frames": "reads stack frames (can find the grader's state; hack §1 row 17)",
    "sys.modules": "reaches other loaded modules (the harness, the reference)",
    "sys.settrace": "installs a tracer over the harness",
    "sys.setprofile": "installs a profiler hook over the harness",
    "sys.addaudithook": "installs a hook over the harness",
    "contextlib.suppress": "swallows exceptions (a fallback that routes around the kernel)",
    "torch.utils.cpp_extension.load": "builds from files on disk; use load_inline with the sources inline",
    "torch.Tensor._make_subclass": "creates a tensor subclass (lazy output; hack §1 row 7)",
    "torch.Tensor.as_subclass": "creates a tensor subclass (lazy output; hack §1 row 7)",
}
# os.exec*, os.spawn*, os.posix_spawn*: a family of names.
BANNED_PREFIXES: dict[str, str] = {
    "os.exec": "replaces the process with another program",
    "os.spawn": "runs another program",
    "os.posix_spawn": "runs another program",
}

# Built-in functions that a candidate never needs.
BANNED_BUILTINS: dict[str, str] = {
    "eval": "runs code built from strings (hides what it does)",
    "exec": "runs code built from strings (hides what it does)",
    "compile": "builds code objects from strings (hides what it does)",
    "__import__": "imports modules by computed names (hides what it imports)",
    "open": "opens files (candidates never need files)",
    "globals": "reaches module globals by name (can patch or read the harness)",
    "vars": "reaches object dictionaries (can patch or read the harness)",
    "breakpoint": "starts a debugger",
}

# Attribute names (and equal string constants, for getattr(x, "...")) used for introspection.
BANNED_ATTRS: dict[str, str] = {
    "__globals__": "introspects function globals (can read or patch the harness)",
    "__subclasses__": "walks the class hierarchy (classic sandbox escape)",
    "__builtins__": "reaches the built-in functions (can replace them)",
    "__dict__": "reaches object dictionaries (can patch or read the harness)",
    "__code__": "rewrites or reads code objects",
    "__closure__": "reads closures of other functions",
    "__bases__": "walks or rewrites the class hierarchy",
    "__mro__": "walks the class hierarchy (classic sandbox escape)",
    "__torch_function__": "tensor subclass hook (lazy output; hack §1 row 7)",
    "__torch_dispatch__": "tensor subclass hook (lazy output; hack §1 row 7)",
    "_make_subclass": "creates a tensor subclass (lazy output; hack §1 row 7)",
    "as_subclass": "creates a tensor subclass (lazy output; hack §1 row 7)",
    "f_back": "reads stack frames (can find the grader's state; hack §1 row 17)",
    "f_globals": "reads stack frames (can find the grader's state; hack §1 row 17)",
    "f_locals": "reads stack frames (can find the grader's state; hack §1 row 17)",
    "tb_frame": "reads stack frames (can find the grader's state; hack §1 row 17)",
    "gi_frame": "reads stack frames (can find the grader's state; hack §1 row 17)",
    "cr_frame": "reads stack frames (can find the grader's state; hack §1 row 17)",
}

# Bases that make a class a tensor subclass (hack §1 row 7: an output that computes only when compared).
TENSOR_BASES = ("torch.Tensor", "torch._C.TensorBase", "torch._C._TensorBase", "torch._tensor.Tensor")

# load_inline keywords that are kopt's to set, never the candidate's.
REJECTED_KWARGS: dict[str, str] = {
    "extra_include_paths": "sets include paths (kopt owns the build; can pull in files from anywhere)",
    "extra_ldflags": "sets linker flags (kopt owns the build; can link arbitrary libraries)",
    "build_directory": "sets the build directory (kopt owns build dirs; can overwrite other builds)",
}
DROPPED_KWARGS: dict[str, str] = {
    "extra_cflags": "passes extra_cflags, which kopt drops (kopt sets the compiler flags)",
    "extra_cuda_cflags": "passes extra_cuda_cflags, which kopt drops (kopt sets the compiler flags)",
}

# torch calls that only allocate, convert or describe tensors: not library compute, so no warning.
TORCH_NON_COMPUTE = frozenset({
    "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like",
    "tensor", "as_tensor", "from_numpy", "arange", "manual_seed", "no_grad", "inference_mode", "is_tensor",
    "device", "dtype", "Size", "get_default_dtype", "set_grad_enabled", "is_grad_enabled", "randn", "rand",
    "randint", "normal", "get_num_threads", "set_num_threads", "float32", "float16", "bfloat16", "float64",
    "int64", "int32", "bool", "Tensor", "Generator", "finfo", "iinfo",
})
# torch.nn members that are containers/parameters, not library layers.
NN_NON_COMPUTE = frozenset({"Module", "Parameter", "ParameterList", "ParameterDict", "ModuleList", "ModuleDict",
                            "Sequential", "Buffer", "init", "Identity"})
# Tensor methods that do library compute (warned about inside forward-time code, not __init__).
TENSOR_COMPUTE_METHODS = frozenset({
    "relu", "relu_", "matmul", "mm", "bmm", "addmm", "softmax", "log_softmax", "sigmoid", "tanh", "exp", "log",
    "sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin", "clamp", "clamp_", "clip", "abs", "sqrt",
    "rsqrt", "pow", "cumsum", "cumprod", "norm", "var", "std", "mul", "add", "sub", "div", "where", "gelu",
    "conv2d", "prod", "sort", "topk", "maximum", "minimum", "einsum", "diag", "tril", "triu", "masked_fill",
})
TORCH_LIBRARY_ROOTS = ("torch.", "torch.nn.functional.", "torch.special.", "torch.linalg.", "torch.fft.")

# fp16/TF32 use in the Python (hack §1 row 13): allowed, but the judge's fp64 budget decides; warn.
PRECISION_NAMES: dict[str, str] = {
    "torch.float16": "uses float16 inside an fp32 task (precision loss; hack §1 row 13)",
    "torch.half": "uses float16 inside an fp32 task (precision loss; hack §1 row 13)",
    "torch.bfloat16": "uses bfloat16 inside an fp32 task (precision loss; hack §1 row 13)",
}
PRECISION_ATTRS: dict[str, str] = {
    "allow_tf32": "touches TF32 (precision loss; hack §1 row 13)",
    "half": "casts to float16 (precision loss; hack §1 row 13)",
    "set_float32_matmul_precision": "lowers fp32 matmul precision (TF32; hack §1 row 13)",
}
STREAM_NAMES = ("torch.cuda.Stream", "torch.cuda.stream", "torch.cuda.ExternalStream")


# ---- C++/CUDA rules (regex over the kernel strings, comments stripped) -------------------------------------

CPP_REJECT: dict[str, str] = {
    r"\bstd\s*::\s*j?thread\b": "starts a C++ thread (work can escape the timed window; hack §1 row 6)",
    r"\bpthread_create\b": "starts a thread (work can escape the timed window; hack §1 row 6)",
    r"\bstd\s*::\s*async\b": "starts asynchronous work (can escape the timed window; hack §1 row 6)",
    r"\b(?:v?fork|clone3?)\s*\(": "forks the process",
    r"\bsystem\s*\(": "runs a shell command",
    r"\bpopen\s*\(": "runs a shell command",
    r"\bexec(?:l|lp|le|v|vp|vpe|ve)\s*\(": "replaces the process with another program",
    r"\bposix_spawnp?\s*\(": "runs another program",
    r"\bdlopen\b|\bdlsym\b": "loads libraries at run time",
    r"\bsocket\s*\(": "opens a network socket",
    r"\b(?:asm|__asm__|__asm)\b": "contains inline assembly (cannot be checked)",
    r"\bsyscall\s*\(": "makes raw system calls",
    r"\b(?:secure_)?getenv\s*\(|\benviron\b": "reads the environment (API keys live there)",
    r"\bfopen\s*\(|\bstd\s*::\s*[io]?fstream\b": "opens files (candidates never need files)",
    r"\bPy(?:Run|Import|Eval)_\w+|\bpy(?:bind11)?\s*::\s*(?:exec|eval|module_?\s*::\s*import)\b":
        "reaches into the Python interpreter from C++ (can patch the harness)",
}
CPP_WARN: dict[str, str] = {
    r"\bcudaStreamCreate\w*|\bgetStreamFromPool\b": "creates a CUDA stream (work can escape the timing events; hack §1 row 5)",
    r"\bcudaLimitPersistingL2CacheSize\b|\baccessPolicyWindow\b": "sets a persisting-L2 window (survives the cache flush; hack §1 row 15)",
    r"\b__float2half\w*|\b__half2?\b|\b__nv_bfloat16\b|\bwmma\b|\btf32\b": "uses fp16/bf16/TF32 inside an fp32 task (precision loss; hack §1 row 13)",
    r"\bcublas\w+|\bcudnn\w+": "calls cuBLAS/cuDNN (a library does the work)",
}
# at::/torch:: names in C++ that only allocate or describe tensors; any other `at::name(` is a library op.
CPP_NON_COMPUTE = frozenset({
    "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like",
    "Tensor", "TensorOptions", "Scalar", "ScalarType", "IntArrayRef", "Device", "DeviceGuard", "device",
    "dtype", "from_blob", "scalar_type", "get_num_threads", "set_num_threads", "parallel_for",
    "indexing", "NoGradGuard", "InferenceMode", "arange", "tensor",
})
_CPP_OP = re.compile(r"\b(?:at|torch)\s*::\s*(?:(?:native|cuda|indexing)\s*::\s*)?([A-Za-z_]\w*)\s*\(")
_INCLUDE = re.compile(r"^[ \t]*#[ \t]*include[ \t]*(.*)$", re.MULTILINE)
_CPP_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
_CPP_MARKERS = ("#include", "torch::", "__global__", "at::", "{", ";", "#pragma", "#define")


# ---- the checker --------------------------------------------------------------------------------------

def _looks_like_cpp(text: str) -> bool:
    return any(m in text for m in _CPP_MARKERS)


def _strip_cpp_comments(text: str) -> str:
    return _CPP_COMMENT.sub(" ", text)


def _check_includes(text: str, add, computed: bool = True) -> None:
    """Reject absolute/'..' include paths; with `computed`, also `#include MACRO` (a path the regex can't see).

    The whole-source pass uses computed=False: a Python comment such as `# include the header` is not C++.
    """
    for m in _INCLUDE.finditer(text):
        arg = m.group(1).strip()
        pm = re.match(r'^[<"]([^>"]*)[>"]', arg)
        if not pm:
            if computed:
                add(f"computed #include {arg[:60]!r}: include headers by a literal <name> or \"name\"")
            continue
        path = pm.group(1).strip()
        if path.startswith(("/", "~")) or ".." in path.replace("\\", "/").split("/"):
            add(f"#include of {path!r}: absolute or '..' include paths can read any file on the machine "
                "(leaks it through compiler errors; hack §5 row 16)")


def _scan_cpp(text: str, rejections: list[str], warnings: list[str]) -> None:
    code = _strip_cpp_comments(text)
    for pattern, reason in CPP_REJECT.items():
        m = re.search(pattern, code)
        if m:
            rejections.append(f"C++ source uses `{m.group(0).strip()}`: {reason}")
    for pattern, reason in CPP_WARN.items():
        m = re.search(pattern, code)
        if m:
            warnings.append(f"C++ source uses `{m.group(0).strip()}`: {reason}")
    ops = sorted({m.group(1) for m in _CPP_OP.finditer(code)
                  if m.group(1) not in CPP_NON_COMPUTE and not m.group(1).startswith("k")})
    if ops:
        warnings.append("C++ source calls library ops " + ", ".join(f"at::{o}" for o in ops[:6])
                        + ": the library, not the candidate's kernel, does that work")


class _Checker(ast.NodeVisitor):
    def __init__(self, target: str):
        self.target = target
        self.rejections: list[str] = []
        self.warnings: list[str] = []
        self.aliases: dict[str, str] = {}  # local name -> fully qualified name
        self.load_inline_calls: list[ast.Call] = []
        self.ext_names: set[str] = set()  # names bound to load_inline(...) results
        self.name_uses: dict[str, int] = {}
        self.func_stack: list[str] = []
        self.has_model_new = False

    # -- helpers --
    def reject(self, node: ast.AST | None, msg: str) -> None:
        where = f"line {node.lineno}: " if node is not None and hasattr(node, "lineno") else ""
        text = where + msg
        if text not in self.rejections:
            self.rejections.append(text)

    def warn(self, node: ast.AST | None, msg: str) -> None:
        where = f"line {node.lineno}: " if node is not None and hasattr(node, "lineno") else ""
        text = where + msg
        if text not in self.warnings:
            self.warnings.append(text)

    def qualname(self, node: ast.AST) -> str | None:
        """The fully qualified dotted name of a Name/Attribute chain rooted at an import, else None."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.qualname(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

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
            else:
                self.aliases[root] = root

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
        if node.attr in BANNED_ATTRS:
            self.reject(node, f"uses .{node.attr}: {BANNED_ATTRS[node.attr]}")
        if node.attr in PRECISION_ATTRS:
            self.warn(node, f".{node.attr}: {PRECISION_ATTRS[node.attr]}")
        qn = self.qualname(node)
        if qn:
            self.check_qualname(node, qn)
            if isinstance(node.ctx, (ast.Store, ast.Del)):
                self.reject(node, f"assigns or deletes {qn}: patching imported modules (the timer, torch, "
                                  "comparison functions) games the harness (hack §1 row 8)")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            if node.value in BANNED_ATTRS:
                self.reject(node, f"names {node.value!r} in a string: {BANNED_ATTRS[node.value]}")

    # -- statements --
    def visit_Try(self, node: ast.AST) -> None:
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

    def visit_Delete(self, node: ast.Delete) -> None:
        self._check_store_targets(node.targets)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name in BANNED_ATTRS:
            self.reject(node, f"defines {node.name}: {BANNED_ATTRS[node.name]}")
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
            obj = self.qualname(node.args[0])
            if obj:
                self.reject(node, f"{name}() on {obj}: patching imported modules games the harness (hack §1 row 8)")
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
        kw = {k.arg: k.value for k in node.keywords}
        if None in kw:
            self.reject(node, "load_inline(**kwargs): kopt must see every build argument")
        for k, reason in REJECTED_KWARGS.items():
            if k in kw:
                self.reject(node, f"load_inline({k}=...): {reason}")
        for k, reason in DROPPED_KWARGS.items():
            if k in kw:
                self.warn(node, f"load_inline {reason}")
        if self.target == "cpu" and "cuda_sources" in kw:
            self.reject(node, "load_inline(cuda_sources=...) for the cpu target: write C++ in cpp_sources")


def _string_constants(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append(node.value)
    return out


def check_source(source: str, target: str) -> StaticReport:
    """Check a candidate's source without running it. `target` is "cpu" or "cuda"."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return StaticReport(rejections=(f"line {e.lineno}: Python syntax error: {e.msg}",), warnings=())
    except ValueError as e:  # e.g. null bytes
        return StaticReport(rejections=(f"the source cannot be parsed: {e}",), warnings=())

    c = _Checker(target)
    c.visit(tree)
    rejections, warnings = c.rejections, c.warnings

    if not c.has_model_new:
        rejections.append("no `class ModelNew` is defined: the candidate must define ModelNew(nn.Module)")
    if not c.load_inline_calls:
        rejections.append("no load_inline(...) call: nothing is compiled, so no kernel of the candidate's runs")
    elif c.ext_names and not any(c.name_uses.get(n, 0) > 0 or _attr_used(tree, n) for n in c.ext_names):
        rejections.append("the module built by load_inline is never used: the kernel is compiled but not "
                          "called (decoy)")

    cpp_strings = [s for s in _string_constants(tree) if _looks_like_cpp(s)]
    # #include lines anywhere (a C++ string may be assembled from pieces the string scan misses).
    _check_includes(source, rejections.append, computed=False)
    for s in cpp_strings:
        _check_includes(_strip_cpp_comments(s), rejections.append)
        _scan_cpp(s, rejections, warnings)
    if target == "cuda" and not any(re.search(r"\b__global__\b", _strip_cpp_comments(s)) for s in cpp_strings):
        rejections.append("no __global__ kernel in the CUDA sources: the cuda target needs a CUDA kernel")
    return StaticReport(rejections=tuple(dict.fromkeys(rejections)), warnings=tuple(dict.fromkeys(warnings)))


def _attr_used(tree: ast.AST, attr: str) -> bool:
    """`self._ext = load_inline(...)` then `self._ext.relu(x)`: an attribute read of that name."""
    return any(isinstance(n, ast.Attribute) and n.attr == attr and isinstance(n.ctx, ast.Load)
               for n in ast.walk(tree))
