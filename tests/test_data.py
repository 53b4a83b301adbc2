"""fastnst.data: image folders, crops, super-resolution pairs, (distributed) loaders."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fastnst.data import (
    EpochSampler,
    ImageFolder,
    SRPairs,
    UnreadableImageWarning,
    gaussian_blur,
    make_loader,
    make_lr,
    world,
)
from fastnst.image import ImageError


def _noise(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _save(path, arr=None, size=(12, 20), seed=0, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr is None:
        arr = _noise(*size, seed=seed)
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    img.save(path, **kw)
    return path


def _folder(tmp_path, n=6, h=16, w=40):
    root = tmp_path / "imgs"
    for i in range(n):
        _save(root / f"d{i % 2}" / f"{i}.png", size=(h, w), seed=i)
    return root


def _png_bytes(h=16, w=16):
    import io

    b = io.BytesIO()
    Image.fromarray(_noise(h, w)).save(b, format="PNG")
    return b.getvalue()


# --------------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------------

def test_scan_is_recursive_sorted_and_filtered(tmp_path):
    root = tmp_path / "r"
    for rel in ["b/2.png", "a/z/1.JPG", "a/0.webp", "c.bmp", "a/y.jpeg"]:
        _save(root / rel, quality=95) if rel.lower().endswith((".jpg", ".jpeg", ".webp")) \
            else _save(root / rel)
    (root / "notes.txt").write_text("not an image")
    _save(root / ".hidden.png")
    _save(root / ".git" / "x.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = ImageFolder(root, size=8)
    rel = [os.path.relpath(f, ds.root) for f in ds.files]
    assert rel == [os.path.join(*p.split("/")) for p in
                   ["a/0.webp", "a/y.jpeg", "a/z/1.JPG", "b/2.png", "c.bmp"]]
    assert ds.skipped == [] and len(ds) == 5
    assert ImageFolder(root, size=8).files == ds.files  # deterministic
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (3, 8, 8) and x.dtype == torch.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
    only_png = ImageFolder(root, size=8, extensions=("PNG", ".bmp"))
    assert [os.path.basename(f) for f in only_png.files] == ["2.png", "c.bmp"]
    with pytest.raises(IndexError):
        ds[5]
    assert torch.equal(ds[-1], ds[4])


def test_center_crop_is_resize_shorter_side_then_crop(tmp_path):
    arr = _noise(12, 20)
    root = tmp_path / "c"
    _save(root / "a.png", arr)
    x = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    # Same size: exactly the centre square.
    assert torch.equal(ImageFolder(root, size=12)[0], x[:, :, 4:16])
    # Smaller: the centre square, resized once (antialiased bilinear).
    ref = F.interpolate(x[None, :, :, 4:16], size=(6, 6), mode="bilinear", antialias=True,
                        align_corners=False)[0]
    torch.testing.assert_close(ImageFolder(root, size=6)[0], ref)
    # ...which is pytorch/examples' Resize(6) + CenterCrop(6) but at the border: on a smooth
    # image the two agree closely.
    yy, xx = np.mgrid[0:12, 0:20]
    smooth = np.stack([yy * 10, xx * 6, 255 - xx * 6], -1).astype(np.uint8)
    _save(root / "a.png", smooth)
    s = torch.from_numpy(smooth).permute(2, 0, 1).float()[None] / 255
    rs = F.interpolate(s, size=(6, 10), mode="bilinear", antialias=True, align_corners=False)
    assert (ImageFolder(root, size=6)[0] - rs[0, :, :, 2:8]).abs().mean() < 0.03
    # Larger: bicubic, clamped.
    up = ImageFolder(root, size=30)[0]
    assert up.shape == (3, 30, 30) and 0 <= up.min() and up.max() <= 1
    assert ImageFolder(root, size=None)[0].shape == (3, 12, 20)


def test_modes_and_exif_follow_load_image(tmp_path):
    root = tmp_path / "m"
    _save(root / "gray.png", Image.fromarray(_noise(8, 8)[..., 0], "L"))
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent: composited onto white
    _save(root / "rgba.png", Image.fromarray(rgba, "RGBA"))
    _save(root / "pal.png", Image.fromarray(_noise(8, 8)).convert("P"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 8 wide, 4 high -> upright 4 wide, 8 high
    _save(root / "rot.png", size=(4, 8), exif=exif)
    ds = ImageFolder(root, size=None)
    got = {os.path.basename(f): ds[i] for i, f in enumerate(ds.files)}
    assert all(v.shape[0] == 3 for v in got.values())
    g = got["gray.png"]
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    assert torch.equal(got["rgba.png"], torch.ones(3, 8, 8))
    assert got["rot.png"].shape == (3, 8, 4)


def test_unreadable_files_are_skipped_with_one_warning(tmp_path):
    root = tmp_path / "u"
    _save(root / "ok1.png")
    _save(root / "sub" / "ok2.jpg")
    (root / "a_text.jpg").write_text("hello, not a JPEG")
    (root / "b_empty.webp").write_bytes(b"")
    (root / "c_trunc.png").write_bytes(_png_bytes()[:300])
    os.mkfifo(root / "d_fifo.png")  # must be refused, not opened (it would block)
    os.symlink(root / "missing.png", root / "e_broken.png")
    with pytest.warns(UnreadableImageWarning) as rec:
        ds = ImageFolder(root, size=8)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert msg.startswith(f"skipped 5 unreadable files in {ds.root} (first: ")
    assert "a_text.jpg" in msg and "not an image file" in msg
    assert [os.path.basename(f) for f in ds.files] == ["ok1.png", "ok2.jpg"]
    assert [os.path.basename(p) for p, _ in ds.skipped] == [
        "a_text.jpg", "b_empty.webp", "c_trunc.png", "d_fifo.png", "e_broken.png"]
    reasons = dict((os.path.basename(p), r) for p, r in ds.skipped)
    assert "empty" in reasons["b_empty.webp"] and "FIFO" in reasons["d_fifo.png"]
    assert "not found" in reasons["e_broken.png"]


def test_folder_errors_name_the_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no image files in .*empty.*\.jpg, \.jpeg, \.png"):
        ImageFolder(empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"\x89PNG garbage")
    with pytest.warns(UnreadableImageWarning), \
            pytest.raises(ValueError, match=r"no readable image in .*bad: 1 file.*1 unreadable"):
        ImageFolder(bad)
    with pytest.raises(ValueError, match=r"not a folder: .*x\.png"):
        ImageFolder(bad / "x.png")
    with pytest.raises(ValueError, match=r"image folder not found: .*nope"):
        ImageFolder(tmp_path / "nope")
    with pytest.raises(ValueError, match="crop"):
        ImageFolder(bad, crop="middle")
    with pytest.raises(ValueError, match="verify"):
        ImageFolder(bad, verify="lazy")


def test_failure_at_load_time_raises_naming_the_file(tmp_path):
    root = tmp_path / "f"
    _save(root / "a.png")
    good = _save(root / "b.bmp", size=(16, 16))
    ds = ImageFolder(root, size=8)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])  # a truncated BMP: its header still reads
    with pytest.raises(ImageError, match=r"b\.bmp.*item 1 of the image folder .*verify='full'"):
        ds[1]
    assert ImageFolder(root, size=8).files == ds.files  # the header check passes it...
    with pytest.warns(UnreadableImageWarning, match=r"skipped 1 unreadable file in .*b\.bmp"):
        full = ImageFolder(root, size=8, verify="full")  # ...the full decode does not
    assert [os.path.basename(f) for f in full.files] == ["a.png"]
    os.unlink(root / "a.png")
    with pytest.raises(ImageError, match=r"a\.png"):
        full[0]


# --------------------------------------------------------------------------------------------
# Super-resolution
# --------------------------------------------------------------------------------------------

def _blur_ref(x: np.ndarray, sigma: float) -> np.ndarray:
    r = math.ceil(3 * sigma)
    k = np.array([math.exp(-i * i / (2 * sigma * sigma)) for i in range(-r, r + 1)])
    k /= k.sum()
    C, H, W = x.shape
    p = np.pad(x, ((0, 0), (r, r), (r, r)), mode="reflect")
    out = np.zeros_like(x)
    for y in range(H):
        for xx in range(W):
            win = p[:, y:y + 2 * r + 1, xx:xx + 2 * r + 1]
            out[:, y, xx] = (win * k[None, :, None] * k[None, None, :]).sum((1, 2))
    return out


def _cubic(t, a=-0.75):
    t = abs(t)
    if t <= 1:
        return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    if t < 2:
        return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    return 0.0


def _bicubic_down_ref(x: np.ndarray, f: int) -> np.ndarray:
    def along(v, n_out, axis):
        n = v.shape[axis]
        rows = []
        for j in range(n_out):
            src = (j + 0.5) * f - 0.5
            i0 = math.floor(src)
            acc = 0
            for m in range(i0 - 1, i0 + 3):
                acc = acc + _cubic(src - m) * np.take(v, min(max(m, 0), n - 1), axis=axis)
            rows.append(acc)
        return np.stack(rows, axis=axis)
    C, H, W = x.shape
    return along(along(x, H // f, 1), W // f, 2)


def test_gaussian_blur_matches_the_formula():
    x = torch.rand(3, 9, 11, dtype=torch.float64)
    for sigma in (1.0, 0.6):
        ref = _blur_ref(x.numpy(), sigma)
        torch.testing.assert_close(gaussian_blur(x, sigma), torch.from_numpy(ref), rtol=0,
                                   atol=1e-12)
    y32 = gaussian_blur(x.float()[None], 1.0)
    assert y32.shape == (1, 3, 9, 11) and y32.dtype == torch.float32
    torch.testing.assert_close(y32[0].double(), torch.from_numpy(_blur_ref(x.numpy(), 1.0)),
                               rtol=0, atol=1e-6)
    assert gaussian_blur(x, 0.0) is x
    c = torch.full((1, 3, 5, 5), 0.3)
    torch.testing.assert_close(gaussian_blur(c, 2.0), c)  # tiny image: edge replication
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, -1.0)


def test_make_lr_is_blur_then_plain_bicubic():
    hr = torch.rand(3, 16, 24, dtype=torch.float64)
    for f in (2, 4):
        ref = _bicubic_down_ref(_blur_ref(hr.numpy(), 1.0), f).clip(0, 1)
        lr = make_lr(hr, f)
        assert lr.shape == (3, 16 // f, 24 // f)
        torch.testing.assert_close(lr, torch.from_numpy(ref), rtol=0, atol=1e-10)
    aa = F.interpolate(gaussian_blur(hr, 1.0)[None], scale_factor=0.25, mode="bicubic",
                       antialias=True, align_corners=False)[0]
    assert not torch.allclose(make_lr(hr, 4), aa, atol=1e-4)  # antialias is off
    with pytest.raises(ValueError, match="multiples of factor"):
        make_lr(hr[:, :15], 4)


def test_sr_pairs(tmp_path):
    root = tmp_path / "sr"
    for i in range(3):
        _save(root / f"{i}.png", size=(40, 48), seed=i)
    _save(root / "small.png", size=(20, 64))
    with pytest.warns(UserWarning, match=r"left out 1 image in .*smaller than 32 pixels.*small"):
        ds = SRPairs(root, factor=4, crop=32)
    assert len(ds) == 3 and os.path.basename(ds.skipped[0][0]) == "small.png"
    lr, hr = ds[0]
    assert hr.shape == (3, 32, 32) and lr.shape == (3, 8, 8)
    assert lr.dtype == hr.dtype == torch.float32
    assert 0 <= lr.min() and lr.max() <= 1 and 0 <= hr.min() and hr.max() <= 1
    torch.testing.assert_close(lr, make_lr(hr, 4, 1.0))
    full = torch.from_numpy(_noise(40, 48, seed=0)).permute(2, 0, 1).float() / 255
    found = [(t, l) for t in range(9) for l in range(17) if torch.equal(full[:, t:t + 32, l:l + 32], hr)]
    assert len(found) == 1  # a crop at the image's own resolution
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = SRPairs(root, factor=8, crop=32, position="center")
    assert torch.equal(c[0][1], full[:, 4:36, 8:40]) and c[0][0].shape == (3, 4, 4)
    with pytest.raises(ValueError, match="multiple of factor"):
        SRPairs(root, factor=4, crop=30)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="smaller than 100 pixels"):
        SRPairs(root, factor=4, crop=100)


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------

class _Index(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def _batches(loader):
    return [b.clone() if isinstance(b, torch.Tensor) else [t.clone() for t in b] for b in loader]


def test_loader_is_deterministic_and_changes_per_epoch(tmp_path):
    ds = ImageFolder(_folder(tmp_path), size=8, crop="random")
    a = make_loader(ds, batch_size=2, shuffle=True, seed=5)
    b = make_loader(ds, batch_size=2, shuffle=True, seed=5)
    torch.manual_seed(1)
    a0, a1 = _batches(a), _batches(a)
    torch.manual_seed(2)  # the global RNG plays no part
    b0, b1 = _batches(b), _batches(b)
    assert len(a0) == 3 and a0[0].shape == (2, 3, 8, 8)
    assert all(torch.equal(x, y) for x, y in zip(a0 + a1, b0 + b1))
    assert not all(torch.equal(x, y) for x, y in zip(a0, a1))  # new order and crops
    # Same order, different epoch: the random crops differ.
    s = make_loader(ds, batch_size=6, shuffle=False, seed=5)
    e0, e1 = next(iter(s)), next(iter(s))
    assert not torch.equal(e0, e1)
    s.set_epoch(0)
    assert s.sampler.epoch == 0 and torch.equal(next(iter(s)), e0)
    assert s.epoch == 1
    other = make_loader(ds, batch_size=2, shuffle=True, seed=6)
    assert not all(torch.equal(x, y) for x, y in zip(a0, _batches(other)))


def test_loader_workers_give_the_same_batches(tmp_path):
    ds = SRPairs(_folder(tmp_path, n=4, h=16, w=24), factor=2, crop=8)
    one = make_loader(ds, batch_size=2, seed=3, num_workers=0)
    two = make_loader(ds, batch_size=2, seed=3, num_workers=2)
    for _ in range(2):
        x, y = _batches(one), _batches(two)
        assert len(x) == 2 and x[0][0].shape == (2, 3, 4, 4) and x[0][1].shape == (2, 3, 8, 8)
        assert all(torch.equal(p, q) for bx, by in zip(x, y) for p, q in zip(bx, by))


def test_distributed_split(tmp_path):
    ds = _Index(7)
    for drop_last in (False, True):
        parts = []
        for rank in (0, 1):
            ld = make_loader(ds, batch_size=1, shuffle=True, seed=0, drop_last=drop_last,
                             num_replicas=2, rank=rank)
            assert isinstance(ld.sampler, EpochSampler) and ld.sampler.num_replicas == 2
            parts.append([int(b) for b in ld])
        if drop_last:
            assert len(parts[0]) == len(parts[1]) == 3 and not set(parts[0]) & set(parts[1])
        else:  # padded to 8 by repeating one item
            assert len(parts[0]) == len(parts[1]) == 4
            assert set(parts[0]) | set(parts[1]) == set(range(7))
            assert len(set(parts[0]) & set(parts[1])) <= 1
    with pytest.raises(ValueError, match="rank"):
        make_loader(ds, num_replicas=2, rank=2)


def test_world_from_torchrun_env_and_process_group(tmp_path, monkeypatch):
    import torch.distributed as dist

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert world() == (1, 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    ld = make_loader(_Index(6), shuffle=False)
    assert (ld.sampler.num_replicas, ld.sampler.rank) == (2, 1)
    assert [int(b) for b in ld] == [1, 3, 5]
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK"):
        world()
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ld = make_loader(_Index(5), shuffle=False)
        assert (ld.sampler.num_replicas, ld.sampler.rank) == (1, 0)
        assert [int(b) for b in ld] == list(range(5))
    finally:
        dist.destroy_process_group()


def test_make_loader_arguments():
    with pytest.raises(ValueError, match="sampler"):
        make_loader(_Index(3), sampler=None)
    with pytest.raises(ValueError, match="num_replicas and rank"):
        make_loader(_Index(3), num_replicas=2)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(_Index(3), batch_size=0)


def test_follow_links_does_not_loop(tmp_path):
    root = tmp_path / "l"
    _save(root / "a" / "x.png", size=(8, 8))
    _save(tmp_path / "elsewhere" / "y.png", size=(8, 8))
    os.symlink(root, root / "a" / "loop")  # a link back up the tree
    os.symlink(tmp_path / "elsewhere", root / "b")
    assert [os.path.basename(f) for f in ImageFolder(root, size=4).files] == ["x.png"]
    assert [os.path.basename(f) for f in ImageFolder(root, size=4, follow_links=True).files] == [
        "x.png", "y.png"]
