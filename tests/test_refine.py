"""Repair rounds (`kopt optimize --refine`): a real OpenAI-compatible HTTP server on 127.0.0.1, real compiles and
checks of the examples' gelu kernels, and the feedback's guarantee that it says nothing from outside the
candidate's own sources."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.register_assert_rewrite("trained_tiny")

from kopt import refine
from kopt.prompt import make_prompt
from kopt.records import EvalResult, Sample, Status

# trained_tiny_model_dir: the tiny Llama trained to answer the gelu prompt (tests/trained_tiny.py).
pytest_plugins = ["trained_tiny"]

REPO = Path(__file__).resolve().parent.parent
GELU = REPO / "examples" / "gelu"
BAD = (GELU / "candidates_cpu" / "07_compile_error.py").read_text()  # uses an undeclared `w`
FIXED = (GELU / "candidates_cpu" / "01_naive_single_thread.py").read_text()  # correct
# g++'s words for the undeclared `w`, as the evaluator quotes them (kopt/evaluator/build.py compile_reason).
COMPILER_TEXT = re.compile(r"error: .w. was not declared in this scope")


def _answer(code: str) -> str:
    return f"Here is ModelNew.\n\n```python\n{code}```\n"


class RepairServer:
    """An OpenAI-compatible chat endpoint: the first turn gets the kernel that does not compile; a follow-up
    gets the fixed kernel only when its last user message carries the compiler's error text."""

    def __init__(self):
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                server.requests.append(body)
                msgs = body["messages"]
                follow_up = any(m["role"] == "assistant" for m in msgs)
                fixed = follow_up and COMPILER_TEXT.search(msgs[-1]["content"]) is not None
                text = _answer(FIXED if fixed else BAD)
                n = 40 + body["seed"] % 7  # a different surprisal per sample
                payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                        "logprobs": {"content": [{"token": "t", "logprob": -0.05 * (1 + i % 3)}
                                                                 for i in range(n)]},
                                        "finish_reason": "stop"}]}
                raw = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    s = RepairServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("refine-home")


def kopt(args: list[str], home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KOPT_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "kopt", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=900)


def optimize_args(server, out: Path, *extra: str) -> list[str]:
    return ["optimize", str(GELU / "task.py"), "--base-url", server.url, "--model", "m", "--api", "chat",
            "--k", "2", "--target", "cpu", "--threads", "1", "--out", str(out), "--json", *extra]


