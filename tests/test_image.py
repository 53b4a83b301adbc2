"""fastnst.image: loading (modes, EXIF, limits, errors), saving (atomic, no overwrite),
resizing, encoder conventions, colour preservation. Small images, tmp_path only."""

from __future__ import annotations

import os
import re
import struct
import threading
import warnings
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

PIL = pytest.importorskip("PIL")
from PIL import Image, features  # noqa: E402

from fastnst.image import (  # noqa: E402
    CONVENTIONS,
    ImageError,
    check_output_path,
    from_convention,
    load_image,
    luminance_transfer,
    match_color,
    resize,
    rgb_to_yiq,
    save_image,
    to_convention,
)


def _rand_img(h=17, w=23, b=1, lo=0.0, hi=1.0, dtype=torch.float32):
    return (lo + (hi - lo) * torch.rand(b, 3, h, w, dtype=torch.float64)).to(dtype)


def _noise_u8(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, c), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Round trips and conventions
# ---------------------------------------------------------------------------------------------

def test_png_round_trip_is_exact_up_to_quantisation(tmp_path):
    x = _rand_img()
    p = save_image(x, tmp_path / "a.png")
    assert p == str(tmp_path / "a.png")
    y = load_image(p)
    assert y.shape == (1, 3, 17, 23) and y.dtype == torch.float32
    # save rounds to the nearest of 256 levels; load reads them back exactly
    assert torch.equal(y * 255, (x.clamp(0, 1) * 255).round())
    assert (y - x).abs().max() <= 0.5 / 255 + 1e-6


def test_save_accepts_chw_and_clamps(tmp_path):
    x = torch.tensor([-0.5, 0.5, 1.7]).view(3, 1, 1).expand(3, 2, 2)
    y = load_image(save_image(x, tmp_path / "c.png"))
    assert y[0, :, 0, 0].tolist() == pytest.approx([0.0, 128 / 255, 1.0], abs=1e-7)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_convention_round_trip(convention, dtype):
    x = _rand_img(b=2, dtype=dtype)
    y = to_convention(x, convention)
    assert y.shape == x.shape and y.dtype == dtype
    assert torch.allclose(from_convention(y, convention), x, atol=1e-5, rtol=0)


def test_caffe_of_pure_red():
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    out = to_convention(red, "caffe")[0, :, 0, 0]
    # BGR order: B = 0 - 103.939, G = 0 - 116.779, R = 255 - 123.68
    assert torch.allclose(out, torch.tensor([-103.939, -116.779, 255 - 123.68]), atol=1e-4)


def test_torchvision_of_known_pixel():
    px = torch.tensor([0.485, 1.0, 0.0]).view(1, 3, 1, 1)
    out = to_convention(px, "torchvision")[0, :, 0, 0]
    expect = torch.tensor([0.0, (1 - 0.456) / 0.224, -0.406 / 0.225])
    assert torch.allclose(out, expect, atol=1e-6)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_conventions_are_differentiable(convention):
    x = _rand_img(4, 5, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: to_convention(t, convention), (x,))
    assert torch.autograd.gradcheck(lambda t: from_convention(t, convention), (x,))


def test_convention_keeps_device_and_non_contiguous_input():
    x = _rand_img(6, 8).permute(0, 1, 3, 2)  # non-contiguous
    y = to_convention(x, "caffe")
    assert y.device == x.device
    assert torch.allclose(y, to_convention(x.contiguous(), "caffe"))


def test_unknown_convention_lists_valid_ones():
    with pytest.raises(ValueError, match="'caffe', 'torchvision'.*got 'bgr'"):
        to_convention(_rand_img(), "bgr")
    with pytest.raises(ValueError, match="'caffe', 'torchvision'"):
        from_convention(_rand_img(), "vgg")


def test_convention_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"must be \[B, 3, H, W\], got \[3, 4, 4\]"):
        to_convention(torch.rand(3, 4, 4), "caffe")


