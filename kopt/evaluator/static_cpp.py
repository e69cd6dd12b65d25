"""The static gate's C++/CUDA rules: regexes over the kernel strings, with comments stripped and lines spliced.

Each rule names the hack it stops (docs/evaluator.md §1 catalogue rows, §5 attack table). They are a tripwire: a
name built at run time (pointer arithmetic, a token-pasted spelling of a libc call) gets past them, and the
sandbox, the symbol allowlist of the built .so and the judge outside the candidate's process are what hold. Three
things are caught here because nothing later sees them: what the preprocessor and assembler read at build time
(`#include` of files from elsewhere, `#embed`, `.incbin`, `__has_include` probing the filesystem), inline
assembly (raw system calls no symbol check sees), and the token-pasted spellings of those.
"""

from __future__ import annotations

import re

# A name not preceded by `.`, `->` or a namespace other than std or the global one: `x.clone()` and
# `at::clone(x)` are tensor methods, `fork()`, `::system`, `&::system`, `std::system(` are libc.
_FREE = r"(?:(?<![\w.:>])(?:std\s*)?::\s*|(?<![\w.:>]))"

CPP_REJECT: dict[str, str] = {
    r"\bstd\s*::\s*j?thread\b": "starts a C++ thread (work can escape the timed window; hack §1 row 6)",
    r"\bpthread_create\b": "starts a thread (work can escape the timed window; hack §1 row 6)",
    r"\bstd\s*::\s*async\b": "starts asynchronous work (can escape the timed window; hack §1 row 6)",
    _FREE + r"(?:(?:v?fork|clone3)\b|clone\s*\()": "forks the process (a child outlives the timeout kill and "
    "the timed window)",
    _FREE + r"(?:system|popen)\s*\(|(?:&\s*|(?<![\w:])::\s*|\bstd\s*::\s*)(?:system|popen)\b":
        "runs a shell command",
    _FREE + r"exec(?:l|lp|le|v|vp|vpe|ve)\b": "replaces the process with another program",
    _FREE + r"posix_spawnp?\b": "runs another program",
    r"\bdlopen\b|\bdlsym\b|\bdlmopen\b": "loads libraries at run time (code no symbol check of the .so sees)",
    _FREE + r"socket\s*\(": "opens a network socket (leaks data or fetches answers; §5 row 17)",
    r"\b(?:asm|__asm__|__asm)\b": "contains inline assembly (raw system calls and `.incbin` of files at build "
    "time that no symbol check sees; write CUDA C++ or intrinsics)",
    r"\bsyscall\b|\b__syscall\b": "makes raw system calls (bypasses the symbol check of the .so)",
    r"\b(?:secure_)?getenv\s*\(|\benviron\b": "reads the environment (API keys live there)",
    r"\bfopen\s*\(|\bstd\s*::\s*[io]?fstream\b": "opens files (candidates never need files)",
    r"\bPy(?:Run|Import|Eval)_\w+|\bpy(?:bind11)?\s*::\s*(?:exec|eval|module_?\s*::\s*import)\b":
        "reaches into the Python interpreter from C++ (can patch the harness; hack §1 row 8)",
}
CPP_WARN: dict[str, str] = {
    r"\bcudaStreamCreate\w*|\bgetStreamFromPool\b": "creates a CUDA stream (work can escape the timing events; hack §1 row 5)",
    r"\bcudaLimitPersistingL2CacheSize\b|\baccessPolicyWindow\b": "sets a persisting-L2 window (survives the cache flush; hack §1 row 15)",
    r"\b__float2half\w*|\b__half2?\b|\b__nv_bfloat16\b|\bwmma\b|\btf32\b": "uses fp16/bf16/TF32 inside an fp32 task (precision loss; hack §1 row 13)",
    r"\bcublas\w+|\bcudnn\w+": "calls cuBLAS/cuDNN (a library does the work)",
}
INCBIN = "embeds a file into the binary at build time (reads files from elsewhere; §5 row 16)"
# Pasted spellings of what only the gate can see (inline assembly, raw system calls, file embedding).
_PASTE_BANNED = re.compile(r"asm|incbin|syscall")
# Preprocessor directives that read files or probe the filesystem at build time.
DIRECTIVE_REJECT: dict[str, str] = {
    r"^[ \t]*#[ \t]*embed\b": "#embed reads a file into the source at build time (files from elsewhere; §5 row 16)",
    r"\b__has_include(?:_next)?\b": "__has_include probes the build machine's filesystem (an oracle for files "
    "from elsewhere)",
    r"^[ \t]*#[ \t]*include_next\b": "#include_next searches the include path beyond kopt's headers",
    r"^[ \t]*#[ \t]*import\b": "#import includes a file (like #include, without the header check)",
    r"^[ \t]*#[ \t]*pragma[ \t]+GCC[ \t]+dependency\b": "#pragma GCC dependency reads another file",
    r"\?\?[=/'()!<>\-]": "uses a trigraph (a spelling of # and other tokens that hides directives from review)",
}

