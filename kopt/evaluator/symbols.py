"""Evidence from outside the candidate's process: what the built extension links and the instructions it holds.

Once a candidate's .so is loaded, its process belongs to the candidate, so kopt's parent reads the binary
itself: its undefined dynamic symbols (`nm -D --undefined-only`, demangled; `nm --undefined-only` for
compile-only objects) are checked against a true allowlist of what a kernel needs, and its code
(`objdump -d`) is searched for raw system-call instructions. Each rule below names the hack it stops.

- allowed: allocation and tensor accessors/checks (empty*, zeros/ones/full(_like), contiguous, clone/copy_,
  to/_to_copy, views, size/stride, data_ptr, TORCH_CHECK), c10 basics, pybind11 and the CPython API, libc math,
  string and memory functions, libstdc++ basics, the OpenMP runtime, the CUDA runtime and driver;
- labelled (allowed): BLAS / oneDNN / cuBLAS / cuDNN entry points (real kernels call cuBLAS);
- library compute (rejected unless allowed): ATen's compute reached below or through the dispatcher
  (at::cpu::*, at::native::*, at::_ops::<compute op>::call/redispatch, operators looked up by name);
- rejected: everything else, and by name dl*, process, thread, timer and signal-handler creation, sockets,
  ptrace/process_vm_*, page-protection and mapping calls, file and environment access, shared memory,
  operator registration, raw syscalls.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

# at::_ops structs that allocate, view, copy or read metadata (not the task's compute).
ALLOC_VIEW_OPS = frozenset({
    "empty", "empty_like", "empty_strided", "empty_memory_format", "new_empty", "new_empty_strided", "zeros",
    "zeros_like", "ones", "ones_like", "full", "full_like", "new_zeros", "new_ones", "new_full", "contiguous",
    "clone", "copy_", "to", "_to_copy", "view", "view_as", "reshape", "reshape_as", "_reshape_alias", "transpose",
    "t", "permute", "select", "slice", "narrow", "squeeze", "unsqueeze", "expand", "expand_as", "flatten",
    "unflatten", "as_strided", "detach", "alias", "resize_", "fill_", "zero_", "size", "stride", "item",
    "_local_scalar_dense", "movedim", "chunk", "split", "unbind", "diagonal", "unfold", "is_contiguous",
    "is_nonzero", "set_", "numel", "sym_size", "sym_stride", "sym_numel",
})
_OVERLOAD = re.compile(r"(?:_(?:int|Tensor|dtype|Scalar|using_ints|memory_format|dim|dims|other|device|"
                       r"dtype_layout|names|symint|out|sizes|copy|Dimname|with_sizes))*")

# (pattern on the demangled name, the hack it stops)
REJECT = [
    (r"(?:dlopen|dlmopen|dlsym|dlvsym|dladdr1?|dlinfo|dl_iterate_phdr|_dl_\w+)",
     "looks code up at run time (dlsym reaches system, the clock or ATen compute by a name no check sees)"),
    (r"(?:system|popen|execl[pe]?|execv[pe]?|execvpe|execve|fexecve|posix_spawnp?|fork|vfork|clone3?|daemon)",
     "starts a process (shells out: copies secrets, outlives the candidate)"),
    # A kernel's parallelism comes from OpenMP (libgomp starts its threads, not the extension) or torch's
    # at::parallel_for; a thread or a signal handler the extension starts itself runs between kopt's calls,
    # where it can re-warm the caches the flush evicted or finish work after the call was timed.
    (r"(?:pthread_create|__pthread_create_\w+|thrd_create|std::thread::_M_start_thread|std::jthread::.*|"
     r"std::__future_base::_Async_state\w*::.*|timer_create|timer_settime|setitimer|alarm|ualarm|"
     r"sigaction|__sigaction|signal|sigset|bsd_signal|sysv_signal|pthread_kill|pthread_sigqueue|"
     r"pthread_setschedparam|pthread_setschedprio|sched_setscheduler|sched_setparam|sched_setaffinity|"
     r"aio_\w+|lio_listio\w*)",
     "starts a thread, a timer or a signal handler (work that runs between kopt's calls: re-warms the caches "
     "the flush evicted, or finishes after the call was timed)"),
    (r"(?:socket|socketpair|connect|bind|listen|accept4?|send|sendto|sendmsg|recv|recvfrom|recvmsg|"
     r"getaddrinfo|gethostbyname2?|gethostbyname_r)", "opens network connections (exfiltrates secrets or results)"),
    (r"(?:ptrace|process_vm_readv|process_vm_writev)", "reads or writes another process's memory"),
    (r"syscall", "makes raw system calls (bypasses every named-symbol rule)"),
    (r"(?:mprotect|pkey_mprotect|mmap|mmap64|mremap|memfd_create)",
     "maps memory or changes page protections (rewrites the GOT, e.g. the clock, or runs generated code)"),
    (r"(?:open|open64|openat|openat64|__open_2|__open64_2|creat|creat64|fopen|fopen64|freopen|freopen64|"
     r"opendir|fdopendir|readlink|readlinkat|symlink|link|unlink|unlinkat|rename|renameat2?|truncate|ftruncate|"
     r"chmod|fchmod|chown|mkdir|rmdir|std::__basic_file<.*|std::basic_(?:i|o)?fstream<.*|std::basic_filebuf<.*|"
     r"std::filesystem::.*|std::__cxx11::basic_(?:i|o)?fstream<.*)",
     "opens or changes files (reads secrets or kopt's files, writes into the build store)"),
    (r"(?:getenv|secure_getenv|__libc_secure_getenv|environ|__environ|setenv|putenv|unsetenv)",
     "reads or changes the environment (API keys)"),
    (r"(?:shmget|shmat|shmdt|shmctl|shm_open|shm_unlink|semget|semop|msgget|msgsnd|mq_open)",
     "creates shared memory or IPC objects (outlives the candidate)"),
    (r"(?:kill|tgkill|tkill|killpg|sigqueue|setrlimit|prlimit|prlimit64|setpriority|unshare|setns|mount|umount2?|"
     r"chroot|pivot_root|setuid|setgid|seteuid|setresuid|prctl)",
     "signals other processes or changes the process's limits, identity or namespaces"),
    (r"(?:torch::Library::.*|torch::detail::TorchLibraryInit::.*|c10::RegisterOperators::.*|"
     r"c10::Dispatcher::register\w*|c10::impl::OperatorEntry::.*|torch::jit::RegisterOperators::.*)",
     "registers operators with torch's dispatcher (replaces ops the reference or kopt use)"),
    (r"at::Context::set\w*", "changes torch's global numerics settings (TF32, determinism) for the reference too"),
]

LIBRARY = [
    (r"(?:at::cpu|at::native|at::cuda::native|at::compositeexplicitautograd|at::compositeimplicitautograd|"
     r"at::compositeexplicitautogradnonfunctional|at::meta|at::mkldnn|at::vec)::.*", "ATen compute below the dispatcher"),
    (r"c10::Dispatcher::.*|c10::OperatorHandle::.*|torch::jit::.*", "ATen operators looked up by name"),
    (r"at::(?:TensorIterator\w*|TensorIteratorConfig)::.*", "ATen's compute loops (TensorIterator)"),
]

LABELS = [
    (r"(?:cblas_\w+|[sdcz](?:gemm|gemv|axpy|dot|syrk|trsm)_?|mkl_\w+|MKL_\w+)", "BLAS"),
    (r"(?:dnnl_\w+|dnnl::.*|mkldnn_\w+)", "oneDNN"),
    (r"cublas(?:Lt)?\w*", "cuBLAS"),
    (r"cudnn\w*", "cuDNN"),
    (r"(?:cufft|cusparse|cusolver|curand)\w*", "CUDA math libraries"),
]

ALLOW = [
    r"_?_?Py\w*", r"_Py\w*", r"pybind11::.*",
    r"c10::.*", r"caffe2::TypeMeta::.*", r"at::TensorBase::.*", r"at::Tensor::.*",
    r"at::(?:get_num_threads|get_thread_num|in_parallel_region|init_num_threads|set_num_threads|"
    r"get_num_interop_threads|internal::.*|globalContext|Context::\w+|getCPUAllocator|"
    r"cuda::getCurrentCUDAStream|cuda::getCurrentCUDABlasHandle|cuda::getCurrentCUDABlasLtHandle|"
    r"cuda::getCurrentDeviceProperties|cuda::getDeviceProperties|cuda::warp_size|cuda::getCUDADeviceAllocator|"
    r"cuda::CUDAStream\w*|cuda::detail::.*|toString|print|TensorMaker::.*|detail::empty\w*|from_blob|"
    r"RecordFunction\w*::.*|record_function_enter.*|_ops::\w+::name|_ops::\w+::overload_name|"
    r"_ops::\w+::schema_str)",
    r"torch::(?:PyWarningHandler::.*|translate_exception_to_python|autograd::AutogradMeta\w*|wrap_pybind\w*|"
    r"autograd::impl::.*|autograd::utils::.*|utils::.*)",
    r"std::.*", r"__gnu_cxx::.*", r"__cxxabiv1::.*", r"operator (?:new|delete)(?:\[\])?", r"__cxa_\w+",
    r"__gxx_personality_v0", r"_Unwind_\w+", r"__dynamic_cast", r"__tls_get_addr", r"__libc_single_threaded",
    r"__dso_handle", r"__gmon_start__", r"_ITM_\w+", r"__stack_chk_fail", r"__assert_fail", r"abort",
    r"__errno_location", r"_GLOBAL_OFFSET_TABLE_", r"__popcount\w*", r"__cpu_model", r"__cpu_indicator_init",
    r"__cpu_features2",
    # libc memory, strings, formatting, time, threads
    r"(?:malloc|calloc|realloc|free|posix_memalign|aligned_alloc|memalign|valloc|malloc_usable_size)",
    r"(?:mem(?:cpy|move|set|cmp|chr|rchr)|__mem\w+_chk|str\w*|__str\w*|wcs\w*|wmem\w*|bcmp|bzero|explicit_bzero)",
    r"(?:v?s?n?printf|v?fprintf|v?dprintf|__\w*printf_chk|puts|fputs|fputc|putc|putchar|fwrite|fflush|"
    r"stdout|stderr|perror|sscanf|__isoc\d+_\w+|ato[fil]|atoll|strto\w+|qsort|bsearch|abs|labs|llabs|"
    r"rand|srand|rand_r|random|drand48)",
    r"(?:clock_gettime|clock|gettimeofday|time|nanosleep|usleep|sleep|sched_yield|sched_getcpu|"
    r"sysconf|get_nprocs\w*|getpid|gettid|__sched_cpucount)",
    r"pthread_\w+", r"sem_(?:init|destroy|wait|post|trywait)",  # locks, once, keys; creation is rejected above
    r"__cxa_thread_atexit_impl", r"__libc_start_main",
    r"__once_proxy", r"__once_call", r"__once_callable",  # libstdc++'s std::call_once (lazy one-time setup)
    # exit-time cleanup of a kernel's own static state (a cuBLAS handle): runs after kopt has its results
    r"atexit", r"__cxa_atexit", r"__cxa_finalize", r"at_quick_exit",
    # libm (and its vector variants)
    r"(?:_ZGV\w+|__\w+_finite|(?:a?sin|a?cos|a?tan|atan2|sinh|cosh|tanh|asinh|acosh|atanh|exp|exp2|expm1|"
    r"exp10|log|log2|log10|log1p|logb|pow|sqrt|cbrt|hypot|erf|erfc|tgamma|lgamma|lgamma_r|ceil|floor|trunc|"
    r"round|lround|llround|rint|lrint|llrint|nearbyint|fmod|remainder|remquo|fma|fmax|fmin|fdim|fabs|copysign|"
    r"frexp|ldexp|modf|scalbn|scalbln|ilogb|nextafter|nexttoward|sincos|j0|j1|y0|y1|nan)[fl]?|"
    r"__(?:isnan|isinf|finite|fpclassify|signbit)[fl]?|isnan[fl]?|isinf[fl]?|finite[fl]?|feclearexcept|"
    r"fegetround|fesetround|fetestexcept)",
    # OpenMP (GNU and LLVM) and the CUDA runtime / driver
    r"GOMP_\w+", r"omp_\w+", r"__kmpc_\w+", r"__kmp\w*",
    r"cuda\w+", r"__cuda\w+", r"cu[A-Z]\w*", r"nvrtc\w*", r"__nv\w+", r"__fatbinwrap\w*",
]

_REJECT = [(re.compile(p), why) for p, why in REJECT]
_LIBRARY = [(re.compile(p), why) for p, why in LIBRARY]
_LABELS = [(re.compile(p), label) for p, label in LABELS]
_ALLOW = [re.compile(p) for p in ALLOW]
_DATA = re.compile(r"^(?:typeinfo(?: name)? for|vtable for|VTT for|construction vtable for .*-in-|"
                   r"guard variable for|TLS init function for|TLS wrapper function for|reference temporary #\d+ for|"
                   r"non-virtual thunk to|virtual thunk to|covariant return thunk to) ")
_OPS = re.compile(r"at::_ops::(\w+)::(?:call|redispatch)")
_OPERATOR = re.compile(r"operator(?:<<=|>>=|<=>|<<|>>|<=|>=|->\*?|<|>|\(\)|\[\])")
_SYSCALL_INSN = re.compile(r"\t(?:syscall|sysenter|int\s+\$0x80|svc\s+#?0x0|svc\s+#0)\b")


@dataclass(frozen=True)
class SymbolReport:
    """What the binary links, judged: `rejections` and `library` are sentences naming the symbol."""

    rejections: tuple[str, ...] = ()
    library: tuple[str, ...] = ()  # ATen compute (rejected unless the settings allow library calls)
    labels: tuple[str, ...] = ()  # e.g. "cuBLAS (cublasSgemm_v2)": allowed, recorded
    symbols: int = 0

    @property
    def ok(self) -> bool:
        return not self.rejections


def qualified_name(demangled: str) -> str:
    """The function's qualified name without return type, parameters or symbol version:
    "float* at::TensorBase::data_ptr<float>() const" -> "at::TensorBase::data_ptr<float>"."""
    name = demangled.split("@", 1)[0].strip()
    if _DATA.match(name):
        return name
    ops: list[str] = []

    def hide(m: re.Match) -> str:  # operator<<, operator() ... would upset the bracket depth below
        ops.append(m.group(0))
        return f"operator\x00{len(ops) - 1}\x00"

    name = _OPERATOR.sub(hide, name)
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            cut = i
            break
    head = name[:cut]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(head):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == " " and depth == 0:
            parts.append(head[start:i])
            start = i + 1
    parts.append(head[start:])
    parts = [p for p in parts if p]
    while len(parts) > 1 and parts[-1].startswith("<"):  # "std::operator<< <traits>"
        parts[-2:] = [parts[-2] + parts[-1]]
    if len(parts) > 1 and parts[-2] == "operator":  # "operator new", "operator delete[]"
        parts[-2:] = ["operator " + parts[-1]]
    out = parts[-1] if parts else name
    return re.sub(r"operator\x00(\d+)\x00", lambda m: ops[int(m.group(1))], out)


def _ops_allowed(struct: str) -> bool:
    for base in ALLOC_VIEW_OPS:
        if struct == base or (struct.startswith(base + "_") and _OVERLOAD.fullmatch(struct[len(base):])):
            return True
    return False


def classify_symbol(demangled: str) -> tuple[str, str]:
    """("allow" | "label" | "library" | "reject", why) for one undefined symbol."""
    name = qualified_name(demangled)
    if _DATA.match(name):
        inner = _DATA.sub("", name)
        return ("allow", "") if not any(rx.fullmatch(inner) for rx, _ in _REJECT) else classify_symbol(inner)
    for rx, why in _REJECT:
        if rx.fullmatch(name):
            return "reject", why
    m = _OPS.fullmatch(name)
    if m:
        if _ops_allowed(m.group(1)):
            return "allow", ""
        return "library", f"ATen operator {m.group(1)} through the dispatcher"
    for rx, why in _LIBRARY:
        if rx.fullmatch(name):
            return "library", why
    for rx, label in _LABELS:
        if rx.fullmatch(name):
            return "label", label
    if any(rx.fullmatch(name) for rx in _ALLOW):
        return "allow", ""
    if name.startswith(("at::", "torch::")):
        return "library", "an ATen/torch function that is not allocation, a view or an accessor"
    return "reject", "outside what a kernel links (kopt's allowlist: allocation, tensor accessors, pybind11, " \
                     "CPython, libc math and memory, libstdc++, OpenMP, the CUDA runtime)"


def undefined_symbols(path: str, *, dynamic: bool = True) -> list[str]:
    """Demangled undefined symbols of a shared object (dynamic table) or an object file."""
    cmd = ["nm", "--undefined-only", "-C"] + (["-D"] if dynamic else []) + [path]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"nm failed on the built extension: {proc.stderr.strip()[:200]}")
    out = []
    for line in proc.stdout.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and len(parts[0]) == 1:
            out.append(parts[1].strip())
    return out


def defined_symbols(path: str) -> set[str]:
    """Demangled symbols an object file defines (for compile-only builds: one object calls into the other)."""
    proc = subprocess.run(["nm", "--defined-only", "-C", path], capture_output=True, text=True, timeout=60)
    out = set()
    for line in proc.stdout.splitlines():
        parts = line.strip().split(None, 2)
        if len(parts) == 3:
            out.add(parts[2].strip())
    return out


def raw_syscalls(path: str) -> int:
    """How many system-call instructions (syscall, sysenter, int $0x80, svc #0) the code sections hold."""
    proc = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"objdump failed on the built extension: {proc.stderr.strip()[:200]}")
    return sum(1 for line in proc.stdout.splitlines() if _SYSCALL_INSN.search(line + " "))


