"""symbols.py on real binaries: small shared objects built with the real compiler, read with the real nm/objdump.

The torch-free ones compile in well under a second each; the torch extensions (an honest kernel and one that
calls at::gelu from C++) go through the whole Builder in tests/test_build.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kopt.evaluator import symbols

pytestmark = pytest.mark.skipif(not (shutil.which("g++") and shutil.which("nm") and shutil.which("objdump")),
                                reason="needs g++, nm and objdump")


def _so(tmp_path: Path, name: str, code: str) -> str:
    src = tmp_path / f"{name}.cpp"
    src.write_text(code)
    out = tmp_path / f"{name}.so"
    subprocess.run(["g++", "-O2", "-shared", "-fPIC", str(src), "-o", str(out), "-ldl"], check=True)
    return str(out)


HONEST = """
#include <cmath>
#include <cstring>
#include <vector>
extern "C" void gelu(const float* x, float* y, long n) {
    #pragma omp parallel for
    for (long i = 0; i < n; ++i) y[i] = 0.5f * x[i] * (1.0f + std::tanh(0.79788456f * x[i]));
    std::vector<float> tmp(n);
    std::memcpy(tmp.data(), y, n * sizeof(float));
}
"""

DLSYM = """
#include <dlfcn.h>
extern "C" void* find() { return dlsym(RTLD_DEFAULT, "system"); }
"""

SYSTEM_INIT = """
#include <cstdlib>
// a static initialiser that takes ::system by address: no call to system appears in any function body
static int (*volatile shell)(const char*) = &::system;
static int ran = shell ? 0 : 1;
extern "C" int value() { return ran; }
"""

RAW_SYSCALL = """
extern "C" long my_getpid() {
    long ret;
    asm volatile ("syscall" : "=a"(ret) : "a"(39) : "rcx", "r11", "memory");
    return ret;
}
"""

# The spelling the source gate cannot see: the name is assembled by the preprocessor.
PASTED_THREAD = """
#include <pthread.h>
#define CAT(a, b) a##b
static void* warm(void*) { return nullptr; }
extern "C" void start() { pthread_t t; CAT(pthread_, create)(&t, nullptr, warm, nullptr); }
"""

ASYNC_TASK = """
#include <future>
extern "C" int later() { return std::async(std::launch::async, [] { return 1; }).get(); }
"""

SIGNAL_TIMER = """
#include <csignal>
#include <unistd.h>
static void tick(int) {}
extern "C" void arm() { std::signal(SIGALRM, tick); ualarm(500, 500); }
"""

LOCKS_AND_ONCE = """
#include <mutex>
static std::mutex m;
static std::once_flag once;
static int table = 0;
extern "C" int get() { std::call_once(once, [] { table = 1; }); std::lock_guard<std::mutex> g(m); return table; }
"""

ATEN_NAMES = """
namespace at { namespace _ops {
struct gelu { static void call(int); };
struct empty_like { static void call(int); };
} namespace cpu { void gelu_(int); } }
extern "C" void f(int x) { at::_ops::empty_like::call(x); at::_ops::gelu::call(x); at::cpu::gelu_(x); }
"""


def test_honest_code_is_clean(tmp_path):
    rep = symbols.check_binary([_so(tmp_path, "honest", HONEST)])
    assert rep.ok and not rep.library, (rep.rejections, rep.library)
    assert rep.symbols > 0


@pytest.mark.parametrize("name,code,expect", [
    ("dlsym", DLSYM, "dlsym"),
    ("system_init", SYSTEM_INIT, "system"),
    ("raw_syscall", RAW_SYSCALL, "raw system-call instruction"),
    ("pasted_thread", PASTED_THREAD, "starts a thread"),
    ("async_task", ASYNC_TASK, "starts a thread"),
    ("signal_timer", SIGNAL_TIMER, "signal handler"),
])
def test_hacks_are_rejected(tmp_path, name, code, expect):
    rep = symbols.check_binary([_so(tmp_path, name, code)])
    assert not rep.ok
    assert any(expect in r for r in rep.rejections), rep.rejections


def test_locks_and_once_are_not_thread_creation(tmp_path):
    rep = symbols.check_binary([_so(tmp_path, "locks", LOCKS_AND_ONCE)])
    assert rep.ok, rep.rejections


def test_aten_compute_is_library_and_allocation_is_not(tmp_path):
    rep = symbols.check_binary([_so(tmp_path, "aten", ATEN_NAMES)])
    assert rep.ok, rep.rejections
    assert any("gelu" in x and "dispatcher" in x for x in rep.library)
    assert any("at::cpu::gelu_" in x for x in rep.library)
    assert not any("empty_like" in x for x in rep.library)


@pytest.mark.parametrize("sym,verdict", [
    ("at::_ops::gelu::call(at::Tensor const&, c10::basic_string_view<char>)", "library"),
    ("at::_ops::add_Tensor::redispatch(c10::DispatchKeySet, at::Tensor const&)", "library"),
    ("at::_ops::empty_like::call(at::Tensor const&)", "allow"),
    ("at::_ops::to_dtype_layout::call(at::Tensor const&)", "allow"),
    ("at::native::gelu(at::Tensor const&)", "library"),
    ("float* at::TensorBase::data_ptr<float>() const", "allow"),
    ("c10::detail::torchCheckFail(char const*, char const*, unsigned int, char const*)", "allow"),
    ("std::basic_ostream<char, std::char_traits<char> >& std::operator<< <std::char_traits<char> >("
     "std::basic_ostream<char, std::char_traits<char> >&, char const*)@GLIBCXX_3.4", "allow"),
    ("GOMP_parallel@GOMP_4.0", "allow"),
    ("cudaLaunchKernel", "allow"),
    ("cublasSgemm_v2", "label"),
    ("expf@GLIBC_2.27", "allow"),
    ("dlopen@GLIBC_2.34", "reject"),
    ("popen", "reject"),
    ("connect", "reject"),
    ("process_vm_readv", "reject"),
    ("mprotect", "reject"),
    ("fopen64", "reject"),
    ("getenv", "reject"),
    ("torch::Library::_def(c10::FunctionSchema&&, c10::OperatorName*)", "reject"),
    ("c10::RegisterOperators::checkSchemaAndRegisterOp_(c10::RegisterOperators::Options&&)", "reject"),
    ("c10::Dispatcher::findSchemaOrThrow(char const*, char const*)", "library"),
    ("pthread_create@GLIBC_2.34", "reject"),
    ("thrd_create", "reject"),
    ("std::thread::_M_start_thread(std::unique_ptr<std::thread::_State, "
     "std::default_delete<std::thread::_State> >, void (*)())@GLIBCXX_3.4.22", "reject"),
    ("timer_create", "reject"),
    ("sigaction", "reject"),
    ("pthread_mutex_lock@GLIBC_2.2.5", "allow"),
    ("pthread_once", "allow"),
    ("some_unknown_function", "reject"),
])
def test_symbol_rules(sym, verdict):
    assert symbols.classify_symbol(sym)[0] == verdict
