"""Tasks: TARGET parsing, --input/--init-args/--set, the hash, `kopt init`, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kopt.errors import TaskError
from kopt.task import load_task, parse_input, parse_sets, probe_task, source_hash

KOPT = [sys.executable, "-m", "kopt"]

USER_MODULE = textwrap.dedent(
    """
    import torch
    import torch.nn as nn


    class Scale(nn.Module):
        def __init__(self, dim, eps=1e-6):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))
            self.eps = eps

        def forward(self, x):
            return x * self.weight + self.eps


    class NotAModule:
        pass


    class ReturnsInt(nn.Module):
        def forward(self, x):
            return 3
    """
)


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    p = tmp_path / "mymodel.py"
    p.write_text(USER_MODULE)
    return p


def test_parse_input_forms():
    assert parse_input("float32[512,1024]").shape == (512, 1024)
    assert parse_input("float32[512,1024]").kind == "randn"  # mixed sign by default, never [0,1) only
    spec = parse_input("int64[32]:randint(0,100)")
    assert (spec.dtype, spec.kind, spec.args) == ("int64", "randint", (0, 100))
    assert parse_input("bfloat16[]").shape == ()


@pytest.mark.parametrize("bad", ["float32(3)", "flot[3]", "int64[3]:randn", "float32[3]:randint(5,1)", "float32[a]"])
def test_parse_input_errors_name_the_fix(bad):
    with pytest.raises(TaskError) as e:
        parse_input(bad)
    assert e.value.hint


def test_hash_ignores_comments_and_whitespace():
    a = "import torch\nclass Model:\n    def f(self):  # comment\n        return 1\n"
    b = "import torch\n\n\nclass Model:\n    # another comment\n    def f(self):\n        return 1\n"
    c = "import torch\nclass Model:\n    def f(self):\n        return 2\n"
    assert source_hash(a) == source_hash(b) != source_hash(c)


def test_set_rewrites_constants_and_derived_values(tmp_path, kernelbench):
    task = load_task(str(kernelbench / "19_ReLU.py"), sets=["batch_size=4", "dim=8"])
    assert "batch_size = 4" in task.source and "dim = 8" in task.source
    assert task.hash != load_task(str(kernelbench / "19_ReLU.py")).hash
    probe = probe_task(task)
    assert probe.outputs == (((4, 8), "float32"),)
    derived = tmp_path / "derived.py"
    derived.write_text(textwrap.dedent("""
        import torch, torch.nn as nn
        class Model(nn.Module):
            def forward(self, x):
                return x + 1
        N = 1024
        M = N * 2
        def get_inputs():
            return [torch.randn(M)]
        def get_init_inputs():
            return []
    """))
    assert probe_task(load_task(str(derived), sets=["N=3"])).outputs == (((6,), "float32"),)
    with pytest.raises(TaskError, match="no module-level constant 'K'") as e:
        load_task(str(derived), sets=["K=3"])
    assert "N, M" in e.value.hint
    with pytest.raises(TaskError):
        parse_sets(["N"])


def test_user_class_with_inputs_and_init_args(user_file):
    task = load_task(f"{user_file}:Scale", inputs=["float32[4,16]"], init_args="[16]")
    assert task.name == "Scale" and task.class_name == "Scale"
    assert probe_task(task).outputs == (((4, 16), "float32"),)
    kw = load_task(f"{user_file}:Scale", inputs=["float32[2,8]"], init_args='{"dim": 8, "eps": 0.5}')
    assert probe_task(kw).outputs == (((2, 8), "float32"),)


@pytest.mark.parametrize(
    "target, extra, message",
    [
        ("missing.py", [], "no such file"),
        ("{f}:Nope", ["--input", "float32[2]"], "has no class 'Nope'"),
        ("{f}:NotAModule", ["--input", "float32[2]"], "not a torch.nn.Module"),
        ("{f}:Scale", ["--input", "float32[4,17]", "--init-args", "[16]"], "forward failed on the given inputs"),
        ("{f}:ReturnsInt", ["--input", "float32[2]"], "not a tensor"),
        ("{f}:Scale", ["--input", "float32[4,16]:oops", "--init-args", "[16]"], "unknown generator"),
        ("{f}:Scale", ["--init-args", "[16]"], "no get_inputs() and no --input"),
        ("{f}:Scale", ["--input", "float32[4]", "--init-args", "[16"], "not valid JSON"),
    ],
)
def test_bad_input_is_one_line_exit_1(user_file, tmp_path, target, extra, message):
    proc = subprocess.run(KOPT + ["init", target.format(f=user_file), *extra, "--out", str(tmp_path / "t.py")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "hint: " in proc.stderr
    assert not (tmp_path / "t.py").exists()


def test_init_writes_a_standalone_runnable_task(user_file, tmp_path):
    out = tmp_path / "scale_task.py"
    proc = subprocess.run(KOPT + ["init", f"{user_file}:Scale", "--input", "float32[3,5]", "--init-args", "[5]",
                                  "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = subprocess.run([sys.executable, str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "shape (3, 5)" in run.stdout
    # The written file is itself a task, and init refuses to overwrite it.
    assert probe_task(load_task(str(out))).outputs == (((3, 5), "float32"),)
    again = subprocess.run(KOPT + ["init", f"{user_file}:Scale", "--input", "float32[3,5]", "--init-args", "[5]",
                                   "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 1 and "--force" in again.stderr


def test_help_is_fast():
    import time

    t0 = time.perf_counter()
    proc = subprocess.run(KOPT + ["--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "optimize" in proc.stdout
    # Not a timing assertion on kopt's speed: a guard that --help imports no torch/vllm (checked directly).
    check = subprocess.run([sys.executable, "-c", "import sys, kopt.cli; "
                            "print(sorted(m for m in ('torch', 'vllm', 'transformers', 'matplotlib') if m in sys.modules))"],
                           capture_output=True, text=True)
    assert check.stdout.strip() == "[]", check.stdout
    assert time.perf_counter() - t0 < 30


def test_init_copies_only_the_class_asked_for_and_what_it_needs(tmp_path):
    src = tmp_path / "net.py"
    src.write_text(textwrap.dedent(
        """
        import math
        import torch
        import torch.nn as nn

        SCALE = 2.0


        def helper(x):
            return x * SCALE


        class Op(nn.Module):
            def forward(self, x):
                return helper(x) + math.pi


        class Network(nn.Module):
            def __init__(self):
                super().__init__()
                self.op = Op()


        def train():
            raise SystemExit("training loop")


        if __name__ == "__main__":
            train()
        """))
    out = tmp_path / "op_task.py"
    proc = subprocess.run(KOPT + ["init", f"{src}:Op", "--input", "float32[2,3]", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "class Op" in text and "def helper" in text and "SCALE = 2.0" in text and "import math" in text
    assert "class Network" not in text and "def train" not in text and "training loop" not in text
    run = subprocess.run([sys.executable, str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0 and "shape (2, 3)" in run.stdout, run.stderr


def test_parse_input_scalars():
    assert parse_input("0.5").to_python() == "0.5"
    assert parse_input("int:3").to_python() == "3" and parse_input("3").kind == "scalar"
    assert parse_input("float:2").to_python() == "2.0"
    assert parse_input("bool:true").to_python() == "True" and parse_input("false").to_python() == "False"
    assert parse_input("float32[]").shape == () and parse_input("float32[]").kind == "randn"
    with pytest.raises(TaskError, match="not an integer"):
        parse_input("int:3.5")
    with pytest.raises(TaskError) as e:
        parse_input("nonsense")
    assert ":rand" in e.value.hint and ":ones" in e.value.hint and ":zeros" in e.value.hint and "int:3" in e.value.hint


def test_scalar_inputs_reach_forward(tmp_path):
    src = tmp_path / "scaled.py"
    src.write_text(textwrap.dedent(
        """
        import torch.nn as nn


        class Scaled(nn.Module):
            def forward(self, x, alpha: float, times: int, flip: bool):
                assert isinstance(alpha, float) and isinstance(times, int) and isinstance(flip, bool)
                return (-x if flip else x) * alpha * times
        """))
    task = load_task(f"{src}:Scaled", inputs=["float32[4,2]", "0.5", "int:3", "bool:true"])
    assert probe_task(task).outputs == (((4, 2), "float32"),)
