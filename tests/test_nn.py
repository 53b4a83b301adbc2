"""fastnst.nn modules and accelerate(): drop-in behaviour, state_dict compatibility, fusion."""

import pytest
import torch
import torch.nn as nn

import fastnst
from fastnst import nn as fnn
from fastnst import reference
from fastnst.bench.examples import ExTransformerNet


def test_instance_norm_is_a_drop_in():
    for affine in (False, True):
        ref = nn.InstanceNorm2d(16, affine=affine)
        if affine:
            with torch.no_grad():
                ref.weight.normal_()
                ref.bias.normal_()
        ours = fnn.InstanceNorm2d(16, affine=affine)
        assert list(ours.state_dict()) == list(ref.state_dict())
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(3, 16, 9, 11)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours(x[0]), ref(x[0]), rtol=1e-4, atol=1e-5)  # unbatched
    with pytest.raises(ValueError, match="track_running_stats=True is not supported"):
        fnn.InstanceNorm2d(4, track_running_stats=True)
    with pytest.raises(ValueError, match=r"input must be \[B, 16, H, W\], got \[1, 8, 4, 4\]"):
        fnn.InstanceNorm2d(16)(torch.randn(1, 8, 4, 4))


def test_instance_norm_relu():
    m = fnn.InstanceNormReLU(8, affine=True)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(m(x), torch.relu(nn.functional.instance_norm(x, weight=m.weight, bias=m.bias)),
                               rtol=1e-4, atol=1e-5)


def test_conditional_instance_norm():
    m = fnn.ConditionalInstanceNorm2d(3, 8)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    x = torch.randn(2, 8, 6, 6)
    ref = lambda w, b: reference.instance_norm(x, w, b)  # noqa: E731
    torch.testing.assert_close(m(x, 1), ref(m.weight[1].expand(2, -1), m.bias[1].expand(2, -1)))
    idx = torch.tensor([2, 0])
    torch.testing.assert_close(m(x, idx), ref(m.weight[idx], m.bias[idx]))
    mix = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]])
    torch.testing.assert_close(m(x, mix), ref(mix @ m.weight, mix @ m.bias), rtol=1e-5, atol=1e-5)
    m(x, mix).sum().backward()
    assert m.weight.grad is not None and m.bias.grad.shape == (3, 8)
    with pytest.raises(ValueError, match=r"style index must be in \[0, 3\), got 3"):
        m(x, 3)
    with pytest.raises(ValueError, match=r"style weights must be \[B, num_styles\] = \[2, 3\]"):
        m(x, torch.ones(2, 4))


def test_adain_module():
    c, s = torch.randn(2, 4, 6, 6), torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(fnn.AdaIN(alpha=0.5)(c, s), fastnst.adain(c, s, 0.5))


