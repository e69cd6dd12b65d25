"""The frames between kopt (the parent) and a child session, and the parent's strict reader.

A frame is <u32 header_len><u64 payload_len>, a JSON header (UTF-8, an object), then payload_len raw bytes
(tensor data whose dtype and shape are named in the header). Nothing is pickled; no torch.load of child data.

Everything a child sends is a claim: `read_message` (parent side) caps sizes before reading, rejects NaN and
Infinity, duplicate keys, any key set other than the message type's exact one, and values outside their type
and range. Any failure raises ProtocolError with a sentence written here, never text from the child; the
session turns it into `crashed` for that candidate alone.

Stdlib only: the child imports this module too (relative import), before any candidate code.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct

PREFIX = struct.Struct("<IQ")
HEADER_MAX = 1 << 20  # bytes of JSON per frame, either direction
INT_MAX = (1 << 62) - 1
HEX64 = re.compile(r"[0-9a-f]{64}\Z")
# The dtypes that may cross the boundary (name -> bytes per element). Anything else is a protocol error.
DTYPES = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
          "int8": 1, "uint8": 1, "bool": 1, "complex64": 8}
MAX_DIMS = 16
# A child can only report one of these failures; kopt writes the sentence (session.FAIL_SENTENCES).
FAIL_CODES = ("setup_failed", "import_failed", "syntax_error", "no_model_class", "init_failed", "forward_raised",
              "not_a_tensor", "no_storage", "extension_unknown", "extension_failed", "bad_message")
# Exception names a child may name: builtins and torch's own, a closed set (anything else reads "an exception").
EXC_NAMES = ("", "Exception", "RuntimeError", "ValueError", "TypeError", "IndexError", "KeyError",
             "AttributeError", "ZeroDivisionError", "MemoryError", "RecursionError", "NotImplementedError",
             "AssertionError", "ImportError", "ModuleNotFoundError", "NameError", "OSError", "SystemExit",
             "KeyboardInterrupt", "SyntaxError", "OverflowError", "StopIteration", "LookupError",
             "UnboundLocalError", "FileNotFoundError", "PermissionError", "OutOfMemoryError", "AcceleratorError",
             "BaseException", "GeneratorExit", "ArithmeticError", "BufferError", "EOFError", "UnicodeError",
             "IndentationError", "TabError")


class ProtocolError(Exception):
    """A frame broke the protocol. str(e) is a sentence kopt wrote (never the child's bytes)."""


# ---- writing (both sides) ---------------------------------------------------------------------------------

def encode(header: dict, payload: bytes | bytearray | memoryview = b"") -> bytes:
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if len(raw) > HEADER_MAX:
        raise ProtocolError("a header over 1 MiB")
    return PREFIX.pack(len(raw), len(payload)) + raw + bytes(payload)


def write_frame(fd: int, header: dict, payload: bytes | bytearray | memoryview = b"") -> None:
    data = memoryview(encode(header, payload))
    while data:
        n = os.write(fd, data)
        data = data[n:]


def read_exact(fd: int, n: int) -> bytes:
    """n bytes from fd, or ProtocolError at end of stream (a truncated frame)."""
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise ProtocolError("the stream ended inside a frame" if left != n or n == 0 else "the stream ended")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# ---- strict JSON ------------------------------------------------------------------------------------------

def _reject_constant(name: str):
    raise ValueError("NaN or Infinity")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError("duplicate key")
        out[k] = v
    return out


def _depth_ok(raw: bytes, limit: int = 32) -> bool:
    """Nesting depth of a JSON text counted before parsing, so 10^5 brackets never reach the parser."""
    depth, in_str, esc = 0, False, False
    for b in raw:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return False
        elif b in (0x5D, 0x7D):
            depth -= 1
    return True


def parse_header(raw: bytes) -> dict:
    if not _depth_ok(raw):
        raise ProtocolError("a header nested too deeply")
    try:
        text = raw.decode("utf-8")
        obj = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError, MemoryError):
        raise ProtocolError("a header that is not strict JSON (NaN, duplicate keys, bad UTF-8 or syntax)") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a header that is not a JSON object")
    return obj


