"""Training data: image folders, crops, super-resolution pairs, (distributed) loaders.

- ``ImageFolder(root, size=256, crop="center")``: every image under ``root`` (recursively),
  as ``[3, size, size]`` float32 RGB in [0, 1], read by ``fastnst.image.load_image``'s rules
  (EXIF orientation applied, every Pillow mode to RGB, alpha composited onto white, the same
  pixel and file-size limits).
- ``SRPairs(root, factor=4, crop=288)``: (low-res, high-res) pairs as Johnson et al. make them
  for perceptual-loss super-resolution: a ``crop`` x ``crop`` high-res crop, and its Gaussian
  blur (sigma 1.0) downsampled bicubically by ``factor`` (``make_lr``).
- ``make_loader(dataset, batch_size, ...)``: a DataLoader whose sampler splits the data over
  the ranks under torchrun / torch.distributed, and whose batches (order *and* random crops)
  depend only on the seed and the epoch: not on the number of workers, nor on the global RNG.

Scanning. Files are found by extension (case-insensitive; default jpg, jpeg, png, webp, bmp),
in every sub-folder; names starting with "." (hidden files and folders, macOS "._x.jpg"
resource forks) are left out, and symbolic links to folders are not followed unless
``follow_links=True``. The list is sorted by path (the parts of the path relative to ``root``),
so it is the same on every machine and every run. Each file is checked when the folder is
scanned, so the count of usable images is known up front:

- ``verify="header"`` (default; about a millisecond per file): a regular, non-empty file that
  Pillow recognises, within ``max_pixels`` and ``load_image``'s file-size rule, whose header
  Pillow's ``verify`` accepts (for PNG that reads every chunk and checks its CRC, so truncated
  and corrupt PNGs are caught; for other formats only the header is read).
- ``verify="full"``: every file is decoded once with ``load_image`` (exact, but costs a full
  decode of the whole folder, minutes for a large data set).

Files that fail are left out, with one warning (``UnreadableImageWarning``): "skipped N
unreadable files in ROOT (first: PATH: REASON)"; ``dataset.skipped`` lists every
``(path, reason)``. A file that passed the scan but fails when it is loaded (a JPEG or BMP
truncated after its header with ``verify="header"``, or a file changed or deleted since) raises
``ImageError`` naming the file: nothing is substituted silently. A folder that does not exist,
is not a folder, holds no file with the extensions, or no readable one, raises ``ValueError``
naming the folder and the extensions.

Limitations: every rank of a distributed run scans the folder itself (no shared cache); the
scan is serial; a file that is replaced between the scan and its loading is read as it is then.
"""

from __future__ import annotations

import itertools
import numbers
import os
import random
import stat
import warnings

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fastnst.image import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    _check_regular,
    _open_checked,
    _pil,
    _pillow_limit_at_least,
    load_image,
)

__all__ = [
    "DEFAULT_EXTENSIONS",
    "EpochLoader",
    "EpochSampler",
    "ImageFolder",
    "SRPairs",
    "UnreadableImageWarning",
    "gaussian_blur",
    "list_images",
    "make_loader",
    "make_lr",
    "world",
]

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

# A file is read by its content, whatever its extension says (a PNG named .jpg is read).
_VERIFY_MODES = ("header", "full")


class UnreadableImageWarning(UserWarning):
    """Files of an image folder were left out because they cannot be read."""


# --------------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------------

def _norm_extensions(extensions) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    try:
        exts = tuple(extensions)
    except TypeError:
        raise ValueError(f"extensions must be a string or a sequence of strings, got "
                         f"{extensions!r}") from None
    out = []
    for e in exts:
        if not isinstance(e, str) or not e.strip(". "):
            raise ValueError(f"extensions must be non-empty strings like '.jpg', got {e!r}")
        e = e.strip().lower()
        out.append(e if e.startswith(".") else "." + e)
    if not out:
        raise ValueError("extensions must name at least one extension, got none")
    return tuple(dict.fromkeys(out))


def _list_files(root: str, exts: tuple[str, ...], follow_links: bool) -> list[str]:
    found = []
    seen_dirs = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_links):
        if follow_links:  # a link back up the tree must not loop
            try:
                st = os.stat(dirpath)
            except OSError:
                dirnames[:] = []
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                dirnames[:] = []
                continue
            seen_dirs.add(key)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in exts:
                found.append(os.path.join(dirpath, f))
    found.sort(key=lambda p: os.path.relpath(p, root).split(os.sep))
    return found


