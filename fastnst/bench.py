"""Benchmark harness shared by ``fastnst bench`` and ``benchmarks/bench_<op>.py``.

Providers run side by side in one process: each fastnst backend present, the reference
(plain PyTorch, eager) and ``torch.compile`` of the reference. For every case we report the
median time with the 20th and 80th percentiles, a derived GFLOP/s, the peak memory of one
call, and the speed-up over the eager reference. Results are written as JSON and as a
markdown table that records the device and versions. GPU timings synchronise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch

import fastnst
from fastnst import _ext, reference
from fastnst.backend import serves

# VGG-19 relu1_1 ... relu5_1 features of a 512 x 512 image, batch 1.
GRAM_SHAPES = [
    ("relu1_1", (1, 64, 512, 512)),
    ("relu2_1", (1, 128, 256, 256)),
    ("relu3_1", (1, 256, 128, 128)),
    ("relu4_1", (1, 512, 64, 64)),
    ("relu5_1", (1, 512, 32, 32)),
]
QUICK_GRAM_SHAPES = [
    ("relu3_1@128", (1, 256, 32, 32)),
    ("relu4_1@128", (1, 512, 16, 16)),
]


@dataclasses.dataclass
class Case:
    op: str
    name: str
    shape: tuple
    mode: str            # "fwd" or "fwd+bwd"
    provider: str
    flops: float
    median_ms: float = float("nan")
    p20_ms: float = float("nan")
    p80_ms: float = float("nan")
    gflops: float = float("nan")
    peak_mem_mb: float = float("nan")
    speedup: float = float("nan")   # vs the eager reference, same shape and mode
    note: str = ""
    unit: str = "GFLOP/s"          # what `flops` counts per call: flops, or bytes for GB/s


# ---- measurement ------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int, repeat: int,
            min_time: float = 0.0) -> list[float]:
    """Per-call wall times in seconds (perf_counter around a synchronised call)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start < min_time and len(times) < 10 * repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _cpu_peak_bytes(fn: Callable[[], object]) -> float:
    """Peak of live tensor memory allocated during one call, from the profiler's allocator
    events (allocations positive, frees negative, in time order). Buffers a kernel allocates
    outside the torch allocator (small packing panels) are not counted."""
    from torch.profiler import ProfilerActivity, profile

    sys.stderr.flush()
    saved = os.dup(2)  # the profiler's native start/stop chatter goes to fd 2: silence it
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return float(peak)


def peak_memory_mb(fn: Callable[[], object], device: torch.device,
                   reset: Callable[[], None] = lambda: None) -> float:
    """Peak memory one call adds, after an untimed warm-up (which absorbs any recompilation):
    the CUDA allocator's peak on GPU, the profiler's allocator events on the CPU. ``reset``
    drops what the previous call left alive (gradients) before measuring."""
    fn()
    reset()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return _cpu_peak_bytes(fn) / 2**20


def percentile(sorted_vals: list[float], q: float) -> float:
    idx = q * (len(sorted_vals) - 1)
    lo, hi = math.floor(idx), math.ceil(idx)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (idx - lo)


# ---- providers ------------------------------------------------------------------------------
def kernel_providers(op: str, device: torch.device, dtype: torch.dtype,
                     fn: Callable[..., object]) -> dict[str, Callable | str]:
    """"fastnst-<backend>" -> fn(*args, backend=<backend>) for each kernel backend that serves
    the registered op ``op`` on ``device``/``dtype``, or a string saying why it is absent."""
    out: dict[str, Callable | str] = {}
    for backend in ("cpu", "cuda", "triton"):
        why = serves(backend, op, device, dtype)
        if backend == "triton" and device.type == "cpu" and why is None:
            why = "the Triton interpreter is a correctness tool, not timed"
        out[f"fastnst-{backend}"] = (lambda *a, b=backend: fn(*a, backend=b)) if why is None else why
    return out


