"""The CLI's error boundary and help, through the installed `kopt` entry point (typer as installed, not a copy).

Exit codes: 0 done, 1 a KoptError (one line + hint), 2 a usage mistake (typer's short message), 3 a crash
(one line naming $KOPT_HOME/kopt.log), 130 Ctrl-C. `--json` makes every error a JSON object on stdout.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer

REPO = Path(__file__).resolve().parent.parent
KOPT = str(Path(sys.executable).parent / "kopt")


def kopt(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "100", **(env or {})}
    return subprocess.run([KOPT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["optimize", "examples/gelu/task.py", "--refin", "1"], "No such option: --refin"),
    (["optimize"], "Missing argument 'TARGET'"),
    (["hook", "install", "--hook", "pre-comit"], "Invalid value for '--hook'"),  # a bad choice
    (["check", "--tolerance", "ten"], "Invalid value for '--tolerance'"),
    (["--isolation", "chroot", "check"], "Invalid value for --isolation"),
])
def test_usage_errors_exit_2_with_typers_short_message(args, message):
    res = kopt(*args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr and "typer._click" not in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 5
    if args[0] == "hook":
        return  # `kopt hook` has no --json
    as_json = kopt(*args, "--json")
    assert as_json.returncode == 2
    out = json.loads(as_json.stdout)
    assert message in out["error"] and out["hint"].endswith("--help")


def test_kopt_error_is_one_line_and_a_hint_or_json(tmp_path):
    res = kopt("optimize", str(tmp_path / "missing.py"))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "no such file" in lines[0] and lines[1].startswith("hint: ")
    res = kopt("optimize", str(tmp_path / "missing.py"), "--json")
    assert res.returncode == 1 and res.stderr == ""
    out = json.loads(res.stdout)
    assert "no such file" in out["error"] and "TARGET" in out["hint"]


def test_a_crash_exits_3_naming_the_log_with_traceback_and_versions(kopt_home, capsys):
    from kopt.cli.boundary import run
    from kopt.cli.help import App

    app = App()

    @app.command("boom")
    def boom(as_json: bool = typer.Option(False, "--json")) -> None:
        {}["missing-key"]  # a bug: an exception kopt did not expect

    @app.command("fine")
    def fine() -> int:
        return 0

    assert run(app, ["boom"]) == 3
    err = capsys.readouterr().err
    log = kopt_home / "kopt.log"
    assert "bug in kopt" in err and str(log) in err and "Traceback" not in err
    text = log.read_text()
    assert "Traceback" in text and "KeyError: 'missing-key'" in text and "kopt boom" in text
    assert re.search(r"^typer: \d", text, re.M) and re.search(r"^python: 3\.", text, re.M)
    assert run(app, ["boom", "--json"]) == 3
    out = json.loads(capsys.readouterr().out)
    assert out["log"] == str(log) and "KeyError" in out["error"]


def test_help_shows_arguments_flags_and_defaults_one_way():
    opt = kopt("optimize", "--help").stdout
    assert "Usage: kopt optimize [OPTIONS] TARGET" in opt and "{target}" not in opt
    assert "<bool>" not in opt
    assert "[default:" not in opt
    assert re.search(r"--ttt-lr\s+<float>\s+TTT learning rate \(paper: 1e-5\) \(default 1e-05\)", opt)
    chk = kopt("check", "--help").stdout
    assert "Usage: kopt check [OPTIONS] [PATHS]..." in chk
    assert re.search(r"--json\s+Print one JSON", chk)


def _run_in_pty(argv: list[str], env: dict, interrupt_when: bytes, timeout_s: float = 240.0):
    pid, fd = pty.fork()
    if pid == 0:  # the child: a real terminal on stdin/stdout/stderr
        # As a shell starts a foreground command: SIGINT at its default (a test run started in the background
        # by a non-interactive shell inherits SIGINT ignored, and Python then installs no handler for it).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.chdir(REPO)
        os.execve(argv[0], argv, env)
    screen, sent_at, t0 = b"", None, time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            screen += data
        if sent_at is None and interrupt_when in screen:
            os.write(fd, b"\x03")  # Ctrl-C as the terminal sends it: SIGINT to the foreground group
            sent_at = time.monotonic()
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), screen.decode(errors="replace"), sent_at


def test_ctrl_c_under_a_terminal_says_how_to_resume_and_stops_the_bars(tmp_path, kopt_home):
    env = {**os.environ, "KOPT_HOME": str(kopt_home), "TERM": "xterm", "COLUMNS": "100"}
    argv = [KOPT, "optimize", "examples/gelu/task.py", "--sampler", "replay", "--samples",
            "examples/gelu/samples_cpu.jsonl", "--k", "11", "--target", "cpu", "--out", str(tmp_path / "out"),
            "--no-cache"]
    t0 = time.monotonic()
    rc, screen, sent_at = _run_in_pty(argv, env, interrupt_when=b"compile")
    assert sent_at is not None, screen[-2000:]
    assert rc == 130, screen[-2000:]
    assert "interrupted" in screen and "rerun the same command to resume" in screen
    assert screen.rstrip().endswith("resume") and "Traceback" not in screen
    assert "\x1b[?25h" in screen  # the bars stopped: rich gave the cursor back
    assert time.monotonic() - sent_at < 60, "kopt kept running after Ctrl-C"
    assert time.monotonic() - t0 < 400
    assert not (tmp_path / "out").exists()


def _report(tmp_path: Path) -> dict:
    out = tmp_path / "kernels" / "op"
    out.mkdir(parents=True)
    for name in ("model_new.py", "kernel.cpp", "report.json", "README.md", "samples.jsonl"):
        (out / name).write_text("x\n")

    def cand(i, status, runtime=None, dup=None, reason=""):
        return {"index": i, "status": status, "surprisal": 0.1 * i, "runtime_ms": runtime,
                "runtime_iqr_ms": runtime * 0.5 if runtime else None, "speedup": 2.0 / runtime if runtime else None,
                "duplicate_of": dup, "reason": reason}

    cands = [cand(0, "correct", 1.0), cand(1, "correct", 2.0), cand(2, "correct", 1.0, dup=0),
             cand(3, "incorrect", reason="output 0 differs: max abs err 0.5 at (1, 2)"),
             cand(4, "incorrect", reason="output 0 differs: max abs err 0.7 at (3, 1)"),
             cand(5, "compile_error", reason="error: 'foo' was not declared")]
    return {"task": {"name": "op"}, "strategy": "surprisal-top-m", "candidates": cands, "timed": [0, 1],
            "winner": {"index": 0, "runtime_ms": 1.0, "runtime_iqr_ms": 0.5, "reference_runtime_ms": 2.0,
                       "speedup": 2.0}, "out_dir": str(out)}


def test_optimize_summary_adds_up_and_lists_what_it_wrote(tmp_path):
    from rich.console import Console

    from kopt.cli.summary import render_optimize

    console = Console(width=200, record=True)
    render_optimize(console, _report(tmp_path))
    text = console.export_text()
    assert "pool: 6 samples = 5 unique + 1 duplicate; unique: 2 correct, 2 incorrect, 1 compile_error" in text
    assert "(timed 2; 2 unique candidate(s) correct after every check)" in text
    assert "same code as #2" in text and re.search(r"^\s*2\s+correct", text, re.M) is None  # no row of its own
    assert "note" in text and "spread" in text  # every column has a header
    assert "wrote " in text and "kernel.cpp, model_new.py, report.json, samples.jsonl" in text
    assert "too wide to rank" in text  # IQR of half the median


def test_failed_optimize_names_the_top_reasons_by_count_and_the_run_dir(tmp_path):
    from kopt.output import failure_message

    report = _report(tmp_path)
    for c in report["candidates"][:3]:
        c["status"] = "incorrect"
        c["reason"] = "output 0 differs: max abs err 0.9 at (0, 0)"
    message, hint = failure_message(report, tmp_path / "runs" / "op" / "report.json")
    assert message == "no correct candidate among 6 samples (5 unique + 1 duplicate: 4 incorrect, 1 compile_error)"
    assert hint.startswith("top reasons: 4x incorrect: output 0 differs") and "1x compile_error" in hint
    assert str(tmp_path / "runs" / "op" / "report.json") in hint


def test_a_warning_is_not_repeated_as_the_error(capsys):
    from kopt.cli import console

    console.print_warning("no CUDA device here; use --target cpu")
    console.print_error("no CUDA device here; use --target cpu", "e.g. --target cpu")
    err = capsys.readouterr().err
    assert err.count("no CUDA device here") == 1 and "see the warning above" in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a CUDA device")
def test_target_cuda_without_a_device_is_refused_before_any_compile(tmp_path):
    """The reference runs before anything is compiled: --target cuda on a CPU machine names the real cause
    (and the fix) instead of ending with 'no correct candidate' after minutes of compiles."""
    args = ["optimize", "examples/gelu/task.py", "--sampler", "replay", "--samples", "examples/gelu/samples_cpu.jsonl",
            "--target", "cuda", "--k", "2", "--out", str(tmp_path / "out")]
    res = kopt(*args, env={"KOPT_HOME": str(tmp_path / "home")})
    assert res.returncode == 1
    assert "no CUDA device" in res.stderr and "--target cpu" in res.stderr
    assert not list((tmp_path / "home").rglob("*.so")), "nothing may be compiled"
    res = kopt(*args, "--json", env={"KOPT_HOME": str(tmp_path / "home")})
    assert res.returncode == 1 and json.loads(res.stdout)["hint"] == "use --target cpu"
