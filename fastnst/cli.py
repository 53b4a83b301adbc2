"""Command line: ``fastnst info | bench``. Thin: parse, call, report."""

from __future__ import annotations

import argparse
import sys


def _cmd_info(args) -> int:
    from fastnst import info

    return info.main()


def _cmd_bench(args) -> int:
    from fastnst import bench

    providers = args.providers.split(",") if args.providers else None
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("fastnst bench: --device cuda needs a CUDA GPU and a CUDA build of torch",
                  file=sys.stderr)
            return 2
    text = bench.main_gram(args.quick, args.device, args.out, providers, args.repeat)
    print(text)
    print(f"results written to {args.out}/", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastnst", description="Fast neural style transfer kernels.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("info", help="versions, build, and the op x backend table")
    s.set_defaults(func=_cmd_info)
    s = sub.add_parser("bench", help="benchmark the ops against plain PyTorch and torch.compile",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--op", choices=["gram"], default="gram", help="which op")
    s.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    s.add_argument("--quick", action="store_true", help="small shapes, a few seconds")
    s.add_argument("--repeat", type=int, default=15, help="timed calls per case")
    s.add_argument("--providers", default="",
                   help="comma-separated subset of fastnst-cpu,fastnst-cuda,fastnst-triton,"
                        "reference,reference-compile")
    s.add_argument("--out", default="bench_results", help="folder for the JSON and markdown results")
    s.set_defaults(func=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
