"""The prompt stage: templates render, user templates are checked, code comes back out, dedupe keys."""

from __future__ import annotations

import ast
import textwrap

import pytest

from kopt.errors import KoptError
from kopt.prompt import build_prompt, extract_code, normalize_code
from kopt.task import Task

REF = textwrap.dedent(
    """\
    import torch
    import torch.nn as nn


    class Model(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.dim = dim

        def forward(self, x):
            return torch.softmax(x, dim=self.dim)


    def get_inputs():
        return [torch.rand(16, 256)]


    def get_init_inputs():
        return [1]
    """
)


def _task(source: str = REF, name: str = "softmax") -> Task:
    return Task(name=name, source=source, target="softmax.py", path="/x/softmax.py", class_name="Model", hash="h")


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_builtin_templates_render(target):
    p = build_prompt(_task(), target)
    assert p.target == target
    assert p.system and "expert" in p.system
    assert REF.strip() in p.user and "(softmax)" in p.user
    assert "$" not in p.user.replace(REF, "")  # every placeholder substituted
    assert "one ```python code block and no other text" in p.user
    assert "atol=1e-4" in p.user and "load_inline" in p.user
    # C++ braces survive string.Template.
    assert "#include <torch/extension.h>" in p.user and "{\n" in p.user
    assert p.as_messages() == [{"role": "system", "content": p.system}, {"role": "user", "content": p.user}]
    assert p.as_text() == p.system + "\n\n" + p.user
    # The reply we ask for must come back out: the task block is last and defines Model, not ModelNew, so the
    # one-shot example's ModelNew is what extract_code finds in the prompt itself.
    assert "class ModelNew" in extract_code(p.user)


def test_hash_tracks_content():
    a, b = build_prompt(_task(), "cpu"), build_prompt(_task(), "cpu")
    assert a.hash == b.hash and len(a.hash) == 64
    assert build_prompt(_task(REF.replace("256", "512")), "cpu").hash != a.hash
    assert build_prompt(_task(), "cuda").hash != a.hash


def test_user_template(tmp_path):
    t = tmp_path / "t.txt"
    t.write_text("Speed up $task_name (cost $$5):\n$reference_source\nvoid f() { return; }\n")
    p = build_prompt(_task(), "cpu", template=t)
    assert p.system is None
    assert p.user.startswith("Speed up softmax (cost $5):\nimport torch")
    assert p.user.endswith("void f() { return; }")
    assert p.as_text() == p.user and p.as_messages() == [{"role": "user", "content": p.user}]

    t.write_text("[system]\nBe terse.\n[user]\nDo $task_name")
    p = build_prompt(_task(), "cpu", template=t)
    assert (p.system, p.user) == ("Be terse.", "Do softmax")


def test_user_template_errors(tmp_path):
    t = tmp_path / "t.txt"
    t.write_text("Optimise $reference_code please")
    with pytest.raises(KoptError) as e:
        build_prompt(_task(), "cpu", template=t)
    assert "$reference_code" in e.value.message and str(t) in e.value.message
    assert "$reference_source" in e.value.hint
    t.write_text("costs $ 5")
    with pytest.raises(KoptError, match="bad placeholder"):
        build_prompt(_task(), "cpu", template=t)
    with pytest.raises(KoptError, match="cannot read prompt template"):
        build_prompt(_task(), "cpu", template=tmp_path / "missing.txt")
    with pytest.raises(KoptError, match="unknown target"):
        build_prompt(_task(), "tpu")


def test_extract_code_takes_last_python_block_with_modelnew():
    draft = "```python\nclass ModelNew(nn.Module):\n    draft = 1\n```"
    final = "```py\nimport torch\n\nclass ModelNew(nn.Module):\n    final = 2\n```"
    other = "```python\nprint('no model here')\n```"
    cpp = "```cpp\nclass ModelNew {};\n```"
    text = f"Here:\n{draft}\nBetter:\n{final}\n{other}\n{cpp}\nDone."
    assert extract_code(text) == "import torch\n\nclass ModelNew(nn.Module):\n    final = 2\n"
    assert extract_code("```\nclass ModelNew(nn.Module):\n    pass\n```") == "class ModelNew(nn.Module):\n    pass\n"
    assert extract_code("no code at all") is None
    assert extract_code(other) is None
    assert extract_code(cpp) is None
    # Truncated at max_tokens: the fence never closes, the code is incomplete.
    assert extract_code("```python\nclass ModelNew(nn.Module):\n    def forward(self") is None
    # A class named ModelNewer is not ModelNew.
    assert extract_code("```python\nclass ModelNewer:\n    pass\n```") is None


def test_normalize_code():
    a = 'import torch\n\n\nclass ModelNew:  # fast\n    def f(self, x):\n        return x+1   # add\nS = "a  b"\n'
    b = 'import torch\nclass ModelNew :\n    # a comment line\n    def f( self,x ):\n        return x + 1\nS = "a  b"\n'
    c = a.replace('"a  b"', '"a b"')  # the C++ lives in strings: a change there is a different kernel
    d = a.replace("return x+1", "return x+2")
    assert normalize_code(a) == normalize_code(b)
    assert normalize_code(a) != normalize_code(c)
    assert normalize_code(a) != normalize_code(d)
    # Indentation is structure: moving a statement out of the function changes the key.
    e = "def f():\n    x = 1\n    y = 2\n"
    f = "def f():\n    x = 1\ny = 2\n"
    assert normalize_code(e) != normalize_code(f)
    # Not Python at all: still a stable key.
    assert normalize_code("def (:\n  x   y\n") == normalize_code("def (:\nx y")


def test_cuda_example_is_valid_python():
    p = build_prompt(_task(), "cuda")
    code = extract_code(p.user)
    ast.parse(code)
    assert "__global__ void elementwise_add_kernel" in code and "cuda_sources=cuda_source" in code


def test_cpu_example_passes_kopts_own_evaluator(tmp_path):
    """The one-shot CPU example is real: it passes the static gate, compiles, and is correct on an add task.

    (Run through the evaluator rather than a bare load_inline, which would delete the precompiled header.)
    """
    from kopt.evaluator import EvalSettings, Evaluator
    from kopt.records import Status
    from kopt.task import load_task

    code = extract_code(build_prompt(_task(), "cpu").user)
    task_file = tmp_path / "add.py"
    task_file.write_text(textwrap.dedent(
        """\
        import torch
        import torch.nn as nn


        class Model(nn.Module):
            def forward(self, a, b):
                return a + b


        def get_inputs():
            return [torch.rand(3, 1000), torch.rand(3, 1000)]


        def get_init_inputs():
            return []
        """))
    with Evaluator(load_task(str(task_file)), EvalSettings(target="cpu", jobs=1)) as ev:
        [verdict] = ev.check([code])
    assert verdict.status is Status.CORRECT, verdict.reason