class ConvLayer(nn.Module):
    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.reflection_pad = nn.ReflectionPad2d(k // 2)
        self.conv2d = nn.Conv2d(cin, cout, k, stride)

    def forward(self, x):
        return self.conv2d(self.reflection_pad(x))


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(ConvLayer(c, c, 3, 1), nn.InstanceNorm2d(c, affine=True), nn.ReLU(),
                                  ConvLayer(c, c, 3, 1), nn.InstanceNorm2d(c, affine=True))

    def forward(self, x):
        return x + self.body(x)


def transformer_net():
    """Johnson's TransformerNet layout (REFERENCE.md), with its blocks as Sequentials."""
    def up(cin, cout):
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), ConvLayer(cin, cout, 3, 1),
                             nn.InstanceNorm2d(cout, affine=True), nn.ReLU())
    net = nn.Sequential(
        ConvLayer(3, 32, 9, 1), nn.InstanceNorm2d(32, affine=True), nn.ReLU(),
        ConvLayer(32, 64, 3, 2), nn.InstanceNorm2d(64, affine=True), nn.ReLU(),
        ConvLayer(64, 128, 3, 2), nn.InstanceNorm2d(128, affine=True), nn.ReLU(),
        *[Residual(128) for _ in range(5)],
        up(128, 64), up(64, 32), ConvLayer(32, 3, 9, 1))
    for m in net.modules():
        if isinstance(m, nn.InstanceNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return net


def _working_modules(model):
    return sum(1 for m in model.modules() if not list(m.children()) and not isinstance(m, nn.Identity))


def test_accelerate_transformer_net():
    net = transformer_net().eval()
    x = torch.rand(1, 3, 64, 64) * 255
    before = net(x)
    keys = list(net.state_dict())
    n_before = _working_modules(net)
    out = fastnst.accelerate(net)
    assert out is net
    assert list(net.state_dict()) == keys  # checkpoints still load
    assert _working_modules(net) == n_before - 10  # ten IN + ReLU pairs fused
    assert sum(isinstance(m, fnn.InstanceNormReLU) for m in net.modules()) == 10
    assert sum(type(m) is fnn.InstanceNorm2d for m in net.modules()) == 5  # the residuals' second IN
    assert not any(type(m) is nn.InstanceNorm2d for m in net.modules())
    torch.testing.assert_close(net(x), before, rtol=1e-3, atol=1e-3)
    assert accelerate_report_mentions("replaced 15, left 0")


def accelerate_report_mentions(text):
    return any(text in line for line in fastnst.accelerate.last_report)


def test_accelerate_training_step_matches():
    # Gradients of every parameter as close to float64 as plain PyTorch's float32 ones (conv
    # biases in front of an instance norm have a true gradient of 0: only noise to compare).
    torch.manual_seed(0)
    a, b, a64 = transformer_net(), transformer_net(), transformer_net().double()
    b.load_state_dict(a.state_dict())
    a64.load_state_dict(a.state_dict())
    fastnst.accelerate(b)
    x = torch.rand(2, 3, 32, 32)
    for m in (a, b, a64):
        m(x.to(next(m.parameters()).dtype)).square().mean().backward()
    pa, pb, p64 = dict(a.named_parameters()), dict(b.named_parameters()), dict(a64.named_parameters())
    scale = max(p.grad.abs().max().item() for p in p64.values())
    for name, ref in p64.items():
        err_torch = (pa[name].grad.double() - ref.grad).abs().max().item()
        err_ours = (pb[name].grad.double() - ref.grad).abs().max().item()
        assert err_ours <= 3 * err_torch + 1e-6 * scale, name


def test_accelerate_johnson_transformer_net_keys_and_output():
    from fastnst.models.transformer import TransformerNet

    torch.manual_seed(0)
    net = TransformerNet().eval()
    for m in net.modules():
        if isinstance(m, nn.InstanceNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
    keys = list(net.state_dict())
    assert len(keys) == 62 and "res3.in2.bias" in keys and "deconv1.conv2d.weight" in keys
    x = torch.rand(1, 3, 48, 48) * 255
    before = net(x)
    fastnst.accelerate(net)
    assert list(net.state_dict()) == keys
    assert sum(isinstance(m, fnn.InstanceNormReLU) for m in net.modules()) == 10
    assert accelerate_report_mentions("replaced 15, left 0")
    torch.testing.assert_close(net(x), before, rtol=1e-3, atol=1e-2)


def test_accelerate_leaves_what_it_cannot_serve():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4, track_running_stats=True), nn.ReLU(),
                          nn.InstanceNorm1d(4), nn.Linear(4, 2))
    before = [type(m) for m in model.modules()]
    fastnst.accelerate(model)
    assert [type(m) for m in model.modules()] == before  # unchanged
    assert accelerate_report_mentions("replaced 0, left 2")
    assert accelerate_report_mentions("1: track_running_stats=True")
    plain = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
    assert [type(m) for m in fastnst.accelerate(plain).modules()] == [nn.Sequential, nn.Conv2d, nn.ReLU]


# ---- accelerate on users' own code: the ReLU called in forward (torch.fx) ----------------------
# pytorch/examples' TransformerNet (fastnst.bench.examples): the forward calls the ReLU itself,
# so module replacement alone cannot fuse it.