# at::/torch:: names in C++ that only allocate or describe tensors; any other `at::name(` is a library op.
CPP_NON_COMPUTE = frozenset({
    "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like",
    "Tensor", "TensorOptions", "Scalar", "ScalarType", "IntArrayRef", "Device", "DeviceGuard", "device",
    "dtype", "from_blob", "scalar_type", "get_num_threads", "set_num_threads", "parallel_for",
    "indexing", "NoGradGuard", "InferenceMode", "arange", "tensor",
})
_CPP_OP = re.compile(r"\b(?:at|torch)\s*::\s*(?:(?:native|cuda|indexing)\s*::\s*)?([A-Za-z_]\w*)\s*\(")
_INCLUDE = re.compile(r"^[ \t]*#[ \t]*include\b[ \t]*(.*)$", re.MULTILINE)
# Comments, skipping string and character literals (a `//` inside "http://..." is not a comment).
_CPP_COMMENT = re.compile(r"(\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*')|//[^\n]*|/\*.*?\*/", re.DOTALL)
_STRING = re.compile(r"\"(?:\\.|[^\"\\\n])*\"")
CPP_MARKERS = ("#include", "torch::", "__global__", "at::", "{", ";", "#pragma", "#define")

# Headers a kernel may include: the C/C++ standard library, OpenMP, CPU intrinsics, torch, and the CUDA toolkit.
STD_HEADERS = frozenset("""
algorithm any array atomic barrier bit bitset cassert ccomplex cctype cerrno cfenv cfloat charconv chrono cinttypes
ciso646 climits clocale cmath compare complex concepts condition_variable coroutine csetjmp csignal cstdalign
cstdarg cstdbool cstddef cstdint cstdio cstdlib cstring ctgmath ctime cuchar cwchar cwctype deque exception
execution expected filesystem format forward_list functional future initializer_list iomanip ios iosfwd iostream
istream iterator latch limits list locale map mdspan memory memory_resource mutex new numbers numeric optional
ostream print queue random ranges ratio regex scoped_allocator semaphore set shared_mutex source_location span
sstream stack stacktrace stdexcept stop_token streambuf string string_view syncstream system_error thread tuple
type_traits typeindex typeinfo unordered_map unordered_set utility valarray variant vector version
assert.h complex.h ctype.h errno.h fenv.h float.h inttypes.h iso646.h limits.h locale.h math.h stdalign.h
stdarg.h stdbool.h stddef.h stdint.h stdio.h stdlib.h string.h tgmath.h time.h uchar.h wchar.h wctype.h
omp.h cpuid.h mm_malloc.h arm_neon.h arm_sve.h arm_fp16.h arm_bf16.h arm_acle.h
""".split())
# The C library's own POSIX/Linux headers: part of the toolchain, not code from elsewhere (what they declare,
# fork, exec, open, is judged by the name rules above and, past them, by the sandbox and the symbol check).
LIBC_HEADERS = frozenset("""
unistd.h fcntl.h dirent.h pthread.h sched.h signal.h setjmp.h poll.h netdb.h elf.h link.h dlfcn.h spawn.h
termios.h pwd.h grp.h glob.h fnmatch.h libgen.h strings.h syslog.h utime.h wait.h endian.h byteswap.h malloc.h
alloca.h execinfo.h features.h semaphore.h mqueue.h aio.h ifaddrs.h err.h error.h getopt.h langinfo.h iconv.h
""".split())
LIBC_PREFIXES = ("sys/", "arpa/", "netinet/", "net/", "linux/", "bits/", "asm/", "asm-generic/", "gnu/")
_INTRIN = re.compile(r"\w*intrin\.h")  # immintrin.h, xmmintrin.h, x86intrin.h, avx512fintrin.h ...
TORCH_CUDA_PREFIXES = ("torch/", "ATen/", "c10/", "caffe2/", "pybind11/", "cuda/", "cub/", "thrust/", "cute/",
                       "cutlass/", "cooperative_groups/", "nvtx3/", "crt/", "nv/", "cuda_fp8", "cuda_fp16",
                       "cuda_bf16", "cuda_runtime", "cuda_", "cublas", "cudnn", "curand", "cufft", "cusparse",
                       "cusolver", "nvToolsExt", "nvrtc", "sm_", "device_", "vector_", "math_", "texture_",
                       "surface_", "builtin_types", "host_defines", "driver_types", "library_types",
                       "channel_descriptor", "cudaTypedefs")
TORCH_CUDA_HEADERS = frozenset({"cuda.h", "mma.h", "cooperative_groups.h", "cuComplex.h", "cuda_pipeline.h",
                                "cuda_awbarrier.h", "math_constants.h", "cudaProfiler.h"})


def splice(text: str) -> str:
    """What the preprocessor sees first: backslash-newlines joined and `%:` (the digraph for #) spelled `#`."""
    return re.sub(r"\\[ \t]*\r?\n", "", text).replace("%:", "#")