def gram_providers(device: torch.device, dtype: torch.dtype) -> dict[str, Callable | str]:
    """name -> gram(x) callable, or a string saying why the provider is absent."""
    out = kernel_providers("gram", device, dtype, fastnst.gram_matrix)

    def ref(x):
        return reference.gram_matrix(x, float(x[0].numel()))

    out["reference"] = ref
    compiled = torch.compile(ref, dynamic=False)
    out["reference-compile"] = compiled
    return out


def _gram_case_fn(fn: Callable, x: torch.Tensor, mode: str) -> Callable[[], object]:
    """The timed call; its `.reset()` frees what a call leaves behind (x.grad)."""
    if mode == "fwd":
        def fwd():
            fn(x)

        fwd.reset = lambda: None
        return fwd
    xg = x.detach().requires_grad_()
    gG = torch.randn(x.shape[0], x.shape[1], x.shape[1], device=x.device, dtype=x.dtype)

    def step():
        xg.grad = None
        fn(xg).backward(gG)

    def reset():
        xg.grad = None

    step.reset = reset
    return step


def gram_flops(shape, mode: str) -> float:
    """GEMM-equivalent flops: 2·B·C²·L forward, as much again for the one-GEMM backward."""
    b, c, l = shape[0], shape[1], math.prod(shape[2:])
    return 2.0 * b * c * c * l * (2 if mode == "fwd+bwd" else 1)


def bench_gram(shapes=GRAM_SHAPES, modes=("fwd", "fwd+bwd"), device: str = "cpu",
               dtype: torch.dtype = torch.float32, providers: list[str] | None = None,
               warmup: int = 3, repeat: int = 15, log: Callable[[str], None] | None = None) -> list[Case]:
    dev = torch.device(device)
    cases: list[Case] = []
    calls: list[tuple[Case, Callable[[], object]]] = []
    for name, shape in shapes:
        torch.compiler.reset()  # a fresh compile cache per shape: no recompile-limit fallbacks
        provs = gram_providers(dev, dtype)
        x = torch.randn(shape, device=dev, dtype=dtype)
        for mode in modes:
            ref_ms = float("nan")
            for pname, fn in provs.items():
                if providers and pname not in providers:
                    continue
                case = Case("gram", name, tuple(shape), mode, pname, gram_flops(shape, mode))
                cases.append(case)
                if isinstance(fn, str):
                    case.note = fn
                    continue
                call = _gram_case_fn(fn, x, mode)
                ts = sorted(time_fn(call, dev, warmup, repeat))
                case.median_ms = statistics.median(ts) * 1e3
                case.p20_ms = percentile(ts, 0.2) * 1e3
                case.p80_ms = percentile(ts, 0.8) * 1e3
                case.gflops = case.flops / (case.median_ms * 1e-3) / 1e9
                calls.append((case, call))
                if pname == "reference":
                    ref_ms = case.median_ms
                if log:
                    log(f"  {name:12s} {mode:8s} {pname:18s} {case.median_ms:9.3f} ms")
            for case in cases:
                if case.name == name and case.mode == mode and not math.isnan(case.median_ms):
                    case.speedup = ref_ms / case.median_ms
    for case, call in calls:
        case.peak_mem_mb = peak_memory_mb(call, dev, call.reset)
    return cases


# ---- Gatys step ----------------------------------------------------------------------------
GATYS_SIZES = (256, 512)
QUICK_GATYS_SIZES = (64,)


def conv_flops(encoder, size: int, deepest: str) -> float:
    """Forward flops of the encoder's convolutions up to ``deepest`` for a size x size input."""
    flops, h, w = 0.0, size, size
    for name, m in encoder.features.named_children():
        if isinstance(m, torch.nn.Conv2d):
            flops += 2.0 * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * h * w
        elif isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)):
            h, w = h // 2, w // 2
        if name == deepest:
            break
    return flops


