"""Flag policy for a candidate's load_inline build arguments: honour, drop with a warning, or reject with a reason.

kopt owns the build (docs/evaluator.md), but the flags an honest kernel needs are honoured, and a harmless one is
dropped with a warning rather than costing the candidate: real models copy KernelBench's one-shot example, which
writes `extra_cflags=[""]`, `extra_ldflags=[""]`, and a kernel that calls cuBLAS writes `-lcublas`.

Three outcomes per flag:
- kept: flags honest kernels need and that cannot bring in anything from elsewhere (optimisation levels, ISA,
  OpenMP, C++ standard, macros with plain values, the CUDA libraries torch ships or links);
- dropped with a warning: empty strings, flags kopt sets itself (-fPIC, -shared, the GPU architecture), noise
  (-g, -Wall, -v), numerics-changing flags (fast math) unless the user opted in, and any flag not on a list;
- rejected: flags that bring code or files from elsewhere (library and include search paths, linker pass-throughs,
  object files, forced includes, compiler plugins, spec files, response files, another compiler), and flags that
  could inject commands into the build (torch's build file runs each flag through a shell).

The rule for unknown flags: dropped with a warning, never kept (a flag kopt has not reviewed is not passed to the
compiler, so a new spelling of a plugin or wrapper option cannot slip through), and never rejected unless it names
a path or a file (then it brings files from elsewhere). Dropping costs an honest candidate at most its build (it
then fails to compile, with the warning explaining why); rejecting would cost it for a flag that was noise.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

FLAG_OPTIONS = ("extra_cflags", "extra_cuda_cflags", "extra_ldflags")


@dataclass(frozen=True)
class FlagVerdict:
    kept: tuple[str, ...]
    warnings: tuple[str, ...]
    rejections: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.rejections


# Libraries torch ships or links: a kernel that calls them links against the same copy torch already loads.
CUDA_LIBS = frozenset({"cublas", "cublasLt", "cudart", "cudnn", "curand", "cufft", "cusparse", "cusolver",
                       "cuda", "nvrtc", "nvToolsExt"})
# The C/C++ runtime and OpenMP: already in every process that loads torch.
HOST_LIBS = frozenset({"gomp", "m", "pthread", "stdc++", "c10", "torch", "torch_cpu", "torch_python"})
CUDA_TORCH_LIBS = frozenset({"c10_cuda", "torch_cuda"})

# Flags that change floating-point results (the judge's tolerance is for honest rounding, not for these).
FAST_MATH = frozenset({"-ffast-math", "--use_fast_math", "-use_fast_math", "-ffp-contract=fast", "-Ofast",
                       "-funsafe-math-optimizations", "-fassociative-math", "-freciprocal-math",
                       "-ffinite-math-only", "-fno-signed-zeros", "--ftz=true", "-ftz=true", "--prec-div=false",
                       "-prec-div=false", "--prec-sqrt=false", "-prec-sqrt=false"})

# Honoured as written (exact spellings).
KEEP_EXACT = frozenset({
    "-O0", "-O1", "-O2", "-O3", "-Os", "-march=native", "-mtune=native", "-mcpu=native", "-funroll-loops",
    "-funroll-all-loops", "-fopenmp", "-fopenmp-simd", "-pthread", "-fno-strict-aliasing", "-ftree-vectorize",
    "-fno-math-errno", "-fno-trapping-math", "-fomit-frame-pointer", "-finline-functions", "-fno-exceptions",
    "-DNDEBUG", "-lineinfo", "--generate-line-info", "--expt-relaxed-constexpr", "-expt-relaxed-constexpr",
    "--expt-extended-lambda", "-expt-extended-lambda", "--extended-lambda", "-extended-lambda",
    "--restrict", "-restrict", "--fmad=true", "--fmad=false", "-fmad=true", "-fmad=false",
    "--prec-div=true", "--prec-sqrt=true", "--ftz=false", "-ftz=false", "-fno-fast-math",
})
# Honoured by pattern: C++ standard, x86/arm ISA extensions, register caps, macros with plain values.
KEEP_PATTERNS = (
    re.compile(r"--?std=(?:c|gnu)\+\+(?:11|14|17|20|23|1[147z]|2a|2b)"),
    re.compile(r"-m(?:avx\w*|fma|fma4|sse\w*|ssse3|f16c|bmi2?|popcnt|lzcnt|amx[\w-]*|prefer-vector-width=\d+)"),
    re.compile(r"-m(?:arch|tune|cpu)=[\w.+-]+"),
    re.compile(r"-?-maxrregcount[= ]?\d+"),
    re.compile(r"-[DU][A-Za-z_]\w*(?:=[\w.+-]*)?"),
)
# Dropped with a warning, with the reason kopt gives.
DROP_PREFIXES: dict[str, str] = {
    "-fPIC": "kopt sets it", "-shared": "kopt sets it", "-fpic": "kopt sets it",
    "-arch": "kopt builds for the device's own GPU architecture", "--gpu-architecture": "kopt builds for the "
    "device's own GPU architecture", "-gencode": "kopt builds for the device's own GPU architecture",
    "--generate-code": "kopt builds for the device's own GPU architecture", "-code": "kopt builds for the "
    "device's own GPU architecture",
    "-g": "debug information only slows the build", "-G": "device debug builds disable optimisation",
    "-W": "warning flags change nothing in the kernel", "-w": "warning flags change nothing in the kernel",
    "--Werror": "warning flags change nothing in the kernel", "-v": "verbose output changes nothing",
    "--resource-usage": "verbose output changes nothing", "-res-usage": "verbose output changes nothing",
    "-x": "kopt decides each source's language", "--default-stream": "kopt decides the stream semantics",
    "--keep": "kopt keeps no intermediate files", "-save-temps": "kopt keeps no intermediate files",
}
# Rejected: each brings code or files from elsewhere into the build (or runs another program).
REJECT_PREFIXES: dict[str, str] = {
    "-L": "adds a library search path (links code from elsewhere on the machine)",
    "--library-path": "adds a library search path (links code from elsewhere on the machine)",
    "-Wl,": "passes options to the linker (can link or load arbitrary files)",
    "-Xlinker": "passes options to the linker (can link or load arbitrary files)",
    "--linker-options": "passes options to the linker (can link or load arbitrary files)",
    "-Xnvlink": "passes options to the device linker (can link arbitrary files)",
    "--nvlink-options": "passes options to the device linker (can link arbitrary files)",
    "-Xarchive": "passes options to the archiver",
    "-Wa,": "passes options to the assembler (can assemble in files from elsewhere)",
    "-Xassembler": "passes options to the assembler (can assemble in files from elsewhere)",
    "-Wp,": "passes options to the preprocessor (forced includes, include paths)",
    "-Xpreprocessor": "passes options to the preprocessor (forced includes, include paths)",
    "-Xclang": "passes options to clang's front end (plugins: -load)",
    "-I": "adds an include path (compiles headers from elsewhere on the machine)",
    "--include-path": "adds an include path (compiles headers from elsewhere on the machine)",
    "-i": "adds an include path or forces an include (-include, -isystem, -imacros: files from elsewhere)",
    "--pre-include": "forces an include (compiles a file from elsewhere)",
    "--system-include": "adds an include path (compiles headers from elsewhere on the machine)",
    "-B": "changes where the compiler finds its own programs (runs another program)",
    "--sysroot": "changes the system root (headers and libraries from elsewhere)",
    "--gcc-toolchain": "changes the toolchain (headers, libraries and programs from elsewhere)",
    "-fplugin": "loads a compiler plugin (runs arbitrary code in the compiler)",
    "-fpass-plugin": "loads a compiler plugin (runs arbitrary code in the compiler)",
    "-load": "loads a compiler plugin (runs arbitrary code in the compiler)",
    "-specs": "reads a spec file (rewrites the compiler's commands)",
    "--specs": "reads a spec file (rewrites the compiler's commands)",
    "-wrapper": "runs the compiler's programs under another program",
    "@": "reads more flags from a file (flags kopt cannot see)",
    "--options-file": "reads more flags from a file (flags kopt cannot see)",
    "-optf": "reads more flags from a file (flags kopt cannot see)",
    "--compiler-bindir": "uses another host compiler (runs another program)",
    "-ccbin": "uses another host compiler (runs another program)",
    "-o": "names the output file (kopt owns the build's outputs)",
    "--output-file": "names the output file (kopt owns the build's outputs)",
    "--output-directory": "names the output directory (kopt owns the build's outputs)",
    "-odir": "names the output directory (kopt owns the build's outputs)",
    "--keep-dir": "names a directory to write into (kopt owns the build's outputs)",
    "-MF": "writes a file (kopt owns the build's outputs)",
    "-run": "runs the compiled program at build time",
    "--run": "runs the compiled program at build time",
    "--library": "",  # the long spelling of -l, judged like -l (handled before this table)
}
# Options whose value is the next argument (`-l cublas`, `-Xcompiler -fopenmp`, `-I /x`).
TAKES_VALUE = frozenset({"-l", "-L", "-I", "-D", "-U", "-include", "-isystem", "-imacros", "-iquote",
                         "-idirafter", "-Xcompiler", "--compiler-options", "-Xptxas", "--ptxas-options",
                         "-Xlinker", "--linker-options", "-Xnvlink", "-Xarchive", "-ccbin", "--compiler-bindir",
                         "-o", "-MF", "-x", "-arch", "-gencode", "-code", "-specs", "-B", "-maxrregcount",
                         "--maxrregcount", "-Xclang", "-Xassembler", "-Xpreprocessor", "-load", "-optf",
                         "--options-file", "--default-stream", "-odir", "--keep-dir", "-wrapper"})
# Pass-throughs to the host compiler and ptxas: their inner flags are judged as C flags.
PASS_THROUGH = ("-Xcompiler", "--compiler-options", "-Xptxas", "--ptxas-options")
PTXAS_KEEP = re.compile(r"-O[0-3]|--allow-expensive-optimizations(?:=true)?")

_FILE_SUFFIX = re.compile(r"\.(?:so(?:\.\d+)*|a|o|lo|obj|dylib|dll|c|cc|cpp|cxx|cu|cuh|h|hh|hpp|ptx|cubin|fatbin"
                          r"|s|S|ld|lds|py|inc|bin)$")
# torch writes the flags into a ninja file whose commands run through a shell: these inject commands or rules.
_SHELL_META = re.compile(r"[;|&`$<>()\n\r\x00-\x1f\x7f*?!{}\\\"']")


def _split(option: str, flags, rejections: list[str]) -> list[str]:
    if flags is None:
        return []
    items = [flags] if isinstance(flags, str) else list(flags)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            rejections.append(f"{option}: {item!r} is not a string (kopt must see every flag literally)")
            continue
        if re.search(r"[\x00-\x1f\x7f]", item):
            rejections.append(f"{option}: {item!r} holds a control character (can inject commands or rules into "
                              "the build file)")
            continue
        try:
            parts = shlex.split(item)
        except ValueError:
            rejections.append(f"{option}: {item!r} has unbalanced quotes (kopt cannot tell what the compiler sees)")
            continue
        out.extend(parts if parts else [""])
    return out


def _lib(name: str, option: str, target: str, kept: list[str], warnings: list[str], rejections: list[str]) -> None:
    flag = f"-l{name}"
    if name in HOST_LIBS:
        kept.append(flag)
    elif name in CUDA_LIBS or name in CUDA_TORCH_LIBS:
        if target == "cuda":
            kept.append(flag)
        else:
            warnings.append(f"{option}: {flag} dropped: the cpu target links no CUDA libraries")
    elif not name or _FILE_SUFFIX.search(name) or "/" in name or name.startswith(":"):
        rejections.append(f"{option}: {flag!r} names a library file (links code from elsewhere on the machine)")
    else:
        rejections.append(f"{option}: {flag!r} links lib{name} from the machine's library path: code from "
                          "elsewhere, not in the candidate's source (kopt links only the CUDA libraries torch "
                          "ships, OpenMP and the C/C++ runtime)")


def _one(flag: str, option: str, target: str, allow_fast_math: bool,
         kept: list[str], warnings: list[str], rejections: list[str]) -> None:
    if flag == "":
        warnings.append(f"{option}: empty flag dropped")
        return
    if _SHELL_META.search(flag):
        rejections.append(f"{option}: {flag!r} holds a shell metacharacter (torch's build runs flags through a "
                          "shell: command injection)")
        return
    if flag.startswith("--library="):
        flag = "-l" + flag.split("=", 1)[1]
    if flag.startswith("-l") and not flag.startswith(("-load", "-lineinfo")):
        _lib(flag[2:], option, target, kept, warnings, rejections)
        return
    if flag in FAST_MATH:
        if allow_fast_math:
            kept.append(flag)
        else:
            warnings.append(f"{option}: {flag} dropped: it changes floating-point results (pass kopt's fast-math "
                            "option to allow it)")
        return
    for p in PASS_THROUGH:
        if flag == p or flag.startswith(p + "="):
            inner = flag.split("=", 1)[1] if "=" in flag else ""
            sub_kept: list[str] = []
            for f in (x for x in inner.split(",")):
                if p in ("-Xptxas", "--ptxas-options"):
                    if PTXAS_KEEP.fullmatch(f):
                        sub_kept.append(f)
                    elif f:
                        warnings.append(f"{option}: ptxas flag {f} dropped (not on kopt's list)")
                else:
                    _one(f, f"{option} {p}", target, allow_fast_math, sub_kept, warnings, rejections)
            if sub_kept:
                kept.append(f"{p}={','.join(sub_kept)}")
            return
    for prefix, reason in REJECT_PREFIXES.items():
        if reason and flag.startswith(prefix):
            rejections.append(f"{option}: {flag!r} {reason}")
            return
    if "/" in flag or "\\" in flag or flag.startswith("~") or _FILE_SUFFIX.search(flag):
        rejections.append(f"{option}: {flag!r} names a path or a file (brings files from elsewhere into the build)")
        return
    if flag in KEEP_EXACT or any(p.fullmatch(flag) for p in KEEP_PATTERNS):
        kept.append(flag)
        return
    if flag.startswith("-D") or flag.startswith("-U"):
        rejections.append(f"{option}: {flag!r} defines a macro with a value beyond letters, digits and . + - "
                          "(a quoted path can be included as a computed #include)")
        return
    for prefix, reason in DROP_PREFIXES.items():
        if flag == prefix or flag.startswith(prefix):
            warnings.append(f"{option}: {flag} dropped: {reason}")
            return
    if not flag.startswith("-"):
        warnings.append(f"{option}: {flag} dropped: not a flag (kopt passes the compiler no inputs of its own)")
        return
    warnings.append(f"{option}: {flag} dropped: not on kopt's list of honoured flags")


def classify(option: str, flags: Sequence[str] | str | None, *, target: str,
             allow_fast_math: bool = False) -> FlagVerdict:
    """Judge one load_inline build argument. `option` is the keyword (extra_cflags, extra_cuda_cflags,
    extra_ldflags, extra_include_paths, or another load_inline keyword); `flags` its literal value."""
    kept: list[str] = []
    warnings: list[str] = []
    rejections: list[str] = []
    if option == "extra_include_paths":
        for p in [flags] if isinstance(flags, str) else list(flags or ()):
            if p == "":
                warnings.append("extra_include_paths: empty path dropped")
            else:
                rejections.append(f"extra_include_paths: {p!r} adds an include path (compiles headers from "
                                  "elsewhere on the machine)")
        return FlagVerdict((), tuple(warnings), tuple(rejections))
    if option == "build_directory":
        if flags:
            rejections.append(f"build_directory={flags!r}: kopt owns the build directories (can overwrite "
                              "another candidate's build)")
        return FlagVerdict((), (), tuple(rejections))
    if option not in FLAG_OPTIONS:
        if flags:
            warnings.append(f"load_inline {option}={flags!r} dropped: kopt sets it")
        return FlagVerdict((), tuple(warnings), ())
    tokens = _split(option, flags, rejections)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in TAKES_VALUE and i + 1 < len(tokens):
            nxt = tokens[i + 1]
            i += 2
            if tok in PASS_THROUGH:
                tok = f"{tok}={nxt}"
            elif tok in ("-l", "-D", "-U", "-I", "-L", "-B"):
                tok = tok + nxt
            else:
                tok = f"{tok}={nxt}" if tok.startswith("--") else f"{tok} {nxt}"
                if tok.split(" ")[0] in ("-maxrregcount",):
                    tok = f"-maxrregcount={nxt}"
        else:
            i += 1
        if option == "extra_cuda_cflags" and target == "cpu" and tok:
            warnings.append(f"{option}: {tok} dropped: the cpu target compiles no CUDA")
            continue
        _one(tok, option, target, allow_fast_math, kept, warnings, rejections)
    return FlagVerdict(tuple(kept), tuple(dict.fromkeys(warnings)), tuple(dict.fromkeys(rejections)))
