"""The call loop of a child session (candidate ModelNew, or the trusted reference's Model for timing).

Both kinds of session run exactly this code, so both pay the same per-call overhead. Order matters: every
function and object used here is bound before the candidate is imported (a candidate that patches names it
can reach changes nothing the parent relies on: the parent clocks, hashes and judges). Per call:

- read the call's inputs (raw bytes; dtype and shape from the header) into fresh tensors on the device;
- run forward under no_grad, inside a TorchDispatchMode that counts non-view, non-allocation torch ops
  (entered on every Python thread started after the harness, from construction to the last call);
- hash outputs AND inputs after the call (protocol.digest, every byte read) inside the call, before `done`;
- keep the raw bytes for a later `reveal`; the parent recomputes the hash and judges them.

Ghost calls NaN-fill what the extension returns and every tensor argument the extension wrote (an honest
out-parameter kernel: Python allocates, C++ fills, returns nothing) so an output that is still right was
not computed by the extension. Failures go out as closed codes (protocol.FAIL_CODES) with a line number in
the candidate and an exception name from a closed set; the parent writes every sentence.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import sys
import threading
import time
import traceback

from . import protocol

_perf_ns = time.perf_counter_ns
_string_at = ctypes.string_at
_memmove, _cast, _c_char_p, _c_void_p = ctypes.memmove, ctypes.cast, ctypes.c_char_p, ctypes.c_void_p
_write_frame = protocol.write_frame
_read_exact = protocol.read_exact
_digest = protocol.digest
_ALLOC_OPS = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach",
                        "alias", "lift_fresh", "lift_fresh_copy", "_local_scalar_dense", "set_", "resize_"})


class _State:
    ext_calls = 0
    ops = 0
    counting = False
    ghost = False


class _Failure(Exception):
    def __init__(self, code: str, exc: BaseException | None = None, index: int = 0, path: str = ""):
        super().__init__(code)
        self.code, self.index = code, index
        self.exc = _exc_name(exc) if exc is not None else ""
        self.line = _line_in(exc, path) if exc is not None else 0


def _exc_name(exc: BaseException) -> str:
    name = type(exc).__name__
    return name if name in protocol.EXC_NAMES else "Exception"


def _line_in(exc: BaseException, path: str) -> int:
    if isinstance(exc, SyntaxError) and exc.filename == path and isinstance(exc.lineno, int):
        return max(0, exc.lineno)
    try:
        frames = traceback.extract_tb(exc.__traceback__)
    except Exception:  # noqa: BLE001 - a hostile exception object: no line
        return 0
    for f in reversed(frames):
        if f.filename == path and isinstance(f.lineno, int):
            return f.lineno
    return 0


def _dtype(torch, name: str):
    return getattr(torch, name)


def _dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


def _raw(t) -> bytes:
    """Every byte of a tensor, read through its contiguous CPU copy (the same bytes the parent hashes)."""
    c = t.detach().contiguous().cpu() if t.device.type != "cpu" or not t.is_contiguous() else t.detach()
    n = c.numel() * c.element_size()
    return _string_at(c.data_ptr(), n) if n else b""


def _meta(t) -> dict:
    return {"dtype": _dtype_name(t), "shape": list(t.shape)}


def _call_args(torch, metas: list[dict], payload: bytes, device: str, bufs: dict) -> list:
    """A call's arguments, in the same buffers every call (per position, dtype, shape), refilled: a cache keyed
    on the data pointer meets new content at an old address (hack #9). On the CPU the bytes go in with one
    memmove on this thread: torch's copy_ would wake its thread pool, which costs milliseconds of noise
    inside kopt's interval on a VM whose other vCPUs are idle."""
    out, off = [], 0
    base = _cast(_c_char_p(payload), _c_void_p).value if payload else 0
    for i, m in enumerate(metas):
        if m.get("kind") == "value":
            out.append(m["value"])
            continue
        n = protocol.nbytes(m)
        if off + n > len(payload):
            raise protocol.ProtocolError("a call's payload shorter than its tensors")
        shape = tuple(m["shape"])
        key = (i, m["dtype"], shape)
        buf = bufs.get(key)
        if buf is None:
            buf = bufs[key] = torch.empty(shape, dtype=_dtype(torch, m["dtype"]), device=device)
        if n and device == "cpu":
            _memmove(buf.data_ptr(), base + off, n)
        elif n:
            buf.copy_(torch.frombuffer(bytearray(payload[off:off + n]), dtype=buf.dtype).reshape(shape))
        off += n
        out.append(buf)
    return out


def _tensors_from(torch, metas: list[dict], payload: bytes, device: str) -> list:
    out, off = [], 0
    for m in metas:
        if m.get("kind") == "value":
            out.append(m["value"])
            continue
        n = protocol.nbytes(m)
        buf = bytearray(payload[off:off + n])
        off += n
        dt = _dtype(torch, m["dtype"])
        t = torch.frombuffer(buf, dtype=dt) if n else torch.empty(0, dtype=dt)
        t = t.reshape(m["shape"])
        out.append(t.to(device) if device != "cpu" else t)
    return out


def _llc_bytes() -> int:
    try:
        raw = open("/sys/devices/system/cpu/cpu0/cache/index3/size").read().strip().upper()
        return int(raw.rstrip("KMG")) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(raw[-1], 1)
    except (OSError, ValueError, IndexError):
        return 64 << 20


class _Flusher:
    """CPU: write an LLC-sized buffer, capped at 32 MiB: sysfs reports a whole socket's L3 (300 MiB on this
    kind of VM), while a core sees only its own slice (<= 32 MiB on current parts), and writing 600 MiB cost
    100 ms per call. CUDA: reset persisting L2 lines, then write 2x L2 (>= 256 MB).
    A CUDA flush that cannot be set up is a setup failure (the parent treats it as fatal), never skipped."""

    def __init__(self, torch, device: str):
        self.torch, self.device, self.val = torch, device, 0.0
        if device == "cuda":
            l2 = torch.cuda.get_device_properties(0).L2_cache_size or (50 << 20)
            self.buf = torch.empty(max(2 * l2, 256 << 20) // 4, dtype=torch.float32, device="cuda")
            rt = ctypes.CDLL("libcudart.so")
            self.reset = rt.cudaCtxResetPersistingL2Cache
            set_limit = rt.cudaDeviceSetLimit
            if set_limit(ctypes.c_int(0x06), ctypes.c_size_t(0)) != 0:  # cudaLimitPersistingL2CacheSize
                raise RuntimeError("persisting L2 limit")
        else:
            self.buf = torch.empty(min(max(_llc_bytes(), 8 << 20), 32 << 20) // 4, dtype=torch.float32)
            self.reset = None

    def __call__(self) -> None:
        self.val += 1.0
        if self.reset is not None and self.reset() != 0:
            raise RuntimeError("persisting L2 reset")
        self.buf.fill_(self.val)
        if self.device == "cuda":
            self.torch.cuda.synchronize()


def _ghost_fill(torch, v):
    if isinstance(v, torch.Tensor):
        if v.is_floating_point() or v.is_complex():
            v.fill_(float("nan"))
        elif v.dtype == torch.bool:
            v.logical_not_()
        else:
            v.fill_(-1234567)
    elif isinstance(v, (tuple, list)):
        for x in v:
            _ghost_fill(torch, x)
    return v


class _Extension:
    """What the candidate gets from load_inline: counts calls into the extension; in a ghost call NaN-fills
    its tensor results and every tensor argument whose bytes the call changed."""

    def __init__(self, module, torch):
        object.__setattr__(self, "_m", module)
        object.__setattr__(self, "_torch", torch)

    def __getattr__(self, attr):
        value = getattr(object.__getattribute__(self, "_m"), attr)
        torch = object.__getattribute__(self, "_torch")
        if not callable(value):
            return value

        def call(*args, **kwargs):
            _State.ext_calls += 1
            if not _State.ghost:
                return value(*args, **kwargs)
            counting, _State.counting = _State.counting, False
            tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
            before = [_raw(t) for t in tensors]
            _State.counting = counting
            out = value(*args, **kwargs)
            _State.counting = False
            try:
                for t, b in zip(tensors, before):
                    if _raw(t) != b:
                        _ghost_fill(torch, t)
                return _ghost_fill(torch, out)
            finally:
                _State.counting = counting

        return call


def _load_so(name: str, so: str):
    loader = importlib.machinery.ExtensionFileLoader(name, so)
    spec = importlib.util.spec_from_file_location(name, so, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


_UNKNOWN: tuple = ()  # the build stage's "not built by kopt" exception class, once installed


def _install_extensions(torch, table: list[dict], by_key: bool) -> None:
    """load_inline/load replaced by a loader of the prebuilt .so's the parent verified: matched by the
    build stage's key (extensions.install) when the table carries keys, else in the compile stage's order."""
    global _UNKNOWN
    import torch.utils.cpp_extension as cx

    def wrap(module):
        return _Extension(module, torch)

    if by_key:
        from . import extensions

        extensions.install(table, wrap)
        _UNKNOWN = tuple(c for c in (getattr(extensions, "UnknownExtension", None),) if c)
        return
    pending = list(table)

    def load_inline(*args, **kwargs):
        if not pending:
            raise _Failure("extension_unknown")
        entry = pending.pop(0)
        try:
            return wrap(_load_so(entry["name"], entry["so"]))
        except Exception as e:  # noqa: BLE001
            raise _Failure("extension_failed", e) from None

    cx.load_inline = load_inline
    cx.load = load_inline


def _counter_mode(torch):
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpCounter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if _State.counting:
                packet = getattr(func, "_overloadpacket", None)
                name = getattr(packet, "__name__", "")
                if not getattr(func, "is_view", False) and name not in _ALLOC_OPS:
                    _State.ops += 1
            return func(*args, **(kwargs or {}))

    return OpCounter()


def _enter_mode_in_new_threads(mode) -> None:
    """Python threads the candidate starts count too: each enters the mode on its first profile event."""

    def first_event(*_a):
        sys.setprofile(None)
        try:
            mode.__enter__()
        except Exception:  # noqa: BLE001
            pass

    threading.setprofile(first_event)


def _import(path: str, name: str, search_path: str | None):
    if search_path:
        sys.path.insert(0, search_path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _build_models(torch, cls, models: list[dict], payload: bytes, device: str, path: str) -> list:
    out, off = [], 0
    for m in models:
        metas = m["state"]
        n = sum(protocol.nbytes(x) for x in metas)
        tensors = _tensors_from(torch, metas, payload[off:off + n], "cpu")
        off += n
        state = {x["name"]: t for x, t in zip(metas, tensors)}
        torch.manual_seed(int(m["seed"]))  # seed, then construct (KernelBench); the reference is built the same way
        try:
            model = cls(*m["args"], **m["kwargs"])
            own = model.state_dict()
            if state and set(own) == set(state) and all(own[k].shape == state[k].shape for k in own):
                model.load_state_dict(state)
            out.append(model.to(device))
        except _Failure:
            raise
        except BaseException as e:  # noqa: BLE001 - SystemExit/KeyboardInterrupt from the candidate too
            raise _Failure("init_failed", e, path=path) from None
    return out


def serve(fd_in: int, fd_out: int) -> None:
    """One session: init, then flush/call/reveal frames until `bye` or the end of the stream."""

    def recv() -> tuple[dict, bytes]:
        hlen, plen = protocol.PREFIX.unpack(_read_exact(fd_in, protocol.PREFIX.size))
        header = protocol.parse_header(_read_exact(fd_in, hlen))
        return header, (_read_exact(fd_in, plen) if plen else b"")

    def fail(f: _Failure) -> None:
        _write_frame(fd_out, {"t": "fail", "code": f.code, "line": int(f.line), "exc": f.exc, "index": int(f.index)})

    try:
        import torch  # before the init message: a spare session waits with torch imported

        init, init_payload = recv()
        device = init["device"]
        torch.set_num_threads(int(init["threads"]))
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        flush = _Flusher(torch, device)
        sync = torch.cuda.synchronize if device == "cuda" else None
        no_grad = torch.no_grad
        tensor_type = torch.Tensor
        _install_extensions(torch, init["ext"], bool(init.get("ext_by_key")))
        # Only a candidate's torch ops are counted (library-compute evidence). The trusted reference runs
        # without the mode: a Python dispatch mode costs ~12 us per op (ReLU on 16x4096: 17 -> 29 us), which
        # would slow the eager baseline, and under one torch.compile never compiles (dynamo runs it eagerly).
        if init.get("count_ops", True):
            mode = _counter_mode(torch)
            mode.__enter__()
            _enter_mode_in_new_threads(mode)
    except _Failure as f:
        fail(f)
        return
    except Exception as e:  # noqa: BLE001
        fail(_Failure("setup_failed", e))
        return
    path = init["module"]
    try:
        module = _import(path, init["name"], init.get("search_path"))
        cls = getattr(module, init["cls"], None)
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            raise _Failure("no_model_class")
        _State.counting = True
        models = _build_models(torch, cls, init["models"], init_payload, device, path)
        _State.counting = False
        if init.get("compile"):  # the trusted reference under torch.compile: compiled at its first call
            models = [torch.compile(m) for m in models]
    except _Failure as f:
        fail(f)
        return
    except SyntaxError as e:
        fail(_Failure("syntax_error", e, path=path))
        return
    except _UNKNOWN:
        fail(_Failure("extension_unknown"))
        return
    except BaseException as e:  # noqa: BLE001 - SystemExit from the candidate's import too
        fail(_Failure("import_failed", e, path=path))
        return
    _write_frame(fd_out, {"t": "ready", "n_ext": len(init["ext"]), "init_ops": _State.ops})
    # The cache is flushed after every commitment (and before the first call), and the parent sends the next
    # call's inputs only after `flushed`: nothing to work on during the flush, one round trip per call.
    flush()
    _write_frame(fd_out, {"t": "flushed"})
    kept: dict[int, tuple[list, list]] = {}
    bufs: dict[tuple, object] = {}
    while True:
        try:
            header, payload = recv()
        except protocol.ProtocolError:
            return
        kind = header.get("t")
        if kind == "bye":
            return
        if kind == "flush":
            flush()
            _write_frame(fd_out, {"t": "flushed"})
            continue
        if kind == "reveal":
            metas_blobs = kept.pop(int(header["call"]), ([], []))
            out_m, after_m = metas_blobs[0][0], metas_blobs[1][0]
            blob = b"".join(metas_blobs[0][1]) + b"".join(metas_blobs[1][1])
            _write_frame(fd_out, {"t": "outputs", "call": int(header["call"]), "out": out_m, "after": after_m}, blob)
            continue
        call = int(header["call"])
        args = _call_args(torch, header["args"], payload, device, bufs)
        model = models[int(header["model"])]
        _State.ext_calls, _State.ops, _State.ghost = 0, 0, bool(header["ghost"])
        try:
            with no_grad():
                _State.counting = True
                t0 = _perf_ns()
                out = model(*args)
                if sync is not None:
                    sync()
                t1 = _perf_ns()
                _State.counting = False
        except BaseException as e:  # noqa: BLE001
            _State.counting = False
            fail(_Failure("forward_raised", e, path=path))
            return
        finally:
            _State.ghost = False
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        for i, o in enumerate(outs):
            if type(o) is not tensor_type:  # exactly torch.Tensor: a lazy subclass fails (hack #7)
                fail(_Failure("not_a_tensor", index=i))
                return
            if o.numel() > 0 and o.untyped_storage().nbytes() == 0:
                fail(_Failure("no_storage", index=i))
                return
        ins = [a for a in args if type(a) is tensor_type]
        out_metas, out_blobs = [_meta(o) for o in outs], [_raw(o) for o in outs]
        in_metas, in_blobs = [_meta(a) for a in ins], [_raw(a) for a in ins]
        h = _digest(out_metas + in_metas, out_blobs + in_blobs)
        in_ptrs = {a.untyped_storage().data_ptr() for a in ins if a.numel()}
        alias = any(o.numel() and o.untyped_storage().data_ptr() in in_ptrs for o in outs)
        kept[call] = ((out_metas, out_blobs), (in_metas, in_blobs))
        _write_frame(fd_out, {"t": "done", "call": call, "h": h, "ext_calls": _State.ext_calls,
                              "lib_ops": _State.ops, "child_ns": max(0, t1 - t0), "alias": bool(alias)})
        del out, outs, args, ins
        flush()
        _write_frame(fd_out, {"t": "flushed"})