# ---------------------------------------------------------------------------------------------
# Loading: EXIF, modes, limits
# ---------------------------------------------------------------------------------------------

def test_exif_orientation_is_applied(tmp_path):
    # Stored 40 wide x 20 high; red on the stored left half, blue on the right.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(p, quality=95, exif=exif.tobytes())
    img = load_image(p)
    assert img.shape == (1, 3, 40, 20)  # upright: 20 wide, 40 high
    # Rotating 90 degrees clockwise puts the stored left (red) half on top.
    top, bottom = img[0, :, 5, 10], img[0, :, 35, 10]
    assert top[0] > 0.9 and top[2] < 0.1
    assert bottom[2] > 0.9 and bottom[0] < 0.1


def _px(img, x, y):
    return img[0, :, y, x].tolist()


def test_mode_L(tmp_path):
    a = np.array([[0, 128], [255, 64]], np.uint8)
    Image.fromarray(a, mode=None).save(tmp_path / "l.png")
    img = load_image(tmp_path / "l.png")
    assert img.shape == (1, 3, 2, 2)
    assert _px(img, 1, 0) == pytest.approx([128 / 255] * 3)
    assert _px(img, 0, 1) == pytest.approx([1.0] * 3)


def test_mode_1(tmp_path):
    im = Image.new("1", (3, 2), 0)
    im.putpixel((2, 1), 1)
    im.save(tmp_path / "b.png")
    img = load_image(tmp_path / "b.png")
    assert _px(img, 2, 1) == [1.0] * 3 and _px(img, 0, 0) == [0.0] * 3


def test_mode_LA_over_white(tmp_path):
    im = Image.new("LA", (2, 1))
    im.putpixel((0, 0), (0, 255))  # opaque black
    im.putpixel((1, 0), (0, 0))  # transparent -> white
    im.save(tmp_path / "la.png")
    img = load_image(tmp_path / "la.png")
    assert _px(img, 0, 0) == [0.0] * 3
    assert _px(img, 1, 0) == [1.0] * 3


def test_mode_RGBA_over_white(tmp_path):
    im = Image.new("RGBA", (3, 1))
    im.putpixel((0, 0), (255, 0, 0, 255))  # opaque red
    im.putpixel((1, 0), (0, 0, 255, 0))  # transparent blue -> white
    im.putpixel((2, 0), (0, 0, 0, 51))  # 20% black over white -> 0.8
    im.save(tmp_path / "rgba.png")
    img = load_image(tmp_path / "rgba.png")
    assert img.shape == (1, 3, 1, 3)
    assert _px(img, 0, 0) == [1.0, 0.0, 0.0]
    assert _px(img, 1, 0) == [1.0, 1.0, 1.0]
    assert _px(img, 2, 0) == pytest.approx([0.8] * 3, abs=1e-6)