def _randomise_norms(net):
    for m in net.modules():
        if isinstance(m, nn.InstanceNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return net


def _count(model, cls):
    return sum(type(m) is cls for m in model.modules())


def test_accelerate_fuses_relus_called_in_forward_with_fx():
    torch.manual_seed(0)
    net = _randomise_norms(ExTransformerNet()).eval()
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    keys = list(sd)
    assert len(keys) == 62
    x = torch.rand(1, 3, 32, 32) * 255
    before = net(x)
    fast = fastnst.accelerate(net)
    assert fastnst.accelerate.last_method == "fx" and accelerate_report_mentions("method: fx")
    assert accelerate_report_mentions("replaced 15, left 0")
    assert isinstance(fast, torch.fx.GraphModule) and isinstance(fast, nn.Module) and fast is not net
    # in1..in5 and each residual block's in1 are fused; the blocks' in2 (then "+ x") are not.
    assert _count(fast, fnn.InstanceNormReLU) == 10 and _count(fast, fnn.InstanceNorm2d) == 5
    assert {n for n, m in fast.named_modules() if type(m) is fnn.InstanceNorm2d} == \
        {f"res{k}.in2" for k in range(1, 6)}
    assert not any(type(m) is nn.InstanceNorm2d for m in fast.modules())
    calls = [n for n in fast.graph.nodes if n.op == "call_module"]
    assert not any(type(fast.get_submodule(n.target)) is nn.ReLU for n in calls)  # the ReLUs are gone
    # Checkpoints: the same keys in the same order, and the original's load strictly.
    assert list(fast.state_dict()) == keys
    fast.load_state_dict(sd, strict=True)
    torch.testing.assert_close(fast(x), before, rtol=1e-3, atol=1e-2)
    # The model passed in is accelerated in place (norms replaced, its ReLUs kept) and shares
    # its parameters with the returned module.
    assert _count(net, fnn.InstanceNorm2d) == 15 and _count(net, fnn.InstanceNormReLU) == 0
    torch.testing.assert_close(net(x), before, rtol=1e-3, atol=1e-2)
    assert fast.in1.weight is net.in1.weight and fast.res3.in1.bias is net.res3.in1.bias
    assert {id(p) for p in fast.parameters()} == {id(p) for p in net.parameters()}


def test_accelerate_fx_gradients_match():
    # Every parameter's gradient as close to float64 as plain PyTorch's float32 one.
    torch.manual_seed(0)
    a = _randomise_norms(ExTransformerNet())
    b, a64 = ExTransformerNet(), ExTransformerNet().double()
    b.load_state_dict(a.state_dict())
    a64.load_state_dict(a.state_dict())
    b = fastnst.accelerate(b)
    assert fastnst.accelerate.last_method == "fx"
    x = torch.rand(2, 3, 24, 24)
    outs = [m(x.to(next(m.parameters()).dtype)) for m in (a, b, a64)]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)
    for y in outs:
        y.square().mean().backward()
    pa, pb, p64 = dict(a.named_parameters()), dict(b.named_parameters()), dict(a64.named_parameters())
    assert set(pb) == set(p64)
    scale = max(p.grad.abs().max().item() for p in p64.values())
    for name, ref in p64.items():
        err_torch = (pa[name].grad.double() - ref.grad).abs().max().item()
        err_ours = (pb[name].grad.double() - ref.grad).abs().max().item()
        assert err_ours <= 3 * err_torch + 1e-6 * scale, name


