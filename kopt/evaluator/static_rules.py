"""The static gate's Python rules as data: each table maps a name or pattern to the reason that is reported,
so the tables read as the list of rules (kopt/evaluator/static.py applies them; docs/evaluator.md §1 rows).
"""

from __future__ import annotations

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
    "kopt": "imports kopt itself (the harness: can read the reference or patch the judge; hack §1 row 17)",
    "kopt_child": "imports kopt's child harness (can patch the call loop or forge its hashes; hack §1 row 8)",
    "__main__": "reaches the main module (the harness that imported the candidate; hack §1 row 17)",
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
    "locals": "reaches local variables by name (aliases a module past the gate's view)",
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

# load_inline build keywords: judged by kopt/evaluator/flags.py (the same policy the build applies to the call
# it captures), here on their literal values so a flag that brings files from elsewhere fails before any build.
FLAG_KWARGS = ("extra_cflags", "extra_cuda_cflags", "extra_ldflags", "extra_include_paths", "build_directory")

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
}
# torch.backends settings written by a candidate (they last for the candidate's whole process). Lowering fp32
# precision is hack §1 row 13 (TF32 matmuls pass a loose tolerance at a fraction of the cost): rejected for fp32
# tasks unless the value written keeps full precision. Algorithm selection only changes speed and run-to-run
# determinism: a warning.
BACKEND_PRECISION = ("allow_tf32", "allow_fp16_reduced_precision_reduction", "allow_bf16_reduced_precision_reduction",
                     "fp32_precision")
BACKEND_PRECISE_VALUES = (False, "ieee", "highest")
BACKEND_WARN = {"benchmark": "cuDNN autotuning changes which algorithm runs (timing varies run to run)",
                "deterministic": "cuDNN determinism changes which algorithm runs"}
STREAM_NAMES = ("torch.cuda.Stream", "torch.cuda.stream", "torch.cuda.ExternalStream")


# load_inline keywords that are not build flags and change nothing kopt relies on.
BENIGN_KWARGS = frozenset({"name", "cpp_sources", "cuda_sources", "functions", "verbose", "with_cuda",
                           "is_python_module", "with_pytorch_error_handling", "keep_intermediates", "use_pch",
                           "is_standalone", "sycl_sources"})
# Submodules a candidate could hand to a function that patches them (`patch(torch.cuda)`).
MODULE_LEAVES = frozenset({"torch", "cuda", "backends", "nn", "functional", "utils", "testing", "linalg", "fft",
                           "special", "cpp_extension", "autograd", "jit", "ops", "library", "_C", "_dynamo",
                           "compiler", "time", "os", "sys", "random", "math"})
# Calls that take a module as an argument without patching it.
MODULE_ARG_OK = frozenset({"isinstance", "getattr", "hasattr", "id", "type", "repr", "str", "print", "callable"})