# ---- schemas (parent reads child messages) ---------------------------------------------------------------

def _int(v, lo: int = 0, hi: int = INT_MAX) -> bool:
    return type(v) is int and lo <= v <= hi


def tensor_meta_ok(m) -> bool:
    return (type(m) is dict and set(m) == {"dtype", "shape"} and type(m["dtype"]) is str and m["dtype"] in DTYPES
            and type(m["shape"]) is list and len(m["shape"]) <= MAX_DIMS and all(_int(d, 0, 1 << 40) for d in m["shape"]))


def nbytes(meta: dict) -> int:
    n = DTYPES[meta["dtype"]]
    for d in meta["shape"]:
        n *= d
    return n


def _metas(v, limit: int = 64) -> bool:
    return type(v) is list and len(v) <= limit and all(tensor_meta_ok(m) for m in v)


SCHEMAS = {
    "ready": {"t": str, "n_ext": lambda v: _int(v, 0, 64), "init_ops": _int},
    "flushed": {"t": str},
    "done": {"t": str, "call": _int, "h": lambda v: type(v) is str and bool(HEX64.match(v)),
             "ext_calls": _int, "lib_ops": _int, "child_ns": _int, "alias": lambda v: type(v) is bool},
    "outputs": {"t": str, "call": _int, "out": _metas, "after": _metas},
    "fail": {"t": str, "code": lambda v: type(v) is str and v in FAIL_CODES, "line": lambda v: _int(v, 0, 10**7),
             "exc": lambda v: type(v) is str and v in EXC_NAMES, "index": lambda v: _int(v, 0, 1 << 20)},
}


def check_header(header: dict, expect: tuple[str, ...]) -> dict:
    kind = header.get("t")
    if type(kind) is not str or kind not in expect:
        raise ProtocolError(f"an unexpected message (expected {' or '.join(expect)})")
    schema = SCHEMAS[kind]
    if set(header) != set(schema):
        raise ProtocolError(f"a {kind} message with the wrong fields")
    for key, ok in schema.items():
        if key == "t":
            continue
        if ok is _int:
            good = _int(header[key])
        else:
            good = ok(header[key])
        if not good:
            raise ProtocolError(f"a {kind} message whose {key} is out of range or of the wrong type")
    return header


def read_message(fd: int, expect: tuple[str, ...], max_payload: int) -> tuple[dict, bytes]:
    """Parent side: one frame from fd, checked against `expect`'s schemas, its payload at most max_payload
    bytes. Raises ProtocolError for anything else (also RecursionError/MemoryError inside, converted)."""
    try:
        hlen, plen = PREFIX.unpack(read_exact(fd, PREFIX.size))
        if hlen > HEADER_MAX or hlen == 0:
            raise ProtocolError("a header over 1 MiB" if hlen else "an empty header")
        if plen > max_payload:
            raise ProtocolError(f"a payload of {plen} bytes, over the {max_payload} this message may carry")
        header = check_header(parse_header(read_exact(fd, hlen)), expect)
        payload = read_exact(fd, plen) if plen else b""
        if header["t"] == "outputs":
            want = sum(nbytes(m) for m in header["out"]) + sum(nbytes(m) for m in header["after"])
            if want != plen:
                raise ProtocolError("an outputs message whose payload does not match its tensors' sizes")
        elif plen:
            raise ProtocolError(f"a {header['t']} message with a payload")
        return header, payload
    except ProtocolError:
        raise
    except (RecursionError, MemoryError, struct.error, OverflowError, ValueError, TypeError, KeyError):
        raise ProtocolError("a malformed frame") from None


# ---- hashing: the same bytes in the child (inside the call) and in the parent (at reveal) ----------------

def digest(metas: list[dict], blobs: list[bytes]) -> str:
    """sha256 over each tensor's dtype, shape and raw bytes, in order (outputs, then inputs after the call)."""
    h = hashlib.sha256()
    for m, b in zip(metas, blobs):
        h.update(f"{m['dtype']}:{','.join(str(d) for d in m['shape'])}:{len(b)};".encode())
        h.update(b)
    return h.hexdigest()


def finite_number(x) -> bool:
    return type(x) in (int, float) and math.isfinite(x)
