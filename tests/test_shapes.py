"""Shape variants on real KernelBench problems (shrunk with kopt's own --set rewriting so they run in
milliseconds): the variant parses, the reference runs on it, every input dimension changes to an odd size,
ties stay tied, and a kernel that hard-codes columns in multiples of 512 fails it."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import pytest
import torch

from kopt.evaluator import judge
from kopt.evaluator.shapes import choose, combine, reference_accepts, shape_variants
from kopt.task import _apply_sets, load_task
from tests.conftest import KERNELBENCH

SHRUNK = {  # problem -> --set values that make it small; the variant then changes every size again
    "19_ReLU": {"batch_size": 16, "dim": 1024},
    "1_Square_matrix_multiplication_": {"N": 32},
    "47_Sum_reduction_over_a_dimension": {"batch_size": 4, "dim1": 64, "dim2": 63},
    "40_LayerNorm": {"batch_size": 2, "features": 4, "dim1": 8, "dim2": 8},
    "95_CrossEntropyLoss": {"batch_size": 16, "num_classes": 10},
    "54_conv_standard_3D__square_input__square_kernel": {"batch_size": 1, "depth": 6, "width": 6, "height": 6,
                                                          "out_channels": 2},
    "10_3D_tensor_matrix_multiplication": {"N": 2, "M": 8, "K": 16, "L": 12},
}


def _task(name: str) -> str:
    path = KERNELBENCH / f"{name}.py"
    if not path.exists():
        pytest.skip(f"{path} is not here")
    return _apply_sets(path.read_text(), SHRUNK.get(name, {}), path)


def _module(source: str):
    module = types.ModuleType("t")
    exec(compile(source, "<task>", "exec"), module.__dict__)  # noqa: S102 - KernelBench's own task source
    return module


def _shapes(source: str) -> list[tuple[int, ...]]:
    torch.manual_seed(0)
    return [tuple(x.shape) for x in _module(source).get_inputs() if isinstance(x, torch.Tensor)]


def _dims(shapes):
    return [d for shape in shapes for d in shape]


@pytest.mark.parametrize("name", [n for n in SHRUNK if not n.startswith("54_")])
def test_variant_changes_every_input_dimension_and_the_reference_runs_it(name):
    source = _task(name)
    variants = shape_variants(source)
    first = variants[0]
    assert first.complete and first.description
    ast.parse(first.source)
    chosen, notes = choose(source, reference_accepts)
    assert chosen == [first] and notes == []
    before, after = _dims(_shapes(source)), _dims(_shapes(first.source))
    assert len(before) == len(after)
    for old, new in zip(before, after):
        if old >= 2:
            assert new != old and new % 2 == 1, (name, before, after)
    for i in range(len(before)):  # equal sizes stay equal, distinct ones stay distinct
        for j in range(len(before)):
            if before[i] >= 2 and before[j] >= 2:
                assert (before[i] == before[j]) == (after[i] == after[j]), (name, before, after)


def test_descriptions_and_ties():
    v = shape_variants(_task("19_ReLU"))[0]
    assert v.description == "batch_size 16->17, dim 1024->1025"
    assert _shapes(v.source) == [(17, 1025)]
    square = shape_variants(_task("1_Square_matrix_multiplication_"))
    assert len(square) == 1 and square[0].description == "N 32->33"
    assert _shapes(square[0].source) == [(33, 33), (33, 33)]
    # KernelBench writes N = 2048 * 2: the expression becomes the new value
    raw = shape_variants((KERNELBENCH / "1_Square_matrix_multiplication_.py").read_text())[0]
    assert raw.description == "N 4096->4097" and "N = 4097" in raw.source
    reduce = shape_variants(_task("47_Sum_reduction_over_a_dimension"))[0]
    assert _module(reduce.source).reduce_dim == 1  # an axis, read only by get_init_inputs


def test_init_only_names_are_kept_and_a_shared_name_stays_tied():
    source = _task("54_conv_standard_3D__square_input__square_kernel")
    v = shape_variants(source)[0]
    m = _module(v.source)
    assert m.kernel_size == 3 and m.out_channels == 2  # read by get_init_inputs only
    assert m.in_channels == 5 and m.get_init_inputs()[0] == 5  # read by both: the conv is built for it
    assert reference_accepts(v.source) is None
    assert [d % 2 for d in _shapes(v.source)[0]] == [1, 1, 1, 1, 1]


def test_literal_channel_falls_back_to_the_sizes_the_reference_accepts():
    path = KERNELBENCH / "50_conv_standard_2D__square_input__square_kernel.py"
    if not path.exists():
        pytest.skip("no KernelBench")
    source = _apply_sets(path.read_text(), {"batch_size": 1}, path)
    variants = shape_variants(source)
    assert variants[0].description == "literal 3->5, literal 224->225"  # batch_size 1 is below 2: not a size
    assert reference_accepts(variants[0].source) is not None  # the Conv2d has in_channels=3 written in
    chosen, notes = choose(source, reference_accepts)
    assert len(chosen) == 1 and chosen[0].description == "literal 224->225"
    assert _shapes(chosen[0].source) == [(1, 3, 225, 225)]
    assert any("fails with every size changed" in n for n in notes)
    assert any("keeps literal 3" in n for n in notes)


def test_combine_keeps_what_the_reference_accepts():
    source = _task("10_3D_tensor_matrix_multiplication")
    variants = shape_variants(source)
    assert len(variants) == 5 and all(not v.complete for v in variants[1:])
    both = combine(source, ["M", "L"])
    assert both.description == "M 8->9, L 12->13" and _shapes(both.source) == [(2, 9, 16), (16, 13)]

    def rejects_k(src: str) -> str | None:  # a stand-in reference that only takes K = 16
        return None if _module(src).K == 16 else "K must be 16"

    chosen, notes = choose(source, rejects_k)
    assert [v.description for v in chosen] == ["N 2->3, M 8->9, L 12->13"]
    assert "keeps K" in notes[-1]
    none, why = choose(source, lambda src: "never")
    assert none == [] and "accepts no other size" in why[-1]


def _relu_512(x):
    """A kernel that handles columns in multiples of 512 and silently drops the rest."""
    out = torch.zeros_like(x)
    cols = x.shape[1] // 512 * 512
    for c in range(0, cols, 512):
        out[:, c:c + 512] = torch.relu(x[:, c:c + 512])
    return out


def test_a_kernel_hard_coding_512_columns_fails_the_variant():
    source = _task("19_ReLU")
    model = _module(source).Model()
    x = torch.randn(16, 1024)
    assert judge.compare_all([_relu_512(x)], [model(x)], None, None) is None  # passes at the task's shape
    variant = shape_variants(source)[0]
    torch.manual_seed(1)
    (xv,) = _module(variant.source).get_inputs()
    xv = torch.randn_like(xv)
    assert judge.compare_all([_relu_512(xv)], [model(xv)], None, None) is not None


def test_names_other_code_reads_are_frozen_and_odd_cases():
    frozen = (
        "import torch\nrows = 8\ncols = 6\nscale: int = 4\n"
        "class Model(torch.nn.Module):\n    def forward(self, x):\n        return x.view(rows, -1)\n"
        "def get_inputs():\n    return [torch.rand(rows, cols * scale), torch.randint(0, 5, (cols,))]\n"
        "def get_init_inputs():\n    return []\n"
    )
    v = shape_variants(frozen)
    assert v[0].description == "cols 6->7, scale 4->5"  # rows: Model reads it, the candidate's copy would not change
    assert _shapes(v[0].source) == [(8, 35), (7,)]
    assert shape_variants("x = (") == [] and shape_variants("n = 4\ndef get_init_inputs():\n    return [n]\n") == []
    assert shape_variants("import torch\nflag = True\ndef get_inputs():\n    return [torch.rand(1, 1) * flag]\n") == []
    unicode = "import torch\nn = 4  # größe\nlabel = 'ü'; m = 6\ndef get_inputs():\n    return [torch.rand(n, m)]\n"
    assert _shapes(shape_variants(unicode)[0].source) == [(5, 7)]


def test_kopt_input_footer_sizes_change(tmp_path: Path):
    src = tmp_path / "mine.py"
    src.write_text("import torch\n\nclass Scale(torch.nn.Module):\n    def forward(self, x, y):\n"
                   "        return x * 2 + y.sum()\n")
    task = load_task(f"{src}:Scale", inputs=["float32[512,1024]", "float32[512]"])
    v = shape_variants(task.source)[0]
    assert v.description == "literal 512->513, literal 1024->1025"
    assert _shapes(v.source) == [(513, 1025), (513,)]
    assert reference_accepts(v.source) is None


def test_a_size_that_needs_a_factor_gets_three_halves():
    path = KERNELBENCH / ("75_conv_transposed_2D_asymmetric_input_asymmetric_kernel_strided__grouped____padded____"
                          "dilated__.py")
    if not path.exists():
        pytest.skip("no KernelBench")
    source = _apply_sets(path.read_text(), {"batch_size": 2, "in_channels": 32, "height": 12, "width": 14}, path)
    assert "divisible by groups" in reference_accepts(shape_variants(source)[0].source)
    chosen, notes = choose(source, reference_accepts)
    assert [v.description for v in chosen] == ["batch_size 2->3, in_channels 32->48, height 12->13, width 14->15"]
    assert chosen[0].complete and "in_channels 3/2 as large" in notes[-1]
    assert _shapes(chosen[0].source) == [(3, 48, 13, 15)]


def test_reference_accepts_gives_the_task_its_file(tmp_path: Path):
    (tmp_path / "n.txt").write_text("3")
    src = ("import torch, os\nk = int(open(os.path.join(os.path.dirname(__file__), 'n.txt')).read())\nm = 6\n"
           "class Model(torch.nn.Module):\n    def forward(self, x):\n        return x * k\n"
           "def get_inputs():\n    return [torch.rand(m)]\ndef get_init_inputs():\n    return []\n")
    v = shape_variants(src)[0]
    assert v.description == "m 6->7"
    assert reference_accepts(v.source) is not None  # no __file__: the task cannot find its data
    assert reference_accepts(v.source, filename=str(tmp_path / "task.py")) is None
