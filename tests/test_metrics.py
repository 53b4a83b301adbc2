"""fastnst.metrics: PSNR and SSIM against oracles written here (plain numpy loops), and
scipy / scikit-image where installed."""

import math
import re

import numpy as np
import pytest
import torch

from fastnst.metrics import psnr, rgb_to_y, ssim


def _images(b=2, c=3, h=17, w=19, seed=0):
    """A smooth-ish image pair in 0–255 (random noise alone makes every SSIM ≈ 0)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127.5 + 100 * np.sin(xx / 3.0 + rng.uniform(0, 6, (b, c, 1, 1))) * np.cos(yy / 4.0)
    x = np.clip(base + rng.normal(0, 5, (b, c, h, w)), 0, 255)
    y = np.clip(base + rng.normal(0, 20, (b, c, h, w)), 0, 255)
    return x, y


# ---- oracles ------------------------------------------------------------------------------------
def np_y(img):
    """MATLAB rgb2ycbcr luma, for [..., 3, H, W] in 0–255."""
    coef = np.array([65.481, 128.553, 24.966]) / 255.0
    return 16.0 + np.einsum("...chw,c->...hw", img, coef)[..., None, :, :]


def np_psnr(x, y, peak):
    return np.array([10 * math.log10(peak ** 2 / np.mean((a - b) ** 2)) for a, b in zip(x, y)])


def np_ssim_channel(a, b, L, win=11, sigma=1.5):
    """SSIM of two [H, W] images: an explicit loop over every window position, statistics as
    Gaussian-weighted sums over the 11×11 patch."""
    r = np.arange(win) - (win - 1) / 2
    g1 = np.exp(-(r ** 2) / (2 * sigma ** 2))
    wgt = np.outer(g1, g1)
    wgt /= wgt.sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for i in range(a.shape[0] - win + 1):
        for j in range(a.shape[1] - win + 1):
            pa, pb = a[i:i + win, j:j + win], b[i:i + win, j:j + win]
            ma, mb = (wgt * pa).sum(), (wgt * pb).sum()
            va, vb = (wgt * (pa - ma) ** 2).sum(), (wgt * (pb - mb) ** 2).sum()
            cov = (wgt * (pa - ma) * (pb - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return np.mean(vals)


def np_ssim(x, y, L):
    return np.array([np.mean([np_ssim_channel(a[k], b[k], L) for k in range(a.shape[0])]) for a, b in zip(x, y)])


# ---- PSNR ---------------------------------------------------------------------------------------
def test_psnr_matches_numpy_and_returns_float64_per_image():
    x, y = _images()
    out = psnr(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    assert out.shape == (2,) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), np_psnr(x.astype(np.float32).astype(np.float64),
                                                        y.astype(np.float32).astype(np.float64), 255.0),
                               rtol=1e-10)


def test_psnr_known_value_and_identical_is_inf():
    x = torch.full((1, 3, 4, 4), 100.0)
    assert psnr(x, x + 1)[0].item() == pytest.approx(20 * math.log10(255.0), abs=1e-12)
    assert psnr(x, x + 1, data_range=1.0)[0].item() == pytest.approx(0.0, abs=1e-12)
    assert psnr(x, x.clone())[0].item() == math.inf


def test_psnr_crop_and_y_channel():
    x, y = _images(h=20, w=23)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    got = psnr(tx, ty, crop=3)
    np.testing.assert_allclose(got.numpy(), np_psnr(x[..., 3:-3, 3:-3], y[..., 3:-3, 3:-3], 255.0), rtol=1e-12)
    got_y = psnr(tx, ty, crop=4, channel="y")
    want_y = np_psnr(np_y(x[..., 4:-4, 4:-4]), np_y(y[..., 4:-4, 4:-4]), 255.0)
    np.testing.assert_allclose(got_y.numpy(), want_y, rtol=1e-12)
    # The luma does not depend on how the input is scaled, as long as data_range says so.
    np.testing.assert_allclose(psnr(tx / 255, ty / 255, data_range=1.0, crop=4, channel="y").numpy(), want_y,
                               rtol=1e-10)


def test_psnr_unbatched_uint8_and_numpy_inputs():
    x, y = _images(b=1)
    xu, yu = np.round(x).astype(np.uint8), np.round(y).astype(np.uint8)
    got = psnr(torch.from_numpy(xu[0]), torch.from_numpy(yu[0]))  # uint8 must not wrap around
    assert got.dim() == 0
    assert got.item() == pytest.approx(np_psnr(xu.astype(np.float64), yu.astype(np.float64), 255.0)[0], rel=1e-12)
    assert psnr(xu[0], yu[0]).item() == got.item()


def test_rgb_to_y_known_colours():
    rgb = torch.tensor([[0.0, 255.0, 255.0, 0.0], [0.0, 255.0, 0.0, 0.0], [0.0, 255.0, 0.0, 255.0]]).view(3, 1, 4)
    got = rgb_to_y(rgb).flatten().tolist()
    assert got == pytest.approx([16.0, 235.0, 16 + 65.481, 16 + 24.966], abs=1e-9)


# ---- SSIM ---------------------------------------------------------------------------------------
def test_ssim_matches_numpy_loop_rgb_and_y():
    x, y = _images(h=14, w=16)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    got = ssim(tx, ty)
    assert got.shape == (2,) and got.dtype == torch.float64
    want = np_ssim(x, y, 255.0)
    assert 0.2 < want.min() < want.max() < 0.99  # a pair that tests something
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ssim(tx, ty, channel="y").numpy(), np_ssim(np_y(x), np_y(y), 255.0),
                               rtol=1e-9, atol=1e-12)


def test_ssim_crop_data_range_and_symmetry():
    x, y = _images(b=1, c=1, h=17, w=18)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    got = ssim(tx, ty, crop=3)
    np.testing.assert_allclose(got.numpy(), np_ssim(x[..., 3:-3, 3:-3], y[..., 3:-3, 3:-3], 255.0), rtol=1e-9)
    # Rescaling the images and data_range together changes nothing; SSIM is symmetric.
    torch.testing.assert_close(ssim(tx / 255, ty / 255, data_range=1.0, crop=3), got, rtol=1e-10, atol=0)
    torch.testing.assert_close(ssim(ty, tx, crop=3), got, rtol=1e-12, atol=0)


def test_ssim_identical_is_one_and_unbatched():
    x, _ = _images(b=1)
    t = torch.from_numpy(x).float()
    assert ssim(t, t.clone()).tolist() == [1.0]
    s = ssim(t[0], t[0], channel="y")
    assert s.dim() == 0 and s.item() == 1.0


def test_ssim_matches_scipy_gaussian_filter():
    ndimage = pytest.importorskip("scipy.ndimage")
    x, y = _images(b=1, c=3, h=24, w=21, seed=3)

    def blur(a):  # truncate 3.5 -> radius 5 (an 11x11 window); drop the padded border
        return ndimage.gaussian_filter(a, 1.5, truncate=3.5)[5:-5, 5:-5]

    vals = []
    for a, b in zip(x[0], y[0]):
        ma, mb = blur(a), blur(b)
        va, vb, cov = blur(a * a) - ma ** 2, blur(b * b) - mb ** 2, blur(a * b) - ma * mb
        c1, c2 = 2.55 ** 2, 7.65 ** 2
        vals.append(np.mean((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))))
    assert ssim(torch.from_numpy(x), torch.from_numpy(y)).item() == pytest.approx(np.mean(vals), rel=1e-9)


def test_against_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    x, y = _images(b=1, c=3, h=25, w=27, seed=5)
    want_ssim = metrics.structural_similarity(x[0], y[0], gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False, data_range=255, channel_axis=0)
    assert ssim(torch.from_numpy(x), torch.from_numpy(y)).item() == pytest.approx(want_ssim, rel=1e-9)
    want_psnr = metrics.peak_signal_noise_ratio(x[0], y[0], data_range=255)
    assert psnr(torch.from_numpy(x), torch.from_numpy(y)).item() == pytest.approx(want_psnr, rel=1e-12)


# ---- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [psnr, ssim])
def test_validation_errors(fn):
    n = fn.__name__
    a = torch.zeros(1, 3, 12, 12)
    flat = torch.zeros(12, 12)
    cases = [
        ((a, torch.zeros(1, 3, 12, 13)), {},
         f"{n}: x and y must have the same shape, got [1, 3, 12, 12] and [1, 3, 12, 13]"),
        ((flat, flat), {}, f"{n}: images must be [B, C, H, W] or [C, H, W], got shape [12, 12]"),
        ((a, a), {"data_range": 0}, f"{n}: data_range must be a finite number > 0, got 0"),
        ((a, a), {"crop": -1}, f"{n}: crop must be an int >= 0, got -1"),
        ((a, a), {"crop": 1.0}, f"{n}: crop must be an int >= 0, got 1.0"),
        ((a, a), {"channel": "Y"}, f"{n}: channel must be 'rgb' or 'y', got 'Y'"),
        ((a[:, :1], a[:, :1]), {"channel": "y"}, f"{n}: channel='y' needs RGB images with 3 channels, got 1"),
    ]
    for args, kwargs, msg in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
            fn(*args, **kwargs)


def test_size_errors():
    a = torch.zeros(1, 3, 12, 12)
    msg = ("ssim: images must be at least 11x11 after cropping 1 border pixels (the Gaussian window is 11x11, "
           "filtered without padding), got 12x12 -> 10x10")
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        ssim(a, a, crop=1)
    ssim(a, a)  # 12x12 uncropped is fine
    with pytest.raises(ValueError, match=re.escape("ssim: images must be at least 11x11 after cropping 0 border")):
        ssim(torch.zeros(3, 10, 40), torch.zeros(3, 10, 40))
    with pytest.raises(ValueError, match="^" + re.escape("psnr: cropping 6 border pixels leaves no pixels of a "
                                                         "12x12 image") + "$"):
        psnr(a, a, crop=6)
    assert psnr(a, a + 1, crop=5).shape == (1,)  # 2x2 left
