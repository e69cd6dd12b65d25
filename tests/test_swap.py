"""`kopt.swap` with a real compiled C++ kernel that has weights: what is replaced, and gradients through it.

The kernel dir is written by kopt's own writer (kopt/output.py) for a hand-written correct candidate of
`models/scale.py:Scale` (y = x * weight + bias); torch compiles it once per module into a temp
TORCH_EXTENSIONS_DIR.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
from pathlib import Path

import pytest
from check_helpers import write_kernel

torch = pytest.importorskip("torch")
nn = torch.nn

REF = """import torch
import torch.nn as nn


class Scale(nn.Module):
    def __init__(self, n=256):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n))
        self.bias = nn.Parameter(torch.randn(n))

    def forward(self, x):
        return x * self.weight + self.bias


def get_inputs():
    return [torch.randn(8, 256)]


def get_init_inputs():
    return [256]
"""

CANDIDATE = '''import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

_source = r"""
#include <torch/extension.h>
torch::Tensor scale_shift(torch::Tensor x, torch::Tensor w, torch::Tensor b) {
    auto xc = x.contiguous();
    auto y = torch::empty_like(xc);
    const float* in = xc.data_ptr<float>();
    const float* pw = w.data_ptr<float>();
    const float* pb = b.data_ptr<float>();
    float* out = y.data_ptr<float>();
    const int64_t n = xc.numel(), d = w.numel();
    for (int64_t i = 0; i < n; ++i) out[i] = in[i] * pw[i % d] + pb[i % d];
    return y;
}
"""

_ext = load_inline(name="kopt_test_scale_shift", cpp_sources=_source, functions=["scale_shift"])


class ModelNew(nn.Module):
    def __init__(self, n=256):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        return _ext.scale_shift(x, self.weight.contiguous(), self.bias.contiguous())
'''


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    root = tmp_path_factory.mktemp("swap")
    (root / "models").mkdir()
    (root / "models" / "scale.py").write_text(REF)
    old = os.environ.get("TORCH_EXTENSIONS_DIR")
    os.environ["TORCH_EXTENSIONS_DIR"] = str(tmp_path_factory.mktemp("torch-ext"))
    kdir = write_kernel(root, ref_rel="models/scale.py", out_rel="kernels/Scale", code=CANDIDATE, cls="Scale",
                        init_args="[256]")
    spec = importlib.util.spec_from_file_location("user_scale", root / "models" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield kdir, module.Scale
    if old is None:
        os.environ.pop("TORCH_EXTENSIONS_DIR", None)
    else:
        os.environ["TORCH_EXTENSIONS_DIR"] = old


class Scale(nn.Module):
    """A user's network that is *also* called Scale (defined here, not in models/scale.py)."""

    def __init__(self, op: nn.Module):
        super().__init__()
        self.pre = nn.Linear(256, 256)
        self.op = op
        self.post = nn.Linear(256, 4)

    def forward(self, x):
        return self.post(torch.relu(self.op(self.pre(x))))


def test_only_the_recorded_class_is_replaced_and_swap_says_so(kernel, capfd):
    import kopt

    kdir, RefScale = kernel
    torch.manual_seed(0)
    net = Scale(RefScale(256))
    x = torch.randn(8, 256)
    with torch.no_grad():
        want = net(x)
    out = kopt.swap(net, kdir)
    assert out is net and type(net).__name__ == "Scale" and type(net.op).__name__ == "ModelNew"
    err = capfd.readouterr().err
    assert "replaced 1 Scale module (op)" in err and "backward" in err
    assert "compiles on first use" in err  # the first load says it may take a while
    with torch.no_grad():
        torch.testing.assert_close(net(x), want)


def test_a_same_named_class_from_elsewhere_is_refused_before_compiling(kernel):
    import kopt
    from kopt.errors import KoptError

    kdir, _ = kernel
    with pytest.raises(KoptError) as e:
        kopt.swap(Scale(nn.Identity()), kdir)
    assert "no " in e.value.message and "scale.py:Scale" in e.value.message
    assert "a different class with the same name" in e.value.hint and "test_swap.py" in e.value.hint


def test_gradients_through_the_kernel_are_the_references(kernel):
    import kopt

    kdir, RefScale = kernel
    torch.manual_seed(1)
    ref_net = Scale(RefScale(256))
    net = copy.deepcopy(ref_net)
    kopt.swap(net, kdir, quiet=True)
    x1 = torch.randn(8, 256, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    ref_net(x1).square().sum().backward()
    net(x2).square().sum().backward()
    assert x2.grad is not None
    torch.testing.assert_close(x2.grad, x1.grad)
    for (name, p_ref), (_, p) in zip(ref_net.named_parameters(), net.named_parameters()):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, p_ref.grad, msg=name)


def test_an_optimizer_made_before_the_swap_trains_what_the_kernel_reads(kernel):
    import kopt

    kdir, RefScale = kernel
    net = Scale(RefScale(256))
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    kopt.swap(net, kdir, quiet=True)
    x = torch.randn(8, 256)
    before = net.op.weight.detach().clone()
    net(x).sum().backward()
    opt.step()
    assert not torch.equal(net.op.weight.detach(), before)
    with torch.no_grad():  # the kernel's output follows the updated weights
        h = net.pre(x)
        torch.testing.assert_close(net.op(h), h * net.op.weight + net.op.bias)


def test_refuse_mode_raises_one_line_only_when_gradients_are_needed(kernel):
    import kopt

    kdir, RefScale = kernel
    net = Scale(RefScale(256))
    kopt.swap(net, kdir, gradients="refuse", quiet=True)
    with torch.no_grad():
        net(torch.randn(2, 256))
    with pytest.raises(RuntimeError, match="has no backward"):
        net(torch.randn(2, 256))


def test_swap_in_a_fresh_process_says_what_it_replaced(kernel, tmp_path):
    import subprocess

    kdir, _ = kernel
    script = f"""
import importlib.util, torch, kopt
spec = importlib.util.spec_from_file_location("m", {str(Path(kdir).parent.parent / 'models' / 'scale.py')!r})
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
net = torch.nn.Sequential(m.Scale(256), torch.nn.ReLU())
kopt.swap(net, {str(kdir)!r})
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ})
    assert res.returncode == 0, res.stderr
    assert "kopt.swap: replaced 1 Scale module (0)" in res.stderr