def check_binary(paths: list[str], *, dynamic: bool = True) -> SymbolReport:
    """Judge one extension's files (its .so, or its objects when the build is compile-only)."""
    rejections: list[str] = []
    library: list[str] = []
    labels: dict[str, list[str]] = {}
    count = 0
    # The objects of one compile-only build link into one .so: what one defines, the other may call.
    own = set().union(*(defined_symbols(p) for p in paths)) if not dynamic and len(paths) > 1 else set()
    for path in paths:
        syms = [s for s in undefined_symbols(path, dynamic=dynamic) if s not in own]
        count += len(syms)
        for sym in syms:
            verdict, why = classify_symbol(sym)
            short = qualified_name(sym)[:120]
            if verdict == "reject":
                rejections.append(f"the extension links {short}: {why}")
            elif verdict == "library":
                library.append(f"{short} ({why})")
            elif verdict == "label":
                labels.setdefault(why, []).append(short)
        n = raw_syscalls(path)
        if n:
            rejections.append(f"the extension's code holds {n} raw system-call instruction(s) (bypasses every "
                              "named-symbol rule: files, processes, sockets without a libc call)")
    lab = tuple(f"{k} ({', '.join(sorted(set(v))[:3])})" for k, v in sorted(labels.items()))
    return SymbolReport(tuple(dict.fromkeys(rejections)), tuple(dict.fromkeys(library)), lab, count)
