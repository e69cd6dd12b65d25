"""The parent's reader of child frames (kopt_child.protocol) fed every forged shape, and real child sessions
that write garbage or forged frames to the protocol's fd: each costs that child `crashed` with a sentence
kopt wrote, never an exception that would end a batch."""

from __future__ import annotations

import json
import os
import pickle
import struct
import threading
from pathlib import Path

import pytest

from kopt.evaluator.kopt_child import protocol
from kopt.evaluator.kopt_child.protocol import ProtocolError, encode, read_message
from kopt.records import Status

H = "ab" * 32
DONE = {"t": "done", "call": 3, "h": H, "ext_calls": 1, "lib_ops": 0, "child_ns": 1000, "alias": False}


def feed(raw: bytes, expect=("done", "fail"), max_payload: int = 1 << 20):
    r, w = os.pipe()

    def writer():
        try:
            os.write(w, raw) if len(raw) < 60000 else [os.write(w, raw[i:i + 60000]) for i in range(0, len(raw), 60000)]
        except OSError:
            pass
        os.close(w)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        return read_message(r, expect, max_payload)
    finally:
        os.close(r)
        t.join(timeout=5)


def frame(text: str | bytes, payload: bytes = b"") -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<IQ", len(raw), len(payload)) + raw + payload


def test_a_well_formed_done_is_read():
    header, payload = feed(encode(DONE))
    assert header == DONE and payload == b""


def test_an_outputs_message_carries_exactly_its_tensors():
    h = {"t": "outputs", "call": 1, "out": [{"dtype": "float32", "shape": [2, 3]}], "after": []}
    header, payload = feed(encode(h, b"\0" * 24), expect=("outputs",))
    assert payload == b"\0" * 24
    with pytest.raises(ProtocolError, match="does not match"):
        feed(encode(h, b"\0" * 20), expect=("outputs",))


FORGED = {
    "unknown status string": json.dumps({"t": "fail", "code": "correct", "line": 0, "exc": "", "index": 0}),
    "error as a status": json.dumps({"ok": False, "error": "correct"}),
    "unknown message type": json.dumps(dict(DONE, t="verdict")),
    "NaN": json.dumps(DONE).replace('"child_ns":1000', '"child_ns":NaN').replace('"child_ns": 1000', '"child_ns": NaN'),
    "Infinity": json.dumps(DONE).replace("1000", "Infinity"),
    "float where an int belongs": json.dumps(dict(DONE, child_ns=1000.5)),
    "bool where an int belongs": json.dumps(dict(DONE, ext_calls=True)),
    "negative count": json.dumps(dict(DONE, lib_ops=-1)),
    "huge int": json.dumps(dict(DONE, child_ns=10 ** 40)),
    "extra field": json.dumps(dict(DONE, reason="looks fine to me")),
    "missing field": json.dumps({k: v for k, v in DONE.items() if k != "alias"}),
    "duplicate key": json.dumps(DONE)[:-1] + ',"ext_calls":0}',
    "hash not hex": json.dumps(dict(DONE, h="z" * 64)),
    "exception name from outside the closed set":
        json.dumps({"t": "fail", "code": "forward_raised", "line": 3, "exc": "sk-secret-value", "index": 0}),
    "line as text": json.dumps({"t": "fail", "code": "forward_raised", "line": "42: leak", "exc": "", "index": 0}),
    "nested 10^5 deep": "[" * 100_000 + "]" * 100_000,
    "nested object 10^5 deep": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "a list, not an object": json.dumps([DONE]),
    "not UTF-8": b"\xff\xfe" + json.dumps(DONE).encode(),
    "not JSON": "done call=3 ok",
}


@pytest.mark.parametrize("name", sorted(FORGED))
def test_forged_headers_are_protocol_errors(name):
    with pytest.raises(ProtocolError) as e:
        feed(frame(FORGED[name]))
    assert str(e.value) and "sk-" not in str(e.value) and "leak" not in str(e.value)


def test_a_pickle_is_not_a_frame():
    blob = pickle.dumps({"t": "done", "status": "correct"})
    with pytest.raises(ProtocolError):
        feed(blob)


def test_sizes_are_capped_before_reading():
    with pytest.raises(ProtocolError, match="1 MiB"):
        feed(struct.pack("<IQ", (1 << 20) + 1, 0) + b"{}")
    with pytest.raises(ProtocolError, match="over the"):
        feed(struct.pack("<IQ", 2, 1 << 40) + b"{}")  # 1 TiB announced: refused, nothing allocated
    with pytest.raises(ProtocolError, match="payload"):
        feed(encode(DONE, b"x"))  # a done message carries no payload


@pytest.mark.parametrize("cut", [0, 5, 12, 20])
def test_truncated_frames_are_protocol_errors(cut):
    with pytest.raises(ProtocolError):
        feed(encode(DONE)[:cut])


def test_the_digest_reads_dtype_shape_and_every_byte():
    a = protocol.digest([{"dtype": "float32", "shape": [2]}], [b"\0" * 8])
    assert a != protocol.digest([{"dtype": "int32", "shape": [2]}], [b"\0" * 8])
    assert a != protocol.digest([{"dtype": "float32", "shape": [1, 2]}], [b"\0" * 8])
    assert a != protocol.digest([{"dtype": "float32", "shape": [2]}], [b"\0" * 7 + b"\1"])


# ---- real child sessions that attack the protocol fd ---------------------------------------------------

GARBAGE_AT_IMPORT = """
import os
for fd in range(3, 32):  # whatever fd the protocol went to
    try:
        os.write(fd, {payload!r})
    except OSError:
        pass
import torch.nn as nn
class Model(nn.Module):
    def forward(self, x):
        return x
"""


def _session(tmp_path: Path, body: str):
    from kopt.evaluator.session import ModelSpec, Session, SessionSpec

    mod = tmp_path / "task.py"
    mod.write_text(body)
    spec = SessionSpec(module=str(mod), cls="Model", models=(ModelSpec(),), what="the candidate")
    return Session(spec, work=tmp_path / "work", readable=[tmp_path], timeout_s=60, max_rss_mb=4096)


FORGERIES = [
    b"\xde\xad\xbe\xef" * 64,  # garbage
    encode({"t": "ready", "n_ext": 0, "init_ops": 0}) + encode(dict(DONE, call=0)) + encode({"t": "verdict"}),
    struct.pack("<IQ", 16, 0) + b'{"t":"ready","n',  # a frame cut short, then the real one follows
]


def test_children_writing_to_the_protocol_fd_are_crashed_and_the_next_session_runs(tmp_path):
    import torch

    from kopt.evaluator.session import SessionFailure

    verdicts = []
    for n, payload in enumerate([*FORGERIES, b""]):
        d = tmp_path / str(n)
        d.mkdir()
        try:
            with _session(d, GARBAGE_AT_IMPORT.format(payload=payload)) as s:
                s.start()
                s.flush()
                rec = s.call(0, 0, [torch.ones(4)])
                outs, _after = s.reveal(0, rec.h, 1 << 20)
                verdicts.append(("ok", torch.equal(outs[0], torch.ones(4))))
        except SessionFailure as f:
            verdicts.append((f.status, f.reason))
    *bad, good = verdicts
    assert good == ("ok", True)
    for status, reason in bad:
        assert status in (Status.CRASHED, Status.REJECTED), (status, reason)
        assert "\\xde" not in reason and "verdict" not in reason and "kopt" in reason or "process" in reason