def gatys_step_fn(encoder, size: int, backend: str, channels_last: bool) -> Callable[[], object]:
    """One Gatys loss evaluation and backward (what an L-BFGS step costs), default layers."""
    from fastnst.methods import gatys

    layers = list(dict.fromkeys(gatys.CONTENT_LAYERS + gatys.STYLE_LAYERS))
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(1, 3, size, size, generator=g) * 50).requires_grad_()
    with torch.no_grad():
        feats = encoder.features_of(torch.randn(1, 3, size, size, generator=g) * 50, layers)
        tg = [fastnst.gram_matrix(feats[n], backend=backend) for n in gatys.STYLE_LAYERS]
        tc = [feats[n] for n in gatys.CONTENT_LAYERS]

    def step():
        x.grad = None
        f = encoder.features_of(x.contiguous(memory_format=fmt), layers)  # as stylize() does
        loss = sum(5.0 * torch.nn.functional.mse_loss(f[n], t) for n, t in zip(gatys.CONTENT_LAYERS, tc))
        for n, t in zip(gatys.STYLE_LAYERS, tg):
            loss = loss + 100.0 * torch.nn.functional.mse_loss(fastnst.gram_matrix(f[n], backend=backend), t)
        loss = loss + 1e-3 * gatys.tv_loss(x)
        loss.backward()

    step.reset = lambda: setattr(x, "grad", None)
    return step


def bench_gatys(sizes=GATYS_SIZES, repeat: int = 5, log=None) -> list[Case]:
    """Gatys step time: fastnst ops vs the same loop on reference ops (channels_last, as
    stylize() runs it), and the reference loop in NCHW (as public code runs it)."""
    from fastnst.methods import gatys
    from fastnst.models import load_vgg

    encoder = load_vgg()
    dev = torch.device("cpu")
    deepest = max(gatys.CONTENT_LAYERS + gatys.STYLE_LAYERS, key=encoder.names.index)
    providers = {"fastnst": ("auto", True), "reference": ("reference", True),
                 "reference-nchw": ("reference", False)}
    cases, calls = [], []
    for size in sizes:
        flops = 2 * conv_flops(encoder, size, deepest)  # forward + input-gradient backward
        ref_ms = float("nan")
        for pname, (backend, cl) in providers.items():
            call = gatys_step_fn(encoder, size, backend, cl)
            case = Case("gatys_step", f"{size}x{size}", (1, 3, size, size), "step", pname, flops)
            ts = sorted(time_fn(call, dev, 1, repeat))
            case.median_ms = statistics.median(ts) * 1e3
            case.p20_ms, case.p80_ms = percentile(ts, 0.2) * 1e3, percentile(ts, 0.8) * 1e3
            case.gflops = flops / (case.median_ms * 1e-3) / 1e9
            if pname == "reference":
                ref_ms = case.median_ms
            cases.append(case)
            calls.append((case, call))
            if log:
                log(f"  gatys {size:5d} {pname:15s} {case.median_ms:9.1f} ms")
        for c in cases:
            if c.shape[-1] == size:
                c.speedup = ref_ms / c.median_ms
    for case, call in calls:
        case.peak_mem_mb = peak_memory_mb(call, dev, call.reset)
    return cases


def main_gatys(quick: bool, out_dir: str, repeat: int, log=lambda s: print(s, file=sys.stderr, flush=True)) -> str:
    cases = bench_gatys(QUICK_GATYS_SIZES if quick else GATYS_SIZES, repeat=repeat, log=log)
    env = environment("cpu")
    _, md = write_results(cases, env, out_dir, "gatys_cpu",
                          "Gatys step (VGG-19 to relu5_1, content relu4_2, five style Grams)")
    with open(md) as fh:
        return fh.read()


# ---- normalisation ops ------------------------------------------------------------------------
IN_SHAPES = [("IN+ReLU 32x256²", (4, 32, 256, 256)), ("IN+ReLU 64x128²", (4, 64, 128, 128)),
             ("IN+ReLU 128x64²", (4, 128, 64, 64))]
ADAIN_SHAPES = [("AdaIN relu4_1@512", (1, 512, 64, 64)), ("AdaIN relu4_1@1024", (1, 512, 128, 128))]
QUICK_IN_SHAPES = [("IN+ReLU 32x64²", (2, 32, 64, 64))]
QUICK_ADAIN_SHAPES = [("AdaIN 512x32²", (1, 512, 32, 32))]


