"""Johnson's method on the CPU: one training step (network forward, VGG-16 losses at the
method's layers, backward, Adam) and stylizing at 256², 512², 1024².

Providers: "fastnst" (``fastnst.accelerate``'d network, fastnst's Gram, fp32, channels_last as
the method runs it), "fastnst-bf16"
(the same under bf16 autocast), and "reference": the step as pytorch/examples writes it
(eager fp32, NCHW, ``nn.InstanceNorm2d`` + ReLU, ``torch.bmm`` Gram, ``normalize_batch``);
stylizing adds "reference-compile" (torch.compile of the eager network). The loss layers,
weights, batch and crop size come from ``fastnst.methods.johnson.DEFAULTS``; VGG weights are
random (speed does not depend on them). GFLOP/s count the convolutions (network and VGG;
backward = 2x forward).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fastnst import bench

STYLIZE_SIZES = (256, 512, 1024)
QUICK = {"train": (2, 32), "stylize": (64,)}


def conv_flops(model: nn.Module, x: torch.Tensor, run=None) -> float:
    """Forward flops of every Conv2d in ``model`` on ``x`` (counted with forward hooks)."""
    total = [0.0]

    def hook(m, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1]
        total[0] += 2.0 * m.in_channels // m.groups * m.out_channels * k * out.shape[-2] * out.shape[-1] * out.shape[0]

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            (run or model)(x)
    finally:
        for h in hs:
            h.remove()
    return total[0]


def _examples_gram(y: torch.Tensor) -> torch.Tensor:
    b, ch, h, w = y.size()
    f = y.view(b, ch, w * h)
    return f.bmm(f.transpose(1, 2)) / (ch * h * w)


def _examples_normalize(batch: torch.Tensor) -> torch.Tensor:
    mean = batch.new_tensor([0.485, 0.456, 0.406]).view(-1, 1, 1)
    std = batch.new_tensor([0.229, 0.224, 0.225]).view(-1, 1, 1)
    return (batch / 255.0 - mean) / std


def train_steps(batch: int, size: int):
    """{provider: step()} for the three training steps, on the same weights and batch."""
    from fastnst import losses
    from fastnst.bench.examples import ExTransformerNet
    from fastnst.engine import precision
    from fastnst.methods import johnson
    from fastnst.models.transformer import TransformerNet
    from fastnst.models.vgg import VGGEncoder
    from fastnst.nn import accelerate

    d = johnson.DEFAULTS
    torch.manual_seed(0)
    vgg = VGGEncoder("vgg16", convention="torchvision").eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=g)
    style = torch.rand(1, 3, size, size, generator=g)
    layers = list(dict.fromkeys([d.content_layer, *d.style_layers]))
    init = TransformerNet().state_dict()

    def fastnst_step(prec: str):
        net = accelerate(TransformerNet())
        net.load_state_dict(init)
        perc = losses.PerceptualLoss(
            vgg, content=[losses.ContentLoss(d.content_layer, weight=d.content_weight)],
            style=[losses.GramLoss(n, weight=d.style_weight) for n in d.style_layers])
        perc.set_style_target(style)
        opt = torch.optim.Adam(net.parameters(), lr=d.lr)

        xc = x.contiguous(memory_format=torch.channels_last)  # as johnson.task's loss

        def step():
            with precision.autocast(prec, "cpu"):
                perc.set_content_target(xc)
                loss, _ = perc(net(xc * 255.0).float() / 255.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step, net

    def examples_step():
        net = ExTransformerNet()
        net.load_state_dict(init)
        opt = torch.optim.Adam(net.parameters(), lr=d.lr)
        with torch.no_grad():
            fs = vgg.features_of(_examples_normalize(style * 255.0), layers)
            gram_style = [_examples_gram(fs[n]) for n in d.style_layers]

        def step():
            opt.zero_grad()
            xb = x * 255.0
            y = net(xb)
            fy = vgg.features_of(_examples_normalize(y), layers)
            fx = vgg.features_of(_examples_normalize(xb), [d.content_layer])
            content = d.content_weight * nn.functional.mse_loss(fy[d.content_layer], fx[d.content_layer])
            style_loss = 0.0
            for n, gm in zip(d.style_layers, gram_style):
                style_loss = style_loss + nn.functional.mse_loss(_examples_gram(fy[n]), gm.expand(batch, -1, -1))
            (content + d.style_weight * style_loss).backward()
            opt.step()

        return step, net

    fast, net = fastnst_step("fp32")
    bf16, _ = fastnst_step("bf16")
    ref, _ = examples_step()
    flops = 3 * conv_flops(net, x * 255) + 3 * conv_flops(vgg, x, lambda t: vgg.features_of(t, layers)) \
        + conv_flops(vgg, x, lambda t: vgg.features_of(t, [d.content_layer]))
    return {"fastnst": fast, "fastnst-bf16": bf16, bench.BASELINE: ref}, flops


def stylize_calls(size: int, compile_reference: bool = True):
    from fastnst.bench.examples import ExTransformerNet
    from fastnst.methods import johnson
    from fastnst.models.transformer import TransformerNet
    from fastnst.nn import accelerate

    torch.manual_seed(0)
    plain = ExTransformerNet().eval().requires_grad_(False)
    fast = accelerate(TransformerNet()).eval().requires_grad_(False)
    fast.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))

    def eager(net):
        def call():
            with torch.inference_mode():
                net(x * 255.0).clamp(0, 255)

        return call

    calls = {"fastnst": lambda: johnson.run_network(fast, x),
             "fastnst-bf16": lambda: johnson.run_network(fast, x, "bf16"),
             bench.BASELINE: eager(plain)}
    compiled = None
    if compile_reference:
        compiled = bench.compiled(plain)
        calls[bench.COMPILED] = eager(compiled)
    return calls, conv_flops(plain, x * 255), compiled


def cases(opts: bench.Options):
    if opts.device != "cpu":
        return
    from fastnst.methods import johnson

    d = johnson.DEFAULTS
    batch, size = QUICK["train"] if opts.quick else (d.batch_size, d.image_size)
    calls, flops = train_steps(batch, size)
    yield bench.Case("johnson_train", f"train step {batch}x{size}²", (batch, 3, size, size), "step",
                     [bench.Provider(n, c) for n, c in calls.items()], flops=flops, warmup=1,
                     repeat=min(opts.repeat, 5), memory="none")
    for size in (QUICK["stylize"] if opts.quick else STYLIZE_SIZES):
        calls, flops, _ = stylize_calls(size)
        provs = [bench.Provider(n, c, compiled=(n == bench.COMPILED)) for n, c in calls.items()]
        yield bench.Case("johnson_stylize", f"stylize {size}²", (1, 3, size, size), "fwd", provs, flops=flops,
                         warmup=1, repeat=min(opts.repeat, 5 if size < 1024 else 3), memory="rss")


def title(opts: bench.Options) -> str:
    from fastnst.methods import johnson

    d = johnson.DEFAULTS
    return (f"Johnson: training step (VGG-16, content {d.content_layer}, style {', '.join(d.style_layers)}, "
            f"batch {d.batch_size}, {d.image_size}²) and stylize")


bench.register(bench.Benchmark("johnson", title, "johnson_cpu", cases, device="cpu"))