class ReluForms(nn.Module):
    """One norm per way of writing the ReLU, and three norms that must stay unfused."""

    def __init__(self, c=4):
        super().__init__()
        for name in ("a", "b", "c", "d", "e", "f", "shared", "used_twice", "last"):
            setattr(self, name, nn.InstanceNorm2d(c, affine=True))
        self.relu_ = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.relu_(self.a(x))  # nn.ReLU(inplace=True)
        x = nn.functional.relu(self.b(x))
        x = nn.functional.relu(self.c(x), inplace=True)
        x = torch.relu(self.d(x))
        x = self.e(x).relu()
        x = torch.relu_(self.f(x)) * 1.5
        x = torch.relu(self.shared(x)) + self.shared(x) * 0.5  # called once without a ReLU
        y = self.used_twice(x)
        x = torch.relu(y) - 0.25 * y  # the output is used by something else than the ReLU
        return torch.relu(self.last(x) + 1)  # the ReLU is not on the norm's output


def test_accelerate_fx_recognises_each_relu_form_and_no_more():
    torch.manual_seed(0)
    model = _randomise_norms(ReluForms())
    x = torch.randn(2, 4, 5, 6)
    before = model(x.clone())
    fast = fastnst.accelerate(model)
    assert fastnst.accelerate.last_method == "fx"
    fused = {n for n, m in fast.named_modules() if type(m) is fnn.InstanceNormReLU}
    assert fused == set("abcdef")
    plain = {n for n, m in fast.named_modules() if type(m) is fnn.InstanceNorm2d}
    assert plain == {"shared", "used_twice", "last"}
    torch.testing.assert_close(fast(x.clone()), before, rtol=1e-4, atol=1e-4)
    assert accelerate_report_mentions("a + the ReLU its forward applies")


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.InstanceNorm2d(4, affine=True)
        self.relu = nn.ReLU()

    def forward(self, x):
        if x.mean() > 0:  # data-dependent control flow: fx cannot trace this
            x = -x
        return self.relu(self.norm(self.conv(x)))


def test_accelerate_falls_back_to_module_replacement_when_fx_fails():
    torch.manual_seed(0)
    model = _randomise_norms(Branchy())
    x = torch.randn(1, 3, 8, 8)
    before = model(x)
    out = fastnst.accelerate(model)
    assert out is model and type(model.norm) is fnn.InstanceNorm2d
    assert fastnst.accelerate.last_method == "modules"
    assert accelerate_report_mentions("method: modules (torch.fx could not trace forward: TraceError")
    assert not hasattr(model, "_tensor_constant0")
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4)
    # trace=False: module replacement only, the same for a traceable model.
    net = ExTransformerNet()
    assert fastnst.accelerate(net, trace=False) is net and fastnst.accelerate.last_method == "modules"
    assert _count(net, fnn.InstanceNorm2d) == 15


class WithState(nn.Module):
    """State the graph does not read, a non-persistent buffer and a constant made in forward."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.unused = nn.Parameter(torch.zeros(3))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("cache", torch.ones(1), persistent=False)
        self.body = nn.Sequential(nn.Conv2d(2, 4, 1))
        self.norm = nn.InstanceNorm2d(4)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.body(x) * self.scale + torch.tensor([0.5])
        return self.relu(self.norm(x)) * self.cache


def test_accelerate_fx_keeps_the_state_dict_exactly():
    model = WithState()
    keys = list(model.state_dict())
    x = torch.randn(2, 2, 4, 4)
    before = model(x)
    attrs = set(vars(model))
    fast = fastnst.accelerate(model)
    assert fastnst.accelerate.last_method == "fx" and type(fast.norm) is fnn.InstanceNormReLU
    assert set(vars(model)) == attrs  # the tracer's constants were not left on the model
    assert list(fast.state_dict()) == keys == ["scale", "unused", "steps", "body.0.weight", "body.0.bias"]
    fast.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(fast(x), before, rtol=1e-4, atol=1e-4)
    assert fast.double()(x.double()).dtype == torch.float64  # constants follow .to()


def test_accelerate_fx_finds_nothing_more_returns_the_model():
    net = transformer_net()  # its ReLUs sit in Sequentials: module replacement fuses them all
    assert fastnst.accelerate(net) is net
    assert fastnst.accelerate.last_method == "modules"
    assert accelerate_report_mentions("no ReLU left to fuse")