def list_images(root, extensions=DEFAULT_EXTENSIONS, follow_links: bool = False) -> list[str]:
    """The image files under the folder ``root`` (recursively, hidden entries left out), in
    sorted order of their paths relative to ``root``; no file is opened."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{root} is not a folder")
    return _list_files(root, _norm_extensions(extensions), follow_links)


def _probe_header(path: str, max_pixels) -> tuple[int, int]:
    """(width, height) of the image file ``path`` from its header, or ImageError saying why it
    cannot be read. Decodes no pixels (see the module docstring, verify="header")."""
    Image, _, UnidentifiedImageError = _pil()
    # Refused before it is opened: a FIFO would block open() forever.
    size = _check_regular(path, os.stat).st_size
    if size == 0:
        raise ImageError(f"empty file: {path}")
    with _pillow_limit_at_least(Image, max_pixels), warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        except OSError as e:
            raise ImageError(f"cannot read image {path}: {e.strerror or e}") from None
        with open(fd, "rb") as fp:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ImageError(f"not a regular file: {path}")
            img, _ = _open_checked(
                fp, path, size, max_pixels, Image, UnidentifiedImageError,
                lambda detail: ImageError(f"image {path} is too large: {detail}, the limit is "
                                          f"max_pixels={max_pixels}"))
            with img:
                w, h = img.size
                if w <= 0 or h <= 0:
                    raise ImageError(f"image {path} has no pixels ({w}x{h})")
                try:
                    img.verify()
                except Exception as e:  # noqa: BLE001 - whatever Pillow's verify raises
                    raise ImageError(f"cannot decode image {path}: {type(e).__name__}: {e}") \
                        from None
    return w, h


def _probe_full(path: str, max_pixels) -> tuple[int, int]:
    img = load_image(path, max_pixels=max_pixels)
    return int(img.shape[-1]), int(img.shape[-2])


def _scan(root, extensions, verify, max_pixels, follow_links, min_side: int = 0,
          stacklevel: int = 3):
    """(root, files, sizes, skipped, exts): the readable images under ``root``; sizes are
    (width, height) as stored (before EXIF orientation; the shorter side is the same)."""
    if verify not in _VERIFY_MODES:
        raise ValueError(f"verify must be one of {_VERIFY_MODES}, got {verify!r}")
    if max_pixels is not None and (not isinstance(max_pixels, numbers.Integral)
                                   or isinstance(max_pixels, bool) or max_pixels <= 0):
        raise ValueError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
    exts = _norm_extensions(extensions)
    try:
        sroot = os.path.abspath(os.fspath(root))
    except TypeError:
        raise ValueError(f"root must be a path to a folder, got {root!r}") from None
    looked = ", ".join(exts)
    if not os.path.exists(sroot):
        raise ValueError(f"image folder not found: {sroot} (looking for {looked})")
    if not os.path.isdir(sroot):
        raise ValueError(f"not a folder: {sroot}: an image folder is a directory of image files "
                         f"({looked})")
    candidates = _list_files(sroot, exts, follow_links)
    if not candidates:
        raise ValueError(f"no image files in {sroot}: found no file ending in {looked} "
                         "(searched every sub-folder; names starting with '.' are left out)")
    probe = _probe_header if verify == "header" else _probe_full
    files, sizes, skipped, small = [], [], [], []
    for path in candidates:
        try:
            w, h = probe(path, max_pixels)
        except ImageError as e:
            skipped.append((path, str(e)))
            continue
        if min(w, h) < min_side:
            small.append((path, f"{w}x{h}, shorter side below {min_side}"))
            continue
        files.append(path)
        sizes.append((w, h))
    if skipped:
        first, why = skipped[0]
        warnings.warn(f"skipped {len(skipped)} unreadable file{'s' * (len(skipped) != 1)} in "
                      f"{sroot} (first: {first}: {why})", UnreadableImageWarning,
                      stacklevel=stacklevel)
    if small:
        first, why = small[0]
        warnings.warn(f"left out {len(small)} image{'s' * (len(small) != 1)} in {sroot} "
                      f"smaller than {min_side} pixels on the shorter side (first: {first}: "
                      f"{why})", UserWarning, stacklevel=stacklevel)
    if not files:
        parts = [f"{len(skipped)} unreadable"] if skipped else []
        if small:
            parts.append(f"{len(small)} smaller than {min_side} pixels")
        detail = f"; first: {(skipped or small)[0][0]}: {(skipped or small)[0][1]}"
        raise ValueError(f"no readable image in {sroot}: {len(candidates)} file(s) ending in "
                         f"{looked}, {' and '.join(parts)}{detail}")
    return sroot, files, sizes, skipped + small, exts


# --------------------------------------------------------------------------------------------
# Resizing and cropping
# --------------------------------------------------------------------------------------------

def _resize_square(img: torch.Tensor, size: int) -> torch.Tensor:
    """[1, 3, s, s] -> [1, 3, size, size]: antialiased bilinear down, bicubic up (the rule of
    fastnst.image.resize), clamped to [0, 1]."""
    s = img.shape[-1]
    if s == size:
        return img
    if size < s:
        y = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
    else:
        y = F.interpolate(img, size=(size, size), mode="bicubic", align_corners=False)
    return y.clamp_(0.0, 1.0)


def _offsets(H: int, W: int, h: int, w: int, mode: str, rng) -> tuple[int, int]:
    """Top-left corner of an h x w crop of an H x W image: centred (round down), or uniform
    over every position (``rng``: a random.Random, or None for torch's global RNG)."""
    if mode == "center":
        return (H - h) // 2, (W - w) // 2
    if rng is None:
        top = int(torch.randint(0, H - h + 1, ()).item())
        left = int(torch.randint(0, W - w + 1, ()).item())
        return top, left
    return rng.randint(0, H - h), rng.randint(0, W - w)


def _check_size(name: str, v) -> int:
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _check_mode(name: str, v) -> str:
    if v not in ("random", "center"):
        raise ValueError(f"{name} must be 'random' or 'center', got {v!r}")
    return v


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------

class _Folder(Dataset):
    """Scanned folder; items are addressed by an index or by (index, seed), the key
    ``make_loader`` passes so random crops follow the loader's seed and epoch."""

    seeded_keys = True  # make_loader passes (index, seed) keys to datasets that say so

    def __len__(self) -> int:
        return len(self.files)

    def _key(self, key):
        if isinstance(key, tuple):
            index, seed = key
            rng = random.Random(int(seed))
        else:
            index, rng = key, None
        if not isinstance(index, numbers.Integral) or isinstance(index, bool):
            raise TypeError(f"{type(self).__name__} indices must be integers, got {index!r}")
        n = len(self.files)
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"{type(self).__name__} index {index} out of range for {n} images")
        return index % n, rng

    def _load(self, index: int) -> torch.Tensor:
        path = self.files[index]
        try:
            return load_image(path, max_pixels=self.max_pixels)
        except ImageError as e:
            hint = (" (the scan checked headers only: verify='full' decodes every file when "
                    "the folder is scanned and leaves out those that fail)"
                    if self.verify == "header" else "")
            raise ImageError(f"{e}; item {index} of the image folder {self.root}, readable when "
                             f"it was scanned{hint}") from None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.root!r}: {len(self.files)} images, "
                f"{len(self.skipped)} left out)")


