"""Perceptual super-resolution on the CPU: x4 upscaling of a 256² image (to 1024²) with
Johnson et al.'s SR network (``fastnst.methods.sr.DEFAULTS``: 64 channels, 4 residual blocks).

Providers: "fastnst" (``fastnst.accelerate``'d network, fp32), "fastnst-bf16" (bf16
autocast), "reference" (the same network eager, module by module: ``nn.InstanceNorm2d`` + ReLU,
pad and upsample copies, NCHW) and
"reference-compile" (torch.compile of it). GFLOP/s count the network's convolutions."""

from __future__ import annotations

import torch

from fastnst import bench
from fastnst.bench.cases.johnson import conv_flops

SIZE, QUICK_SIZE = 256, 32


def cases(opts: bench.Options):
    if opts.device != "cpu":
        return
    from fastnst.methods import sr
    from fastnst.models.sr import SRNet
    from fastnst.nn import accelerate

    d = sr.DEFAULTS
    size = QUICK_SIZE if opts.quick else SIZE
    torch.manual_seed(0)
    plain = SRNet(d.factor, d.channels, d.blocks).eval().requires_grad_(False)
    plain.fused_inference = False  # module by module, as written
    fast = accelerate(SRNet(d.factor, d.channels, d.blocks)).eval().requires_grad_(False)
    fast.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    compiled = bench.compiled(plain)

    def eager(net):
        def call():
            with torch.inference_mode():
                net(x * 255.0).clamp(0, 255)

        return call

    calls = {"fastnst": lambda: sr.upscale(fast, [x]), "fastnst-bf16": lambda: sr.upscale(fast, [x], precision="bf16"),
             bench.BASELINE: eager(plain), bench.COMPILED: eager(compiled)}
    provs = [bench.Provider(n, c, compiled=(n == bench.COMPILED)) for n, c in calls.items()]
    yield bench.Case("sr_upscale", f"x{d.factor} upscale {size}² -> {size * d.factor}²", (1, 3, size, size),
                     "fwd", provs, flops=conv_flops(plain, x * 255), warmup=1, repeat=min(opts.repeat, 5),
                     memory="rss")


bench.register(bench.Benchmark("sr", "Super-resolution: x4 upscale with Johnson et al.'s SR network",
                               "sr_cpu", cases, device="cpu"))