def _norm_providers(device: torch.device, dtype: torch.dtype, op: str, fn_fast, fn_ref) -> dict:
    out = kernel_providers("instance_norm", device, dtype, fn_fast)
    out["reference"] = fn_ref
    out["reference-compile"] = torch.compile(fn_ref, dynamic=False)
    return out


def bench_norm(quick: bool = False, device: str = "cpu", repeat: int = 15, log=None) -> list[Case]:
    """IN + ReLU (fwd, fwd+bwd), AdaIN (fwd) and mean_std (fwd) against the eager reference and
    torch.compile of it. Rates are GB/s of the tensors each call must read and write."""
    dev = torch.device(device)
    cases, calls = [], []

    def run(op, name, shape, mode, provs, make_call, nbytes):
        ref_ms = float("nan")
        group = []
        for pname, fn in provs.items():
            case = Case(op, name, tuple(shape), mode, pname, nbytes, unit="GB/s")
            cases.append(case)
            group.append(case)
            if isinstance(fn, str):
                case.note = fn
                continue
            call = make_call(fn)
            ts = sorted(time_fn(call, dev, 3, repeat))
            case.median_ms = statistics.median(ts) * 1e3
            case.p20_ms, case.p80_ms = percentile(ts, 0.2) * 1e3, percentile(ts, 0.8) * 1e3
            case.gflops = nbytes / (case.median_ms * 1e-3) / 1e9
            calls.append((case, call))
            if pname == "reference":
                ref_ms = case.median_ms
            if log:
                log(f"  {name:22s} {mode:8s} {pname:18s} {case.median_ms:9.3f} ms")
        for c in group:
            c.speedup = ref_ms / c.median_ms

    for name, shape in (QUICK_IN_SHAPES if quick else IN_SHAPES):
        torch.compiler.reset()
        c = shape[1]
        x = torch.randn(shape, device=dev)
        w, b = torch.rand(c, device=dev) + 0.5, torch.randn(c, device=dev)
        n = x.numel() * x.element_size()
        provs = _norm_providers(dev, x.dtype, "instance_norm",
                                lambda x, backend: fastnst.instance_norm(x, w, b, activation="relu", backend=backend),
                                lambda x: reference.instance_norm_torch(x, w, b, activation="relu"))
        run("instance_norm", name, shape, "fwd", provs, lambda fn: (lambda: fn(x)), 2 * n)
        xg = x.detach().requires_grad_()
        g = torch.randn_like(x)

        def fb(fn):
            def step():
                xg.grad = None
                fn(xg).backward(g)

            step.reset = lambda: setattr(xg, "grad", None)
            return step

        run("instance_norm", name, shape, "fwd+bwd", provs, fb, 6 * n)
    for name, shape in (QUICK_ADAIN_SHAPES if quick else ADAIN_SHAPES):
        torch.compiler.reset()
        content = torch.randn(shape, device=dev)
        style = torch.randn(shape, device=dev) * 2 + 1
        n = content.numel() * content.element_size()
        provs = _norm_providers(dev, content.dtype, "adain",
                                lambda c, backend: fastnst.adain(c, style, backend=backend),
                                lambda c: reference.adain(c, style))
        run("adain", name, shape, "fwd", provs, lambda fn: (lambda: fn(content)), 3 * n)
        provs = _norm_providers(dev, content.dtype, "mean_std",
                                lambda c, backend: fastnst.mean_std(c, backend=backend),
                                lambda c: reference.mean_std(c))
        run("mean_std", "mean_std " + name.split(" ", 1)[1], shape, "fwd", provs,
            lambda fn: (lambda: fn(content)), n)
    for case, call in calls:
        case.peak_mem_mb = peak_memory_mb(call, dev, getattr(call, "reset", lambda: None))
    return cases