class ImageFolder(_Folder):
    """Every image under ``root`` (recursively) as ``[3, size, size]`` float32 RGB in [0, 1].

    - ``size``: the shorter side is resized to ``size`` and a ``size`` x ``size`` square is
      cropped from it, as pytorch/examples' fast_neural_style does (``Resize(size)`` then
      ``CenterCrop(size)``). It is done in the cheaper order: the square of the shorter side
      is cropped from the image first, then resized once (antialiased bilinear down, bicubic
      up, clamped), which differs from resizing first only at the square's border pixels.
      ``None``: the whole image, ``[3, H, W]`` (batch size 1 then, or a collate of your own).
    - ``crop``: ``"center"`` (default, pytorch/examples) or ``"random"`` (uniform along the
      longer side). Under ``make_loader`` the random position depends on the loader's seed, the
      epoch and the index only; indexed directly (``ds[i]``) it uses torch's global RNG.
    - ``extensions``, ``verify``, ``max_pixels``, ``follow_links``: see the module docstring.

    Attributes: ``root`` (absolute), ``files`` (sorted paths), ``sizes`` ((width, height) as
    stored), ``skipped`` ((path, reason) for each file left out), ``extensions``.
    """

    def __init__(self, root, size: int | None = 256, crop: str = "center",
                 extensions=DEFAULT_EXTENSIONS, verify: str = "header",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, follow_links: bool = False):
        self.size = None if size is None else _check_size("size", size)
        self.crop = _check_mode("crop", crop)
        self.verify, self.max_pixels = verify, max_pixels
        self.root, self.files, self.sizes, self.skipped, self.extensions = _scan(
            root, extensions, verify, max_pixels, follow_links)

    def __getitem__(self, key) -> torch.Tensor:
        index, rng = self._key(key)
        img = self._load(index)
        if self.size is None:
            return img[0]
        H, W = img.shape[-2:]
        s = min(H, W)
        top, left = _offsets(H, W, s, s, self.crop, rng)
        return _resize_square(img[..., top:top + s, left:left + s], self.size)[0].contiguous()