def strip_comments(text: str) -> str:
    return _CPP_COMMENT.sub(lambda m: m.group(1) or " ", splice(text))


def looks_like_cpp(text: str) -> bool:
    return any(m in text for m in CPP_MARKERS)


def header_allowed(path: str) -> bool:
    name = path.strip()
    return (name in STD_HEADERS or name in LIBC_HEADERS or name in TORCH_CUDA_HEADERS
            or bool(_INTRIN.fullmatch(name)) or name.startswith(TORCH_CUDA_PREFIXES + LIBC_PREFIXES))


def check_includes(text: str, add, computed: bool = True) -> None:
    """Reject absolute/'..' include paths; with `computed` (C++ strings), also `#include MACRO` and headers from
    outside the standard library, torch and CUDA.

    The whole-source pass uses computed=False: a Python comment such as `# include the header` is not C++.
    """
    for m in _INCLUDE.finditer(text):
        arg = m.group(1).strip()
        pm = re.match(r'^[<"]([^>"]*)[>"]', arg)
        if not pm:
            if computed:
                add(f"computed #include {arg[:60]!r}: include headers by a literal <name> or \"name\" (a macro "
                    "can name any file on the machine)")
            continue
        path = pm.group(1).strip()
        if path.startswith(("/", "~")) or ".." in path.replace("\\", "/").split("/"):
            add(f"#include of {path!r}: absolute or '..' include paths can read any file on the machine "
                "(leaks it through compiler errors; §5 row 16)")
        elif computed and not header_allowed(path):
            add(f"#include of {path!r}: only the C/C++ standard library, the C library's system headers, OpenMP, "
                "CPU intrinsics, torch and CUDA headers are available (any other header is code or a file from "
                "elsewhere on the machine)")


def _paste_macros(code: str) -> tuple[set[str], dict[str, str]]:
    pasting, objects, functions = set(), {}, {}
    for m in re.finditer(r"^[ \t]*#[ \t]*define[ \t]+(\w+)(\()?([^\n]*)$", code, re.MULTILINE):
        name, fn, body = m.group(1), m.group(2), m.group(3)
        if "##" in body:
            pasting.add(name)
        elif fn:
            functions[name] = body
        else:
            objects[name] = body.strip()
    grew = True
    while grew:  # `#define X(a, b) CAT(a, b)` pastes too
        grew = False
        for name, body in functions.items():
            if name not in pasting and any(re.search(rf"\b{p}\b", body) for p in pasting):
                pasting.add(name)
                grew = True
    return pasting, objects


def _pasted_spellings(code: str) -> list[str]:
    """What `a ## b` macros can build: each invocation's arguments joined, object-like macros expanded."""
    pasting, objects = _paste_macros(code)
    out = []
    for name in pasting:
        for m in re.finditer(rf"\b{name}\s*\(([^;{{}}]*?)\)", code):
            args = m.group(1)
            for _ in range(5):  # a few levels of `#define A as` / `#define B m`
                args = re.sub(r"\b\w+\b", lambda t: objects.get(t.group(0), t.group(0)), args)
            joined = re.sub(r"\W", "", re.sub(rf"\b(?:{'|'.join(map(re.escape, pasting))})\b", "", args))
            if _PASTE_BANNED.search(joined):
                out.append(joined)
    return out


def scan_cpp(text: str, rejections: list[str], warnings: list[str]) -> None:
    raw = strip_comments(text)
    # The rules read code, not messages: "coordinate system (x, y)" in a TORCH_CHECK is not a shell. A string
    # literal only matters to the assembler (.incbin), and inline assembly is rejected on its own.
    code = _STRING.sub('""', raw)
    if re.search(r"\.incbin\b", raw):
        rejections.append(f"C++ source uses `.incbin`: {INCBIN}")
    for pattern, reason in CPP_REJECT.items():
        m = re.search(pattern, code)
        if m:
            rejections.append(f"C++ source uses `{m.group(0).strip()}`: {reason}")
    for pattern, reason in DIRECTIVE_REJECT.items():
        m = re.search(pattern, raw if "?" in pattern else code, re.MULTILINE)
        if m:
            rejections.append(f"C++ source uses `{m.group(0).strip()}`: {reason}")
    for spelled in _pasted_spellings(code):
        rejections.append(f"C++ source builds `{spelled}` by token pasting (##): a hidden spelling of inline "
                          "assembly or a raw system call")
    for pattern, reason in CPP_WARN.items():
        m = re.search(pattern, code)
        if m:
            warnings.append(f"C++ source uses `{m.group(0).strip()}`: {reason}")
    ops = sorted({m.group(1) for m in _CPP_OP.finditer(code)
                  if m.group(1) not in CPP_NON_COMPUTE and not m.group(1).startswith("k")})
    if ops:
        warnings.append("C++ source calls library ops " + ", ".join(f"at::{o}" for o in ops[:6])
                        + ": the library, not the candidate's kernel, does that work")
