"""Instance norm + ReLU (fwd, fwd+bwd), AdaIN and mean_std (fwd), and Johnson's
TransformerNet before and after fastnst.accelerate() (CPU).

The ops run against the eager reference (``F.instance_norm`` + ReLU; the AdaIN port's
``calc_mean_std`` with ``torch.var``) and torch.compile of it; rates are GB/s of the tensors
each call must read and write once (IN fwd: x and y; fwd+bwd: x, y, then grad, x, y and dx;
AdaIN: content, style, output; mean_std: its input).

"fwd+bwd y.sum()" (the first IN shape): the same step with the loss ``y.sum()``, whose
gradient is an expanded scalar (stride 0 everywhere) that the backward reads in place, next to
"fwd+bwd" with a dense gradient; its rate counts x, y, then y (the sum), x, y and dx.
"""

from __future__ import annotations

import torch

import fastnst
from fastnst import bench, reference

IN_SHAPES = [("IN+ReLU 32x256²", (4, 32, 256, 256)), ("IN+ReLU 64x128²", (4, 64, 128, 128)),
             ("IN+ReLU 128x64²", (4, 128, 64, 64))]
ADAIN_SHAPES = [("AdaIN relu4_1@512", (1, 512, 64, 64)), ("AdaIN relu4_1@1024", (1, 512, 128, 128))]
QUICK_IN_SHAPES = [("IN+ReLU 32x64²", (2, 32, 64, 64))]
QUICK_ADAIN_SHAPES = [("AdaIN 512x32²", (1, 512, 32, 32))]


def _fwd(x):
    return lambda fn: (lambda: fn(x))


def _fwd_bwd(x):
    xg = x.detach().requires_grad_()
    g = torch.randn_like(x)

    def make(fn):
        def step():
            xg.grad = None
            fn(xg).backward(g)

        step.reset = lambda: setattr(xg, "grad", None)
        return step

    return make


def _fwd_bwd_sum(x):
    xg = x.detach().requires_grad_()

    def make(fn):
        def step():
            xg.grad = None
            fn(xg).sum().backward()  # the upstream gradient: ones, expanded (strides 0)

        step.reset = lambda: setattr(xg, "grad", None)
        return step

    return make


def cases(opts: bench.Options):
    dev = torch.device(opts.device)

    def case(op, name, shape, mode, impls, make_call, nbytes):
        return bench.Case(op, name, tuple(shape), mode, bench.providers(impls, make_call),
                          flops=nbytes, unit="GB/s", warmup=3, repeat=opts.repeat)

    for i, (name, shape) in enumerate(QUICK_IN_SHAPES if opts.quick else IN_SHAPES):
        c = shape[1]
        x = torch.randn(shape, device=dev, dtype=opts.dtype)
        w, b = torch.rand(c, device=dev) + 0.5, torch.randn(c, device=dev)
        n = x.numel() * x.element_size()
        impls = bench.op_implementations(
            "instance_norm", dev, x.dtype,
            lambda x, backend: fastnst.instance_norm(x, w, b, activation="relu", backend=backend),
            lambda x: reference.instance_norm_torch(x, w, b, activation="relu"))
        yield case("instance_norm", name, shape, "fwd", impls, _fwd(x), 2 * n)
        yield case("instance_norm", name, shape, "fwd+bwd", impls, _fwd_bwd(x), 6 * n)
        if i == 0:
            yield case("instance_norm", name, shape, "fwd+bwd y.sum()", impls, _fwd_bwd_sum(x), 6 * n)
    for name, shape in (QUICK_ADAIN_SHAPES if opts.quick else ADAIN_SHAPES):
        content = torch.randn(shape, device=dev, dtype=opts.dtype)
        style = torch.randn(shape, device=dev, dtype=opts.dtype) * 2 + 1
        n = content.numel() * content.element_size()
        impls = bench.op_implementations("adain", dev, content.dtype,
                                         lambda c, backend: fastnst.adain(c, style, backend=backend),
                                         lambda c: reference.adain(c, style))
        yield case("adain", name, shape, "fwd", impls, _fwd(content), 3 * n)
        impls = bench.op_implementations("mean_std", dev, content.dtype,
                                         lambda c, backend: fastnst.mean_std(c, backend=backend),
                                         lambda c: reference.mean_std(c))
        yield case("mean_std", "mean_std " + name.split(" ", 1)[1], shape, "fwd", impls, _fwd(content), n)


def transformer_cases(opts: bench.Options):
    """pytorch/examples' TransformerNet as users have it (fastnst.bench.examples: nn.InstanceNorm2d,
    the ReLU called in forward): forward and an Adam training step, before and after
    fastnst.accelerate() (which fuses norm + ReLU by tracing). CPU runs only."""
    if opts.device != "cpu":
        return
    from fastnst.bench.examples import ExTransformerNet as TransformerNet

    size, batch = (64, 2) if opts.quick else (256, 4)
    torch.manual_seed(0)
    plain = TransformerNet()
    fast = fastnst.accelerate(TransformerNet())
    fast.load_state_dict(plain.state_dict())
    x = torch.rand(batch, 3, size, size) * 255
    nets = ((bench.BASELINE, plain), ("fastnst (accelerate)", fast))

    def fwd(net):
        def call():
            with torch.no_grad():
                net(x)

        return call

    def train(net):
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)

        def call():
            opt.zero_grad(set_to_none=True)
            net(x).square().mean().backward()
            opt.step()

        return call

    for mode, make in (("fwd", fwd), ("train step", train)):
        yield bench.Case("transformer_net", f"TransformerNet {batch}x{size}²", (batch, 3, size, size), mode,
                         [bench.Provider(name, make(net)) for name, net in nets],
                         unit="GB/s", warmup=1, repeat=min(opts.repeat, 5))


bench.register(bench.Benchmark("norm", "Instance norm + ReLU, AdaIN, mean_std", "norm_{device}", cases,
                               precisions=("fp32", "bf16", "fp16")))
bench.register(bench.Benchmark("norm", "TransformerNet before and after fastnst.accelerate()",
                               "transformer_cpu", transformer_cases))