def test_mode_P_palette_and_transparency(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    im.save(tmp_path / "p.png")
    img = load_image(tmp_path / "p.png")
    assert _px(img, 0, 0) == [1.0, 0.0, 0.0] and _px(img, 1, 0) == [0.0, 1.0, 0.0]
    im.save(tmp_path / "pt.png", transparency=1)  # palette entry 1 transparent -> white
    img = load_image(tmp_path / "pt.png")
    assert _px(img, 0, 0) == [1.0, 0.0, 0.0] and _px(img, 1, 0) == [1.0, 1.0, 1.0]
    im.save(tmp_path / "p.gif", transparency=1)
    img = load_image(tmp_path / "p.gif")
    assert _px(img, 0, 0) == [1.0, 0.0, 0.0] and _px(img, 1, 0) == [1.0, 1.0, 1.0]


def test_mode_CMYK(tmp_path):
    im = Image.new("CMYK", (2, 1))
    im.putpixel((0, 0), (255, 0, 0, 0))  # cyan
    im.putpixel((1, 0), (0, 0, 0, 255))  # black
    im.save(tmp_path / "cmyk.tif")
    img = load_image(tmp_path / "cmyk.tif")
    assert img.shape == (1, 3, 1, 2)
    assert _px(img, 0, 0) == [0.0, 1.0, 1.0]
    assert _px(img, 1, 0) == [0.0, 0.0, 0.0]


def test_mode_I16_keeps_16_bit_precision(tmp_path):
    a = np.array([[0, 1, 32768, 65535]], np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # I;16 (Pillow >= 10) or I (older)
    img = load_image(tmp_path / "g16.png")
    assert img.shape == (1, 3, 1, 4)
    expect = torch.tensor([0.0, 1 / 65535, 32768 / 65535, 1.0]).expand(3, 4)
    assert torch.allclose(img[0, :, 0, :], expect, atol=1e-7, rtol=0)


def test_mode_I_and_F(tmp_path):
    Image.new("I", (2, 2), 65535 // 5).save(tmp_path / "i.tif")
    assert load_image(tmp_path / "i.tif")[0, :, 0, 0].tolist() == pytest.approx([0.2] * 3)
    Image.new("F", (2, 2), 0.25).save(tmp_path / "f.tif")
    assert load_image(tmp_path / "f.tif")[0, :, 0, 0].tolist() == pytest.approx([0.25] * 3)


def test_decompression_bomb_limit(tmp_path):
    p = tmp_path / "ten.png"
    Image.new("RGB", (10, 10)).save(p)
    with pytest.raises(ImageError, match=r"10x10 = 100 pixels.*max_pixels=99 pixels"):
        load_image(p, max_pixels=99)
    assert load_image(p, max_pixels=100).shape == (1, 3, 10, 10)
    with pytest.raises(ValueError, match="max_pixels must be a positive integer or None"):
        load_image(p, max_pixels=0)


def test_pixel_limit_vs_pillows_own(tmp_path, monkeypatch):
    p = tmp_path / "ten.png"
    Image.new("RGB", (10, 10)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # Pillow errors above 20 pixels
    # Pillow's DecompressionBombError becomes ours.
    with pytest.raises(ImageError, match="max_pixels=15 pixels"):
        load_image(p, max_pixels=15)
    # A limit above Pillow's is honoured, and Pillow's global is restored afterwards.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(p, max_pixels=1000).shape == (1, 3, 10, 10)
        assert load_image(p, max_pixels=None).shape == (1, 3, 10, 10)
    assert Image.MAX_IMAGE_PIXELS == 10
    # Between Pillow's warning and error thresholds: no DecompressionBombWarning leaks out.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(p, max_pixels=100).shape == (1, 3, 10, 10)


# ---------------------------------------------------------------------------------------------
# Loading: errors
# ---------------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    p = tmp_path / "nope.png"
    with pytest.raises(ImageError, match="^" + re.escape(f"image not found: {p}") + "$"):
        load_image(p)


def test_directory(tmp_path):
    with pytest.raises(ImageError) as info:
        load_image(tmp_path)
    assert str(info.value) == f"image path is a directory, expected an image file: {tmp_path}"


def test_text_file(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("hello, not an image\n")
    with pytest.raises(ImageError) as info:
        load_image(p)
    assert str(info.value) == f"not an image file {p}: Pillow recognises no image format in it"


def test_non_image_binary_file(tmp_path):
    p = tmp_path / "weights.jpg"
    p.write_bytes(zlib.compress(bytes(range(256)) * 64))
    with pytest.raises(ImageError) as info:
        load_image(p)
    assert str(info.value) == f"not an image file {p}: Pillow recognises no image format in it"


def test_extension_that_lies_is_ignored(tmp_path):
    # The format comes from the file's content, not its name: PNG data named .jpg loads
    # exactly (no JPEG decoding), JPEG data named .png too.
    arr = _noise_u8(9, 7)
    Image.fromarray(arr).save(tmp_path / "png.jpg", format="PNG")
    Image.fromarray(arr).save(tmp_path / "jpeg.png", format="JPEG")
    Image.fromarray(arr).save(tmp_path / "real.jpg", format="JPEG")
    y = load_image(tmp_path / "png.jpg")
    assert torch.equal(y[0].permute(1, 2, 0) * 255, torch.from_numpy(arr).float())
    assert torch.equal(load_image(tmp_path / "jpeg.png"), load_image(tmp_path / "real.jpg"))


def _load_in_thread(path, timeout=10.0):
    """load_image(path) in a thread; returns its exception. A load blocked in open() on a FIFO
    is released by opening the write end, and the test fails."""
    box = {}

    def run():
        try:
            load_image(path)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["exc"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # a reader is waiting: succeeds
        os.close(fd)
        t.join(timeout)
        pytest.fail(f"load_image({path}) blocked for {timeout} s")
    return box.get("exc")


def test_fifo_is_refused_without_blocking(tmp_path):
    p = tmp_path / "pipe.png"
    os.mkfifo(p)
    exc = _load_in_thread(p)
    assert isinstance(exc, ImageError)
    assert str(exc) == f"image path is a FIFO (named pipe), expected a regular image file: {p}"


def test_device_is_refused():
    with pytest.raises(ImageError) as info:
        load_image("/dev/zero")
    assert str(info.value) == "image path is a character device, expected a regular image file: /dev/zero"


def test_path_under_a_file_is_not_found(tmp_path):
    f = tmp_path / "plain.txt"
    f.write_text("x")
    with pytest.raises(ImageError) as info:
        load_image(f / "a.png")
    assert str(info.value) == f"image not found: {f / 'a.png'}"


# Crafted PNGs (the fuzzer's case): a valid header and zlib stream, but fewer rows of data
# than the header declares. Pillow pads those with zeros without any error.
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _crafted_png(w, h, scanlines: bytes, interlace=0, depth=8, ctype=2) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(scanlines, 9))
            + _chunk(b"IEND", b""))


def _rows(n, nbytes, value=0x80):
    return b"".join(b"\0" + bytes([value]) * nbytes for _ in range(n))


def test_png_declaring_more_than_its_size_can_hold(tmp_path):
    # 4000x4000 RGB declared, one row of data: 92 bytes, 48 MB of scanlines; refused before
    # Pillow allocates anything (it used to load as a black 183 MiB tensor).
    p = tmp_path / "bomb.png"
    p.write_bytes(_crafted_png(4000, 4000, _rows(1, 12000)))
    n = p.stat().st_size
    with pytest.raises(ImageError) as info:
        load_image(p)
    assert str(info.value) == (
        f"cannot decode image {p}: truncated or crafted file: its header declares 4000x4000 RGB "
        f"(48004000 bytes of pixel data) but the file has {n} bytes, and PNG data decodes to at "
        "most 1032 times its size")


def test_png_with_fewer_rows_than_its_header(tmp_path):
    p = tmp_path / "short.png"
    p.write_bytes(_crafted_png(100, 50, _rows(10, 300)))
    with pytest.raises(ImageError) as info:
        load_image(p)
    assert str(info.value) == (f"cannot decode image {p}: truncated PNG data: the header declares "
                               "100x50 but the compressed data holds only 10 of its 50 rows")
    # Every row present: it loads, even with the zlib stream cut just after the last row.
    full = tmp_path / "full.png"
    full.write_bytes(_crafted_png(100, 50, _rows(50, 300)))
    assert load_image(full).shape == (1, 3, 50, 100)


def test_interlaced_png_row_count(tmp_path):
    # The seven Adam7 passes of a 5x3 grayscale image (one of them empty): with all their rows
    # it loads (so the count matches Pillow's decoder), one byte short it is refused.
    w, h = 5, 3
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    data = b""
    for x0, y0, dx, dy in passes:
        pw, ph = (w - x0 + dx - 1) // dx, (h - y0 + dy - 1) // dy
        if pw and ph:
            data += _rows(ph, pw, 200)
    ok = tmp_path / "adam7.png"
    ok.write_bytes(_crafted_png(w, h, data, interlace=1, ctype=0))
    y = load_image(ok)
    assert y.shape == (1, 3, 3, 5) and torch.allclose(y, torch.full_like(y, 200 / 255))
    bad = tmp_path / "adam7-short.png"
    bad.write_bytes(_crafted_png(w, h, data[:-1], interlace=1, ctype=0))
    with pytest.raises(ImageError) as info:
        load_image(bad)
    assert str(info.value) == (f"cannot decode image {bad}: truncated PNG data: the header declares 5x3 but "
                               f"the compressed data holds only {len(data) - 1} of the {len(data)} bytes of "
                               "its interlaced scanlines")


def test_low_bit_depth_png_counts_its_bits(tmp_path):
    # A flat 1-bit 2048x2048 PNG: 0.5 MB of scanlines, ~600 bytes of file; as 8-bit pixels it
    # would be 4 MB, past 1032:1, but the rule counts the bits the file stores.
    p = tmp_path / "bilevel.png"
    Image.new("1", (2048, 2048), 1).save(p)
    assert load_image(p).shape == (1, 3, 2048, 2048)


def test_bmp_declaring_more_than_its_size_can_hold(tmp_path):
    # A BMP header for 4000x4000 24-bit pixels, and no pixel data.
    info = struct.pack("<IiiHHIIiiII", 40, 4000, 4000, 1, 24, 0, 0, 2835, 2835, 0, 0)
    p = tmp_path / "empty.bmp"
    p.write_bytes(b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info)
    with pytest.raises(ImageError) as e:
        load_image(p)
    assert str(e.value) == (
        f"cannot decode image {p}: truncated or crafted file: its header declares 4000x4000 RGB "
        f"(48000000 bytes of pixel data) but the file has 54 bytes, and BMP data decodes to at most "
        "256 times its size")


def test_flat_images_within_the_ratios_load(tmp_path):
    # The flattest files Pillow writes in each format load (the ratios have a margin over them).
    cases = [("png", {}), ("jpg", dict(quality=1, optimize=True)), ("gif", {}), ("bmp", {}),
             ("tif", dict(compression="tiff_adobe_deflate"))]
    if features.check("webp"):
        cases.append(("webp", dict(quality=0, method=6)))
    for ext, kw in cases:
        p = tmp_path / f"flat.{ext}"
        Image.new("RGB", (1024, 1024), (10, 200, 30)).save(p, **kw)
        assert load_image(p).shape == (1, 3, 1024, 1024), ext


def test_flat_lossless_webp_beyond_its_ratio_is_refused(tmp_path):
    if not features.check("webp"):
        pytest.skip("this Pillow has no WebP support")
    # Lossless WebP codes a flat image in a few dozen bytes, whatever its size: documented limit.
    p = tmp_path / "flat.webp"
    Image.new("RGB", (1024, 1024), (10, 200, 30)).save(p, lossless=True)
    with pytest.raises(ImageError, match=r"WEBP data decodes to at most 32768 times its size$"):
        load_image(p)


@pytest.mark.parametrize("ext, detail", [
    ("png", r"truncated PNG data: the header declares 64x64 but the compressed data holds only \d+ of its 64 rows"),
    ("jpg", r"OSError: image file is truncated \(\d+ bytes not processed\)"),
    ("gif", r"OSError: image file is truncated \(\d+ bytes not processed\)"),
])
def test_truncated_image(tmp_path, ext, detail):
    full = tmp_path / f"full.{ext}"
    Image.fromarray(_noise_u8(64, 64)).save(full)
    data = full.read_bytes()
    p = tmp_path / f"trunc.{ext}"
    p.write_bytes(data[: len(data) // 2])  # cut in half
    with pytest.raises(ImageError, match="^" + re.escape(f"cannot decode image {p}: ") + detail + "$"):
        load_image(p)
    assert load_image(full).shape == (1, 3, 64, 64)


def test_truncated_png_is_refused_even_if_pillow_would_pad(tmp_path, monkeypatch):
    from PIL import ImageFile

    full = tmp_path / "full.png"
    Image.fromarray(_noise_u8(64, 64)).save(full)
    p = tmp_path / "trunc.png"
    p.write_bytes(full.read_bytes()[:2000])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="truncated PNG data"):
        load_image(p)


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext,fmt", [(".png", "PNG"), (".jpg", "JPEG"), (".JPEG", "JPEG"),
                                     (".webp", "WEBP"), (".bmp", "BMP"), (".tif", "TIFF"),
                                     (".tiff", "TIFF")])
def test_save_format_from_extension(tmp_path, ext, fmt):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("this Pillow has no WebP support")
    p = save_image(_rand_img(8, 9), tmp_path / f"x{ext}")
    with Image.open(p) as im:
        assert im.format == fmt and im.size == (9, 8) and im.mode == "RGB"
    assert load_image(p).shape == (1, 3, 8, 9)


def test_save_quality(tmp_path):
    x = torch.from_numpy(_noise_u8(64, 64).astype(np.float32) / 255).permute(2, 0, 1)
    lo = os.path.getsize(save_image(x, tmp_path / "lo.jpg", quality=20))
    hi = os.path.getsize(save_image(x, tmp_path / "hi.jpg", quality=95))
    assert lo < hi
    with pytest.raises(ValueError, match=r"quality must be an integer in \[1, 100\]"):
        save_image(x, tmp_path / "bad.jpg", quality=0)


def test_save_refuses_to_overwrite(tmp_path):
    p = tmp_path / "out.png"
    save_image(_rand_img(), p)
    before = p.read_bytes()
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        save_image(_rand_img(), p)
    assert p.read_bytes() == before
    x = _rand_img()
    save_image(x, p, overwrite=True)
    assert p.read_bytes() != before
    assert torch.equal(load_image(p) * 255, (x * 255).round())
    assert sorted(os.listdir(tmp_path)) == ["out.png"]


def test_save_unknown_extension(tmp_path):
    p = tmp_path / "out.xyz"
    with pytest.raises(ImageError, match=r"unknown image extension '\.xyz'; supported: .png"):
        save_image(_rand_img(), p)
    assert os.listdir(tmp_path) == []


def test_save_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="creates no directories"):
        save_image(_rand_img(), tmp_path / "sub" / "out.png")
    assert os.listdir(tmp_path) == []


def test_check_output_path(tmp_path):
    # Finding 13: every bad output directory is found up front, and the message names the
    # output path (never a temporary file).
    check_output_path(tmp_path / "ok.png")
    assert os.listdir(tmp_path) == []  # the probe file is gone
    missing = tmp_path / "sub" / "out.png"
    with pytest.raises(FileNotFoundError) as info:
        check_output_path(missing)
    assert str(info.value) == (f"cannot save {missing}: directory {tmp_path / 'sub'} does not exist "
                               "(save_image creates no directories)")
    f = tmp_path / "plain.txt"
    f.write_text("x")
    with pytest.raises(NotADirectoryError) as info:
        check_output_path(f / "out.png")
    assert str(info.value) == f"cannot save {f / 'out.png'}: {f} is not a directory"
    with pytest.raises(NotADirectoryError) as info:
        check_output_path(f / "deeper" / "out.png")
    assert str(info.value) == (f"cannot save {f / 'deeper' / 'out.png'}: a component of {f / 'deeper'} "
                               "is not a directory")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_unwritable_directory_is_found_and_named():
    # /proc refuses new files even to root (chmod 555 would not).
    with pytest.raises(OSError) as info:
        check_output_path("/proc/fastnst-out.png")
    assert str(info.value) == ("cannot save /proc/fastnst-out.png: cannot create a file in directory /proc: "
                               "No such file or directory")
    with pytest.raises(OSError) as info:
        save_image(_rand_img(), "/proc/fastnst-out.png")
    assert str(info.value).startswith("cannot save /proc/fastnst-out.png: cannot create a file in directory /proc")


def test_save_rejects_bad_tensors(tmp_path):
    with pytest.raises(ValueError, match=r"\[1, 3, H, W\] or \[3, H, W\].*got \[2, 3, 4, 4\]"):
        save_image(torch.rand(2, 3, 4, 4), tmp_path / "a.png")
    with pytest.raises(ValueError, match="floating-point"):
        save_image(torch.zeros(3, 4, 4, dtype=torch.uint8), tmp_path / "a.png")
    with pytest.raises(ValueError, match="NaN"):
        save_image(torch.full((3, 4, 4), float("nan")), tmp_path / "a.png")
    assert os.listdir(tmp_path) == []


def test_new_file_gets_normal_permissions(tmp_path):
    p = save_image(_rand_img(), tmp_path / "perm.png")
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~umask


def _failing_save(self, fp, *args, **kwargs):
    fp.write(b"\x89PNG partial data")
    raise RuntimeError("disk on fire")


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(Image.Image, "save", _failing_save)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_image(_rand_img(), tmp_path / "new.png")
    assert os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_original(tmp_path, monkeypatch):
    p = tmp_path / "old.png"
    save_image(_rand_img(), p)
    before = p.read_bytes()
    monkeypatch.setattr(Image.Image, "save", _failing_save)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_image(_rand_img(), p, overwrite=True)
    assert os.listdir(tmp_path) == ["old.png"]
    assert p.read_bytes() == before


# ---------------------------------------------------------------------------------------------
# Resizing
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,kwargs,expect", [
    ((300, 200), dict(size=512), (512, 341)),        # 200 * 512 / 300 = 341.3
    ((200, 300), dict(size=150), (100, 150)),        # landscape: width is the longest side
    ((100, 50), dict(pixels=20000), (200, 100)),     # scale sqrt(4) = 2
    ((300, 200), dict(pixels=6000), (95, 63)),       # scale 0.3162: 94.87, 63.25
    ((300, 200), dict(size=100, multiple=8), (104, 64)),  # 100 -> 104 (12.5 up), 66.7 -> 64
    ((300, 200), dict(multiple=16), (304, 208)),     # no target: only rounded to 16
    ((5, 400), dict(size=40, multiple=8), (8, 40)),  # 0.5 -> at least one multiple
    ((7, 9), dict(size=1), (1, 1)),
])
def test_resize_dims(shape, kwargs, expect):
    out = resize(_rand_img(*shape), **kwargs)
    assert tuple(out.shape) == (1, 3) + expect
    assert out.min() >= 0 and out.max() <= 1