@pytest.fixture(scope="module")
def refined(server, home, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("work")
    out = cwd / "kernels" / "gelu"
    proc = kopt(optimize_args(server, out, "--refine", "1"), home, cwd)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    return cwd, out, json.loads(proc.stdout), len(server.requests)


@pytest.mark.slow
def test_the_compilers_error_reaches_the_model_and_the_fix_wins(refined, server, home):
    cwd, out, report, n_requests = refined
    assert n_requests == 3  # K = 2 first turns, then one follow-up (refine-k = K/2)
    follow = server.requests[-1]["messages"]
    assert [m["role"] for m in follow] == ["system", "user", "assistant", "user"]
    assert follow[2]["content"] == _answer(BAD)  # the candidate's own answer, as the model wrote it
    feedback = follow[3]["content"]
    assert COMPILER_TEXT.search(feedback) and "does not compile" in feedback
    assert "/" not in feedback.replace("```", "")  # no paths

    w = report["winner"]
    assert w["round"] == 1 and w["parent"] in (0, 1) and w["index"] == 2
    rows = report["candidates"]
    assert [r["round"] for r in rows] == [0, 0, 1] and rows[2]["parent"] == w["parent"]
    assert rows[w["parent"]]["status"] == "compile_error" and rows[2]["status"] == "correct"
    assert report["refine"]["rounds"][0]["follow_ups"] == 1 and report["refine"]["rounds"][0]["correct"] == 1
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [x.get("round", 0) for x in lines] == [0, 0, 1] and lines[2]["parent"] == w["parent"]
    assert lines[2]["num_tokens"] == len(lines[2]["token_logprobs"])  # the follow-up's own log-probs

    # The same pool without the repair round has nothing correct: the round made the difference.
    proc = kopt(optimize_args(server, cwd / "none"), home, cwd)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(server.requests) == n_requests  # the first turns came from the cache


@pytest.mark.slow
def test_rerun_is_fully_cached(refined, server, home):
    cwd, out, report, _ = refined
    before = len(server.requests)
    proc = kopt(optimize_args(server, out, "--refine", "1", "--force"), home, cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(proc.stdout)
    assert len(server.requests) == before  # nothing sampled
    assert again["evaluation"]["evaluated_now"] == 0 and again["evaluation"]["timed_now"] == 0  # nothing compiled
    assert again["refine"]["rounds"][0]["drawn_now"] == 0 and again["refine"]["rounds"][0]["evaluated_now"] == 0
    assert again["winner"]["index"] == report["winner"]["index"]


@pytest.mark.slow
def test_a_recorded_refine_run_replays_exactly(refined, home):
    cwd, out, report, _ = refined
    proc = kopt(["optimize", str(GELU / "task.py"), "--samples", str(out / "samples.jsonl"), "--k", "2",
                 "--target", "cpu", "--threads", "1", "--refine", "1", "--out", str(cwd / "replayed"), "--json"],
                home, cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(proc.stdout)
    assert [(c["round"], c["parent"], c["code_sha256"]) for c in again["candidates"]] == \
        [(c["round"], c["parent"], c["code_sha256"]) for c in report["candidates"]]
    assert again["winner"]["index"] == report["winner"]["index"]


# ---- the feedback says nothing from outside the candidate's own sources -----------------------------------

# Copying a vector of unique_ptr fails inside the C++ standard library's headers: g++ reports the errors at
# lines of those headers, quoting their text, and only notes ("required from here") at the candidate's line.
HEADER_ERROR_CPP = """
#include <torch/extension.h>
#include <memory>
#include <vector>
torch::Tensor forward_kernel(torch::Tensor x) {
    std::vector<std::unique_ptr<int>> owned;
    auto copy = owned;
    return x.clone();
}
"""
HEADER_ERROR = f'''import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

_ext = load_inline(name="header_error", cpp_sources=r"""{HEADER_ERROR_CPP}""", functions=["forward_kernel"])


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return _ext.forward_kernel(x)
'''


@pytest.mark.slow
def test_feedback_never_quotes_another_files_content(tmp_path):
    from kopt.evaluator import EvalSettings, Evaluator
    from kopt.task import load_task

    # What the raw compiler says about the same code: other files' paths and text.
    src = tmp_path / "c.cpp"
    src.write_text(HEADER_ERROR_CPP.replace("#include <torch/extension.h>", "namespace torch { struct Tensor "
                                            "{ Tensor clone() const { return *this; } }; }"))
    raw = subprocess.run(["g++", "-std=c++17", "-fsyntax-only", str(src)], capture_output=True, text=True).stderr
    assert "/usr/include" in raw or "bits/" in raw
    leaked = [w for w in ("constructible", "static assertion", "stl_", "bits/") if w in raw]
    assert leaked

    task = load_task(str(GELU / "task.py"), sets=["batch_size=4", "dim=256"])
    with Evaluator(task, EvalSettings(target="cpu", threads=1, jobs=1)) as ev:
        (verdict,) = ev.check([HEADER_ERROR])
    assert verdict.status is Status.COMPILE_ERROR
    sections, _ = refine.load_template(None)
    feedback = refine.render(verdict, sections)
    for word in leaked + ["/usr", "/tmp", "main.cpp", "kopt_"]:
        assert word not in feedback, (word, feedback)
    assert "does not compile" in feedback


def test_feedback_facts_per_status_and_nothing_else():
    nonce = "9f" * 16
    compile_error = EvalResult(status=Status.COMPILE_ERROR, reason=(
        f"compile error: C++ source line 3: error: ‘w’ was not declared in this scope | C++ source line 9: "
        f"error: no match for /home/u/.kopt/build/{nonce}/main.cpp"))
    d = refine.details(compile_error)
    assert d[0] == "- C++ source line 3: error: ‘w’ was not declared in this scope"
    assert nonce not in "".join(d) and "/home" not in "".join(d) and len(d) == 2
    wrong = EvalResult(status=Status.INCORRECT, reason="trial 2: output 0 differs at 12 of 1024 elements (first "
                       "at (0, 3)), max abs err 0.031 (atol 0.0001, rtol 0.0001)")
    assert refine.details(wrong) == ["- max absolute error: 0.031", "- tolerance: atol 0.0001, rtol 0.0001",
                                     "- wrong elements: 12 of 1024"]
    shape = EvalResult(status=Status.INCORRECT, reason="trial 0: output 0 has shape (4, 8), expected (4, 16)")
    assert refine.details(shape) == ["- output shape: (4, 8), expected (4, 16)"]
    fast = EvalResult(status=Status.CORRECT, runtime_ms=1.25, speedup=1.5, speedup_vs_compile=0.8)
    text = refine.render(fast, refine.load_template(None)[0])
    assert "1.25 ms" in text and "1.5x" in text and "0.8x" in text and "faster" in text
    # A rejection, a crash or an internal reason is never repaired: kopt's internals stay out of feedback.
    assert refine.details(EvalResult(status=Status.REJECTED, reason="static gate: uses ctypes")) == []
    odd = EvalResult(status=Status.COMPILE_ERROR, reason="the compiler process ended without a result (rc -9)")
    assert refine.details(odd) == ["- the compiler reported errors, but none located on your own source lines"]


def test_template_override_and_errors(tmp_path):
    t = tmp_path / "fb.txt"
    t.write_text("[correct]\nOK: $status\n[failed]\nBAD: $status\n$details\n")
    sections, origin = refine.load_template(t)
    assert refine.render(EvalResult(status=Status.TIMEOUT, reason="killed after 120 s (run timeout)"),
                         sections, origin) == "BAD: it ran past the time limit\n- killed after 120 s (run timeout)"
    t.write_text("[failed]\n$status\n")
    with pytest.raises(Exception, match="needs one \\[failed\\] and one \\[correct\\]"):
        refine.load_template(t)
    t.write_text("[failed]\n$oops\n[correct]\nx\n")
    with pytest.raises(Exception, match="bad placeholder"):
        refine.render(EvalResult(status=Status.TIMEOUT), *refine.load_template(t))


def test_follow_up_conversation_and_round_records():
    p = make_prompt("sys", "task", "cpu")
    f = p.follow_up("answer", "feedback")
    assert f.as_messages()[-2:] == [{"role": "assistant", "content": "answer"}, {"role": "user", "content": "feedback"}]
    assert f.hash != p.hash and p.follow_up("answer", "other").hash != f.hash
    assert f.as_text() == "sys\n\ntask\n\nanswer\n\nfeedback\n\n" and p.as_text() == "sys\n\ntask"
    s = Sample(text="x", logprob=-1.0, num_tokens=2, round=1, parent=0)
    assert Sample.from_json(s.to_json()) == s and "round" not in Sample(text="x").to_json()
    with pytest.raises(ValueError):
        Sample.from_json({"text": "x", "round": 1})


# ---- the trained tiny model through hf: the follow-up turn rendered for a model without a chat template ----


@pytest.mark.slow
def test_hf_refine_round_end_to_end(trained_tiny_model_dir, shared_kopt_home, tmp_path):
    from transformers import AutoTokenizer

    k = 4
    args = ["optimize", str(GELU / "task.py"), "--sampler", "hf", "--model", trained_tiny_model_dir, "--k", str(k),
            "--max-tokens", "16", "--target", "cpu", "--threads", "1", "--refine", "1", "--json"]
    # shared_kopt_home: the gelu verdicts are shared with tests/test_ttt.py when both run in one session
    proc = kopt([*args, "--out", str(tmp_path / "a")], shared_kopt_home, tmp_path)
    # The trained model's gelu answers are correct 2 times in 3, so the pool holds a winner.
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    lines = [json.loads(x) for x in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    (rnd,) = report["refine"]["rounds"]
    assert rnd["follow_ups"] == k // 2 and len(lines) == k + k // 2
    tok = AutoTokenizer.from_pretrained(trained_tiny_model_dir)
    for line in lines[k:]:
        assert line["round"] == 1 and line["parent"] in rnd["parents"]
        assert len(line["token_logprobs"]) == line["num_tokens"] == len(line["token_ids"]) > 0
        context = tok.decode(line["prompt_token_ids"], skip_special_tokens=True)
        # No chat template: the plain rendering, prompt then the parent's answer then kopt's feedback.
        assert lines[line["parent"]]["text"].strip() in context and "kopt compiled and checked your ModelNew" in context
    assert [c["round"] for c in report["candidates"]] == [0] * k + [1] * (k // 2)
    proc = kopt([*args, "--out", str(tmp_path / "b")], shared_kopt_home, tmp_path)
    again = json.loads(proc.stdout)
    assert again["refine"]["rounds"][0]["drawn_now"] == 0 and again["evaluation"]["evaluated_now"] == 0
    assert again["winner"]["index"] == report["winner"]["index"]


@pytest.mark.slow
def test_compare_refine_strategy_at_a_matched_budget(refined, server, home, tmp_path):
    cwd = refined[0]  # the module's home: the gelu verdicts are cached already
    proc = kopt(["compare", str(GELU / "task.py"), "--base-url", server.url, "--model", "m", "--api", "chat",
                 "--k", "4", "--target", "cpu", "--threads", "1", "--seeds", "0", "--strategies",
                 "surprisal-top-m,refine", "--json", "--report", str(tmp_path / "report")], home, cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert list(data["strategies"]) == ["surprisal-top-m", "refine"]
    assert data["params"]["refine"] == {"rounds": 1, "first_turns": 2, "per_round": 2, "k": 4,
                                        "rule": "first turns + rounds * per_round <= k"}
    # K = 4 first turns that never compile, against 2 first turns + a repair round: only the round fixes it.
    (one_shot,) = data["strategies"]["surprisal-top-m"]["picks"]
    (repaired,) = data["strategies"]["refine"]["picks"]
    assert one_shot["correct"] == 0.0 and repaired["correct"] == 1.0 and repaired["step"] == 1
    lines = Path(repaired["samples_path"]).read_text().splitlines()
    assert len(lines) <= 4 and json.loads(lines[repaired["index"]])["round"] == 1



@pytest.mark.slow
def test_replaying_a_one_shot_file_with_refine_is_refused(refined, home, tmp_path):
    """Line K+1 of a plain samples file is a first-turn sample, not a recorded follow-up: kopt says so."""
    cwd, out, _, _ = refined
    lines = (out / "samples.jsonl").read_text().splitlines()
    plain = tmp_path / "plain.jsonl"
    plain.write_text("\n".join([lines[0], lines[1], lines[0]]) + "\n")
    proc = kopt(["optimize", str(GELU / "task.py"), "--samples", str(plain), "--k", "2", "--target", "cpu",
                 "--threads", "1", "--refine", "1", "--out", str(tmp_path / "o"), "--json"], home, cwd)
    assert proc.returncode == 1
    assert "line 3 is a first-turn sample" in proc.stdout and "written by a refine run" in proc.stdout