class SRPairs(_Folder):
    """Super-resolution training pairs (Johnson et al. 2016): ``(lr, hr)`` with ``hr`` a
    ``[3, crop, crop]`` crop of an image at its own resolution and ``lr = make_lr(hr, factor,
    sigma)``, ``[3, crop // factor, crop // factor]``: Gaussian blur (sigma 1.0) then bicubic
    downsampling by ``factor`` without antialiasing (the blur is the anti-alias filter); both
    float32 RGB in [0, 1].

    - ``crop`` must be a multiple of ``factor`` (288 = the paper's, for x4 and x8).
    - ``position``: ``"random"`` (training; seeded as ``ImageFolder``'s random crop) or
      ``"center"`` (a fixed validation set).
    - Images whose shorter side is below ``crop`` are left out when the folder is scanned (with
      a warning and in ``skipped``): upscaling them would make blurry targets.
    - ``extensions``, ``verify``, ``max_pixels``, ``follow_links``: as ``ImageFolder``.
    """

    def __init__(self, root, factor: int = 4, crop: int = 288, position: str = "random",
                 sigma: float = 1.0, extensions=DEFAULT_EXTENSIONS, verify: str = "header",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, follow_links: bool = False):
        self.factor = _check_size("factor", factor)
        self.crop = _check_size("crop", crop)
        if self.crop % self.factor:
            raise ValueError(f"crop ({crop}) must be a multiple of factor ({factor}), e.g. "
                             f"{max(self.factor, self.crop // self.factor * self.factor)}")
        self.position = _check_mode("position", position)
        self.sigma = _check_sigma(sigma)
        self.verify, self.max_pixels = verify, max_pixels
        self.root, self.files, self.sizes, self.skipped, self.extensions = _scan(
            root, extensions, verify, max_pixels, follow_links, min_side=self.crop)

    def __getitem__(self, key) -> tuple[torch.Tensor, torch.Tensor]:
        index, rng = self._key(key)
        img = self._load(index)
        H, W = img.shape[-2:]
        c = self.crop
        if min(H, W) < c:  # the file changed since the scan
            raise ImageError(f"image {self.files[index]} is {W}x{H}, smaller than the crop "
                             f"{c}x{c} (item {index} of the image folder {self.root})")
        top, left = _offsets(H, W, c, c, self.position, rng)
        hr = img[..., top:top + c, left:left + c].contiguous()
        lr = make_lr(hr, self.factor, self.sigma)
        return lr[0], hr[0]


# --------------------------------------------------------------------------------------------
# Super-resolution degradation
# --------------------------------------------------------------------------------------------

def _check_sigma(sigma) -> float:
    if not isinstance(sigma, numbers.Real) or isinstance(sigma, bool) or not sigma >= 0 \
            or sigma == float("inf"):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    return float(sigma)


def _as4(img: torch.Tensor, name: str):
    if not isinstance(img, torch.Tensor) or img.dim() not in (3, 4) or not img.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor [C, H, W] or [B, C, H, W], got "
                         f"{type(img).__name__ if not isinstance(img, torch.Tensor) else list(img.shape)}")
    return (img[None], True) if img.dim() == 3 else (img, False)