def bench_transformer(quick: bool = False, repeat: int = 5, log=None) -> list[Case]:
    """Johnson's TransformerNet (batch 4, 256², nn.InstanceNorm2d + nn.ReLU in Sequentials):
    forward and a training step, before and after fastnst.accelerate()."""
    from fastnst.models.transformer import TransformerNet

    size, batch = (64, 2) if quick else (256, 4)
    dev = torch.device("cpu")
    torch.manual_seed(0)
    plain = TransformerNet()
    fast = fastnst.accelerate(TransformerNet())
    fast.load_state_dict(plain.state_dict())
    x = torch.rand(batch, 3, size, size) * 255
    cases, calls = [], []
    for mode in ("fwd", "train step"):
        ref_ms = float("nan")
        group = []
        for pname, net in (("reference", plain), ("fastnst (accelerate)", fast)):
            if mode == "fwd":
                def call(net=net):
                    with torch.no_grad():
                        net(x)
            else:
                opt = torch.optim.Adam(net.parameters(), lr=1e-3)

                def call(net=net, opt=opt):
                    opt.zero_grad(set_to_none=True)
                    net(x).square().mean().backward()
                    opt.step()
            case = Case("transformer_net", f"TransformerNet {batch}x{size}²", (batch, 3, size, size), mode, pname,
                        float("nan"), unit="GB/s")
            ts = sorted(time_fn(call, dev, 1, repeat))
            case.median_ms = statistics.median(ts) * 1e3
            case.p20_ms, case.p80_ms = percentile(ts, 0.2) * 1e3, percentile(ts, 0.8) * 1e3
            if pname == "reference":
                ref_ms = case.median_ms
            cases.append(case)
            group.append(case)
            calls.append((case, call))
            if log:
                log(f"  TransformerNet {mode:10s} {pname:22s} {case.median_ms:9.1f} ms")
        for c in group:
            c.speedup = ref_ms / c.median_ms
    for case, call in calls:
        case.peak_mem_mb = peak_memory_mb(call, dev)
    return cases


def main_norm(quick: bool, device: str, out_dir: str, repeat: int,
              log=lambda s: print(s, file=sys.stderr, flush=True)) -> str:
    cases = bench_norm(quick, device, repeat, log)
    env = environment(device)
    _, md = write_results(cases, env, out_dir, f"norm_{device.split(':')[0]}",
                          "Instance norm + ReLU, AdaIN, mean_std")
    text = open(md).read()
    if device == "cpu":
        tcases = bench_transformer(quick, log=log)
        _, md2 = write_results(tcases, env, out_dir, "transformer_cpu",
                               "TransformerNet before and after fastnst.accelerate()")
        text += "\n" + open(md2).read()
    return text