def test_resize_neither_returns_input():
    x = _rand_img(30, 20)
    assert resize(x) is x
    assert resize(x, size=30) is x


def test_resize_methods():
    x = _rand_img(40, 30, b=2)
    down = resize(x, size=20)
    ref = F.interpolate(x, size=(20, 15), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(down, ref.clamp(0, 1))
    up = resize(x, size=80)
    ref = F.interpolate(x, size=(80, 60), mode="bicubic", align_corners=False)
    assert torch.allclose(up, ref.clamp(0, 1))
    assert up.min() >= 0 and up.max() <= 1
    const = torch.full((1, 3, 13, 7), 0.3)
    assert torch.allclose(resize(const, size=50), const.new_full((1, 3, 50, 27), 0.3))
    assert torch.allclose(resize(const, size=5), const.new_full((1, 3, 5, 3), 0.3))


def test_resize_half_precision():
    x = _rand_img(20, 20, dtype=torch.float16)
    y = resize(x, size=10)
    assert y.dtype == torch.float16 and y.shape == (1, 3, 10, 10)


def test_resize_errors():
    x = _rand_img(10, 10)
    with pytest.raises(ValueError, match="size must be a positive number, got 0"):
        resize(x, size=0)
    with pytest.raises(ValueError, match="pixels must be a positive number, got -5"):
        resize(x, pixels=-5)
    with pytest.raises(ValueError, match="not both"):
        resize(x, size=5, pixels=25)
    with pytest.raises(ValueError, match="multiple must be an integer >= 1"):
        resize(x, size=5, multiple=0)


# ---------------------------------------------------------------------------------------------
# Colour preservation
# ---------------------------------------------------------------------------------------------

def _stats(img):
    x = img.reshape(img.shape[0], 3, -1).double()
    mu = x.mean(-1)
    c = x - mu[..., None]
    return mu, c @ c.transpose(-1, -2) / x.shape[-1]


def _correlated(h, w, mean, mix, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(3, h * w, generator=g, dtype=torch.float64)
    mean = torch.tensor(mean, dtype=torch.float64)[:, None]
    x = torch.tensor(mix, dtype=torch.float64) @ z + mean
    return x.reshape(1, 3, h, w).float()


def test_match_color_matches_mean_and_covariance():
    # Mid-range images with different colour statistics, so almost nothing is clipped.
    source = _correlated(48, 40, [0.45, 0.5, 0.55], [[0.06, 0.01, 0.0], [0.0, 0.05, 0.02],
                                                     [0.01, 0.0, 0.04]], seed=1)
    target = _correlated(32, 36, [0.55, 0.45, 0.4], [[0.05, 0.03, 0.0], [0.02, 0.06, 0.0],
                                                     [0.0, 0.02, 0.07]], seed=2)
    out = match_color(source, target)
    assert out.shape == source.shape and out.dtype == source.dtype
    assert out.min() >= 0 and out.max() <= 1
    mu_o, cov_o = _stats(out)
    mu_t, cov_t = _stats(target)
    mu_s, cov_s = _stats(source)
    assert (mu_s - mu_t).abs().max() > 0.05 and (cov_s - cov_t).abs().max() > 1e-3
    assert torch.allclose(mu_o, mu_t, atol=1e-4)
    assert torch.allclose(cov_o, cov_t, atol=2e-5)


def test_match_color_degenerate_source_is_finite():
    gray = torch.rand(1, 1, 16, 16).expand(1, 3, 16, 16)
    out = match_color(gray, _rand_img(16, 16))
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    flat = match_color(torch.full((1, 3, 8, 8), 0.2), _rand_img(8, 8, lo=0.4, hi=0.6))
    assert torch.isfinite(flat).all()


def test_luminance_transfer_keeps_stylized_luma_and_content_chroma():
    stylized = _rand_img(24, 20, lo=0.3, hi=0.7)
    content = _rand_img(24, 20, lo=0.35, hi=0.65)
    content = 0.5 + 0.3 * (content - 0.5)  # moderate chroma: the result stays in gamut
    out = luminance_transfer(stylized, content)
    assert out.shape == stylized.shape
    assert out.min() > 0 and out.max() < 1  # nothing clamped, so the check below is exact
    yo, ys, yc = rgb_to_yiq(out), rgb_to_yiq(stylized), rgb_to_yiq(content)
    assert torch.allclose(yo[:, 0], ys[:, 0], atol=1e-5)
    assert torch.allclose(yo[:, 1:], yc[:, 1:], atol=1e-5)
    # Y of YIQ is the BT.601 luma
    luma = 0.299 * stylized[:, 0] + 0.587 * stylized[:, 1] + 0.114 * stylized[:, 2]
    assert torch.allclose(ys[:, 0], luma, atol=1e-6)


def test_luminance_transfer_resizes_content():
    stylized = _rand_img(24, 20)
    content = _rand_img(12, 10)
    out = luminance_transfer(stylized, content)
    assert out.shape == stylized.shape and out.min() >= 0 and out.max() <= 1
    gray_content = torch.full((1, 3, 50, 40), 0.5)
    out = luminance_transfer(stylized, gray_content)  # no chroma: out is the stylised luma
    luma = rgb_to_yiq(stylized)[:, :1].expand(-1, 3, -1, -1)
    assert torch.allclose(out, luma, atol=1e-5)