def gaussian_blur(img: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Gaussian blur of ``img`` ``[C, H, W]`` or ``[B, C, H, W]``, each channel separately.

    Kernel: taps k(i) = exp(-i^2 / (2 sigma^2)) for i in [-r, r], r = ceil(3 sigma), divided by
    their sum; applied along H then W. Borders: reflection without repeating the edge pixel
    (torch's / numpy's ``reflect``), or edge replication where a side is not longer than r.
    ``sigma = 0`` returns ``img``. Same dtype and device; differentiable.
    """
    sigma = _check_sigma(sigma)
    x, squeeze = _as4(img, "img")
    if sigma == 0:
        return img
    r = int(-(-3 * sigma // 1))
    i = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-(i * i) / (2 * sigma * sigma))
    k = (k / k.sum()).to(x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32)
    y = x if x.dtype == k.dtype else x.to(k.dtype)
    B, C, H, W = y.shape
    mode = "reflect" if min(H, W) > r else "replicate"
    y = F.pad(y, (r, r, r, r), mode=mode)
    y = F.conv2d(y.reshape(B * C, 1, H + 2 * r, W + 2 * r), k.view(1, 1, -1, 1).to(y.device))
    y = F.conv2d(y, k.view(1, 1, 1, -1).to(y.device)).reshape(B, C, H, W).to(x.dtype)
    return y[0] if squeeze else y


def make_lr(hr: torch.Tensor, factor: int = 4, sigma: float = 1.0) -> torch.Tensor:
    """The low-resolution input for a high-resolution image, as Johnson et al. make it:
    ``gaussian_blur(hr, sigma)``, then bicubic downsampling by ``factor`` (torch's bicubic,
    a = -0.75, ``align_corners=False``, antialias off: the blur is the low-pass filter), clamped
    to [0, 1]. ``hr`` ``[C, H, W]`` or ``[B, C, H, W]`` with H and W multiples of ``factor``;
    returns ``[..., H // factor, W // factor]``, same dtype."""
    factor = _check_size("factor", factor)
    x, squeeze = _as4(hr, "hr")
    H, W = x.shape[-2:]
    if H % factor or W % factor:
        raise ValueError(f"hr's H and W ({H}x{W}) must be multiples of factor ({factor})")
    y = gaussian_blur(x, sigma)
    y32 = y if y.dtype in (torch.float32, torch.float64) else y.float()
    lr = F.interpolate(y32, size=(H // factor, W // factor), mode="bicubic", align_corners=False,
                       antialias=False).clamp_(0.0, 1.0).to(x.dtype)
    return lr[0] if squeeze else lr


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 over them): the same on every platform."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & _MASK64)) & _MASK64
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        x = z ^ (z >> 31)
    return x >> 1


def world() -> tuple[int, int]:
    """(world size, rank): torch.distributed's when a process group is initialised, else
    torchrun's environment (WORLD_SIZE, RANK), else (1, 0)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    env = os.environ.get("WORLD_SIZE")
    if env is None:
        return 1, 0
    try:
        size = int(env)
        rank = int(os.environ.get("RANK", "0" if size == 1 else ""))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={env!r} and RANK={os.environ.get('RANK')!r} in the "
                         "environment must be integers (as torchrun sets them)") from None
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"WORLD_SIZE={size} and RANK={rank} in the environment: need "
                         "WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE")
    return size, rank


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` (``num_replicas`` = 1 outside distributed runs) whose indices
    come paired with a per-item seed, ``(index, seed)``, for datasets that take such keys
    (``seeded_keys = True``: ``ImageFolder``, ``SRPairs``); the seed depends on the sampler's
    seed, the epoch and the index only. Order: ``DistributedSampler``'s (a permutation from
    seed + epoch when shuffling; padded by repeating items, or cut with ``drop_last``, to a
    multiple of ``num_replicas``)."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=drop_last)
        self.keyed = bool(getattr(dataset, "seeded_keys", False))
        self._skip = 0

    def skip_next(self, n: int) -> None:
        """Leave out the first ``n`` items of the next pass only (a resumed run starts where
        the interrupted one stopped, in the same epoch's order)."""
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0:
            raise ValueError(f"skip_next takes an integer >= 0, got {n!r}")
        self._skip = int(n)

    def __iter__(self):
        indices = super().__iter__()
        skip, self._skip = self._skip, 0
        if skip:
            indices = itertools.islice(indices, skip, None)
        if not self.keyed:
            return indices
        seed, epoch = self.seed, self.epoch
        return ((i, _mix(seed, epoch, i)) for i in indices)


class EpochLoader(DataLoader):
    """DataLoader that numbers its passes: each ``iter()`` is one epoch, ``set_epoch(e)``
    (forwarded to the sampler) chooses the next one; the default is the previous one + 1, so
    shuffling and random crops change every epoch even without ``set_epoch`` calls. The worker
    seeds (torch, ``random``, numpy in each worker) are drawn from seed, rank and epoch too."""

    def __init__(self, *args, loader_seed: int = 0, loader_rank: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self._loader_seed, self._loader_rank = int(loader_seed), int(loader_rank)
        self._next_epoch = 0

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` runs."""
        return self._next_epoch

    def set_epoch(self, epoch: int) -> None:
        if not isinstance(epoch, numbers.Integral) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}")
        self._next_epoch = int(epoch)
        self.sampler.set_epoch(int(epoch))

    def __iter__(self):
        epoch = self._next_epoch
        self.sampler.set_epoch(epoch)
        if self.generator is not None:
            self.generator.manual_seed(_mix(self._loader_seed, self._loader_rank, epoch))
        self._next_epoch = epoch + 1
        return super().__iter__()


def _seed_worker(worker_id: int) -> None:
    """worker_init_fn: seed Python's and numpy's RNGs from the worker's torch seed (which the
    DataLoader derives from its generator), for transforms that use them."""
    import numpy as np

    s = torch.initial_seed()
    random.seed(s)
    np.random.seed(s % (1 << 32))


def make_loader(dataset, batch_size: int = 1, shuffle: bool = True, num_workers: int = 0,
                seed: int = 0, drop_last: bool = False, *, num_replicas: int | None = None,
                rank: int | None = None, **loader_kwargs) -> EpochLoader:
    """A DataLoader (``EpochLoader``) for ``dataset`` with an ``EpochSampler``.

    - Distributed: the data are split over ``num_replicas`` ranks (default ``world()``:
      torch.distributed's world when a process group is initialised, else torchrun's WORLD_SIZE
      and RANK, else one process); each rank gets ``ceil(len / ranks)`` items (or the floor
      with ``drop_last``), disjoint up to the padding.
    - Deterministic: the order is a permutation drawn from ``seed`` + epoch (when
      ``shuffle``), random crops of ``ImageFolder`` / ``SRPairs`` come from (seed, epoch,
      index), so two loaders with the same arguments give the same batches whatever
      ``num_workers``; other datasets' randomness comes from the worker seeds, which depend on
      (seed, rank, epoch) (not on the epoch with ``persistent_workers=True``, and with
      ``num_workers=0`` it is the main process's global RNG).
    - ``drop_last`` drops the last incomplete batch and cuts the data to a multiple of the
      ranks instead of padding.
    - ``set_epoch(e)`` on the loader (or its sampler) chooses the epoch of the next pass; by
      default each pass is the next epoch.
    - Other DataLoader arguments (``pin_memory``, ``persistent_workers``, ``collate_fn``, ...)
      pass through ``loader_kwargs``; ``sampler``, ``batch_sampler``, ``generator`` and
      ``worker_init_fn`` are this function's.
    """
    for k in ("sampler", "batch_sampler", "generator", "worker_init_fn", "shuffle"):
        if k in loader_kwargs:
            raise ValueError(f"make_loader sets {k} itself; got {k}={loader_kwargs[k]!r}")
    batch_size = _check_size("batch_size", batch_size)
    if not isinstance(num_workers, numbers.Integral) or isinstance(num_workers, bool) \
            or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if (num_replicas is None) != (rank is None):
        raise ValueError("give both num_replicas and rank, or neither (then they come from "
                         "torch.distributed or torchrun's environment)")
    if num_replicas is None:
        num_replicas, rank = world()
    else:
        num_replicas = _check_size("num_replicas", num_replicas)
        if not isinstance(rank, numbers.Integral) or isinstance(rank, bool) \
                or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be an integer in [0, {num_replicas}), got {rank!r}")
    if len(dataset) == 0:
        raise ValueError("make_loader: the dataset is empty")
    sampler = EpochSampler(dataset, num_replicas=int(num_replicas), rank=int(rank),
                           shuffle=bool(shuffle), seed=int(seed), drop_last=bool(drop_last))
    generator = torch.Generator()
    return EpochLoader(dataset, batch_size=batch_size, sampler=sampler,
                       num_workers=int(num_workers), drop_last=bool(drop_last),
                       generator=generator, worker_init_fn=_seed_worker,
                       loader_seed=int(seed), loader_rank=int(rank), **loader_kwargs)