# ---- reporting ------------------------------------------------------------------------------
def environment(device: str = "cpu") -> dict:
    env = {
        "fastnst": fastnst.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "cpu_kernels": _ext.build_info().get("cpu_isa", "n/a"),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = "not installed"
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    return f"{name}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or "unknown"


def geomean(vals: list[float]) -> float:
    vals = [v for v in vals if v > 0 and not math.isnan(v)]
    return math.exp(sum(map(math.log, vals)) / len(vals)) if vals else float("nan")


def summary(cases: list[Case]) -> list[str]:
    """Geometric-mean speed-up over the eager reference, per provider and mode."""
    lines = []
    for mode in sorted({c.mode for c in cases}):
        for prov in dict.fromkeys(c.provider for c in cases):
            sp = [c.speedup for c in cases if c.mode == mode and c.provider == prov]
            g = geomean(sp)
            if not math.isnan(g) and prov != "reference":
                lines.append(f"{mode}: {prov} {g:.2f}x the eager reference (geometric mean)")
        comp = {c.name: c.median_ms for c in cases if c.mode == mode and c.provider == "reference-compile"}
        for prov in dict.fromkeys(c.provider for c in cases):
            if not prov.startswith("fastnst"):
                continue
            ratios = [comp[c.name] / c.median_ms for c in cases
                      if c.mode == mode and c.provider == prov and c.name in comp and not math.isnan(c.median_ms)]
            if ratios:
                lines.append(f"{mode}: {prov} {geomean(ratios):.2f}x torch.compile(reference) "
                             f"(geometric mean; slowest case {min(ratios):.2f}x)")
    return lines


def markdown(cases: list[Case], env: dict, title: str) -> str:
    head = (f"### {title}\n\n"
            f"Setup: {env.get('gpu', env['cpu'])}; torch {env['torch']}, fastnst {env['fastnst']}, "
            f"triton {env['triton']}, Python {env['python']}, {env['threads']} threads, "
            f"CPU kernels: {env['cpu_kernels']}. Median of timed calls (p20-p80), float32.\n\n")
    unit = cases[0].unit if cases else "GFLOP/s"
    rows = [f"| case | shape | mode | provider | median ms (p20-p80) | {unit} | peak MB | vs reference |",
            "|---|---|---|---|---|---|---|---|"]
    for c in cases:
        if math.isnan(c.median_ms):
            continue
        shape = "x".join(map(str, c.shape))
        speedup = "n/a" if math.isnan(c.speedup) else f"{c.speedup:.2f}x"
        rows.append(f"| {c.name} | {shape} | {c.mode} | {c.provider} | {c.median_ms:.2f} "
                    f"({c.p20_ms:.2f}-{c.p80_ms:.2f}) | {c.gflops:.0f} | {c.peak_mem_mb:.1f} | "
                    f"{speedup} |")
    absent = sorted({f"{c.provider}: {c.note}" for c in cases if c.note})
    tail = "\n\nNot run: " + "; ".join(absent) if absent else ""
    summ = "\n".join(f"- {s}" for s in summary(cases))
    return head + "\n".join(rows) + "\n\n" + summ + tail + "\n"


def write_results(cases: list[Case], env: dict, out_dir: str, stem: str, title: str) -> tuple[str, str]:
    """Write <stem>.json and <stem>.md atomically (temp file + rename); return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    payload = {"environment": env, "results": [dataclasses.asdict(c) for c in cases],
               "summary": summary(cases)}
    paths = []
    for ext, text in (("json", json.dumps(payload, indent=2)), ("md", markdown(cases, env, title))):
        path = os.path.join(out_dir, f"{stem}.{ext}")
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
        paths.append(path)
    return paths[0], paths[1]


def main_gram(argv_quick: bool, device: str, out_dir: str, providers: list[str] | None,
              repeat: int, log=lambda s: print(s, file=sys.stderr, flush=True)) -> str:
    shapes = QUICK_GRAM_SHAPES if argv_quick else GRAM_SHAPES
    cases = bench_gram(shapes, device=device, providers=providers, repeat=repeat, log=log)
    env = environment(device)
    _, md = write_results(cases, env, out_dir, f"gram_{device.split(':')[0]}",
                          "Gram matrix (VGG-19 features of a 512x512 image)"
                          if not argv_quick else "Gram matrix (quick shapes)")
    with open(md) as fh:
        return fh.read()


# ---- style swap -----------------------------------------------------------------------------
# VGG-19 relu3_1 features (256 channels, 1/4 of the image side) of square images.
STYLE_SWAP_SIZES = (256, 512, 1024)
QUICK_STYLE_SWAP_SIZES = (128,)


def peak_rss_mb(fn: Callable[[], object]) -> float:
    """Peak resident memory one call adds over the process's resident memory before it: the
    kernel's high-water mark (VmHWM) is reset through /proc/self/clear_refs first. Counts
    every allocation (torch's allocator, oneDNN and MKL scratch, std::vector), unlike the
    allocator events behind peak_memory_mb. Linux only; NaN elsewhere."""
    import gc
    import re

    def status() -> tuple[float, float]:
        with open("/proc/self/status") as fh:
            text = fh.read()
        hwm = int(re.search(r"VmHWM:\s+(\d+)", text).group(1))
        rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1))
        return hwm / 1024, rss / 1024

    try:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _, base = status()
        fn()
        peak, _ = status()
        return peak - base
    except OSError:
        return float("nan")


def style_swap_flops(c: int, h: int, w: int, k: int = 3, s: int = 1) -> float:
    """Multiply-adds x 2 of scoring every content patch against every style patch (same size
    maps) with the patch GEMM the public algorithm runs: 2 · n² · C·k²."""
    n = ((h - k) // s + 1) * ((w - k) // s + 1)
    return 2.0 * n * n * c * k * k


def bench_style_swap(sizes=STYLE_SWAP_SIZES, device: str = "cpu", repeat: int = 3,
                     mem_limit_gb: float | None = None, log=None) -> list[Case]:
    """style_swap (3x3 patches, stride 1) of relu3_1 features of size² content and style
    images: time and peak memory, fastnst vs the conv-based reference (eager), the reference
    only where its score and one-hot tensors fit in memory. GFLOP/s count the patch GEMM the
    reference runs for the scores (fastnst does fewer flops, see csrc/cpu/style_swap.cpp)."""
    dev = torch.device(device)
    if mem_limit_gb is None:
        with open("/proc/meminfo") as fh:
            total_kb = int(fh.readline().split()[1])
        mem_limit_gb = 0.6 * total_kb / 2**20
    cases = []
    for size in sizes:
        n = size // 4
        shape = (1, 256, n, n)
        g = torch.Generator().manual_seed(size)
        content = torch.randn(shape, generator=g).relu_().to(dev)
        style = torch.randn(shape, generator=g).relu_().to(dev)
        flops = style_swap_flops(256, n, n)
        patches = (n - 2) ** 2
        need_gb = 2 * patches * patches * 4 / 2**30  # scores + one-hot, float32
        provs = kernel_providers("style_swap_match", dev, torch.float32,
                                 lambda backend: fastnst.style_swap(content, style, backend=backend))
        provs["reference"] = (lambda: reference.style_swap(content, style)) if need_gb < mem_limit_gb else \
            f"at {size}² its scores and one-hot alone need {need_gb:.0f} GB (limit {mem_limit_gb:.0f} GB)"
        ref_ms = float("nan")
        group = []
        for pname, fn in provs.items():
            case = Case("style_swap", f"relu3_1 of {size}²", shape, "fwd", pname, flops)
            cases.append(case)
            group.append(case)
            if isinstance(fn, str):
                case.note = fn
                continue
            reps = repeat if size <= 512 else 1
            ts = sorted(time_fn(fn, dev, 1, reps))
            case.median_ms = statistics.median(ts) * 1e3
            case.p20_ms, case.p80_ms = percentile(ts, 0.2) * 1e3, percentile(ts, 0.8) * 1e3
            case.gflops = flops / (case.median_ms * 1e-3) / 1e9
            if dev.type == "cpu":
                # One more call (already warm): the larger of the resident-memory high-water
                # mark and the torch allocator's peak, both taken from it (freed heap memory
                # reused without growing RSS hides small allocations).
                tensor_peak: list[float] = []
                rss = peak_rss_mb(lambda: tensor_peak.append(_cpu_peak_bytes(fn)))
                case.peak_mem_mb = max(rss, tensor_peak[0] / 2**20)
            else:
                case.peak_mem_mb = peak_memory_mb(fn, dev)
            if pname == "reference":
                ref_ms = case.median_ms
            if log:
                log(f"  {case.name:18s} {pname:14s} {case.median_ms:10.1f} ms  {case.peak_mem_mb:8.0f} MB")
        for c in group:
            c.speedup = ref_ms / c.median_ms
    return cases


def main_style_swap(quick: bool, device: str, out_dir: str, repeat: int,
                    log=lambda s: print(s, file=sys.stderr, flush=True)) -> str:
    sizes = QUICK_STYLE_SWAP_SIZES if quick else STYLE_SWAP_SIZES
    cases = bench_style_swap(sizes, device, min(repeat, 3), log=log)
    env = environment(device)
    _, md = write_results(cases, env, out_dir, f"style_swap_{device.split(':')[0]}",
                          "Style swap, 3x3 patches, stride 1, VGG-19 relu3_1 features")
    with open(md) as fh:
        return fh.read()
