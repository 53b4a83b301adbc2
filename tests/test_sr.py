"""Perceptual-loss super-resolution: the training loss is the relu2_2 feature MSE between the
network's output and the high-resolution crop, export / load (factor and width read back),
upscale, evaluate (PSNR / SSIM of the network and of bicubic against the original), the CLI."""

from __future__ import annotations

import os

import pytest
import torch
from test_engine import small_vgg16

from fastnst import cli, image, metrics
from fastnst.data import make_lr
from fastnst.engine import CheckpointError
from fastnst.methods import sr
from fastnst.models.sr import SRNet, bicubic
from fastnst.models.vgg import load_vgg


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("sr")
    data = d / "hr"
    data.mkdir()
    g = torch.Generator().manual_seed(2)
    for i in range(4):
        # smooth images, so that bicubic upscaling is a fair baseline
        base = torch.rand(1, 3, 10, 11, generator=g)
        img = torch.nn.functional.interpolate(base, size=(40 + 4 * i, 44), mode="bicubic").clamp(0, 1)
        image.save_image(img, data / f"hr{i}.png")
    vgg = small_vgg16(d / "vgg16.pth")
    cfg = sr.Config(data=str(data), crop=32, vgg_weights=vgg, batch_size=2, steps=2, sample_every=1,
                    plot=False, channels=16, blocks=1)
    model = str(d / "sr.safetensors")
    sr.train(cfg, model, progress=False)
    return {"dir": d, "data": str(data), "vgg": vgg, "cfg": cfg, "model": model}


def test_loss_is_the_feature_reconstruction_loss(setup):
    t = sr.task(setup["cfg"])
    t.to(torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 32, 32, generator=g)
    lr = make_lr(hr, 4)
    total, terms = t.loss(t.model, (lr, hr))
    vgg = load_vgg(setup["vgg"], arch="vgg16")
    y = t.model(lr * 255) / 255
    want = torch.nn.functional.mse_loss(vgg(y, ["relu2_2"])["relu2_2"], vgg(hr, ["relu2_2"])["relu2_2"])
    torch.testing.assert_close(total, want, rtol=1e-5, atol=0)
    assert list(terms) == ["content:relu2_2"]


def test_train_writes_samples_and_loads_back(setup):
    run = setup["dir"] / "sr_run"
    assert sorted(os.listdir(run / "samples")) == ["step_0000001.png", "step_0000002.png"]
    # each sample: bicubic | network, side by side, at the crop size
    assert image.load_image(str(run / "samples" / "step_0000002.png")).shape == (1, 3, 32, 64)
    model, factor = sr.load(setup["model"])
    assert factor == 4
    net = SRNet(4, 16, 1)
    from fastnst.engine import read_weights

    net.load_state_dict(read_weights(setup["model"])[0])
    x = torch.rand(1, 3, 9, 13)
    out = sr.upscale(model, [x])[0]
    assert out.shape == (1, 3, 36, 52)
    torch.testing.assert_close(out, (net(x * 255) / 255).clamp(0, 1), rtol=0, atol=1e-4)


def test_evaluate_reports_network_and_bicubic(setup):
    model, factor = sr.load(setup["model"])
    paths = sorted(str(p) for p in (setup["dir"] / "hr").iterdir())
    rows = sr.evaluate(model, paths, factor=factor)
    assert [r["name"] for r in rows] == paths and rows[1]["size"] == "44x44"
    hr = image.load_image(paths[0])[..., :40, :44]
    lr = make_lr(hr, 4)
    bic = bicubic(lr * 255, 4)
    assert rows[0]["bicubic_psnr"] == pytest.approx(float(metrics.psnr(bic, hr * 255, crop=4, channel="y")[0]))
    assert rows[0]["bicubic_ssim"] == pytest.approx(float(metrics.ssim(bic, hr * 255, crop=4, channel="y")[0]))
    up = sr.upscale(model, [lr])[0] * 255
    assert rows[0]["psnr"] == pytest.approx(float(metrics.psnr(up, hr * 255, crop=4, channel="y")[0]))
    text = sr.format_report(rows)
    assert text.splitlines()[0].split() == ["image", "size", "PSNR", "SSIM", "bicubic", "PSNR", "SSIM"]
    assert text.splitlines()[-1].startswith("mean")
    with pytest.raises(ValueError, match=r"is too small to score at x4 \(needs at least 20 pixels a side\)"):
        sr.evaluate(model, [torch.rand(1, 3, 16, 30)], factor=4)


def test_load_refuses_other_files(setup, tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"conv1.conv2d.weight": torch.zeros(32, 3, 9, 9)}, other)
    with pytest.raises(CheckpointError, match=r"other.pth holds no fastnst SR network \(no head.conv.conv2d"):
        sr.load(str(other))
    state = SRNet(4, 16, 1).state_dict()
    state["tail.conv2d.weight"] = torch.zeros(3, 8, 9, 9)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"bad.pth: weights do not fit an SR network: .*tail.conv2d.weight"):
        sr.load(str(tmp_path / "bad.pth"))


def test_config_errors(setup, tmp_path):
    import dataclasses

    with pytest.raises(ValueError, match=r"crop \(30\) must be a multiple of factor \(4\)"):
        sr.train(dataclasses.replace(setup["cfg"], crop=30), str(tmp_path / "m.pth"), progress=False)
    with pytest.raises(ValueError, match=r"^content_weight and pixel_weight are both 0: nothing to train on$"):
        sr.train(dataclasses.replace(setup["cfg"], content_weight=0.0), str(tmp_path / "m.pth"), progress=False)
    # Images smaller than the crop are left out (with a warning): none left is an error.
    with pytest.raises(ValueError), pytest.warns(UserWarning):
        sr.train(dataclasses.replace(setup["cfg"], crop=64), str(tmp_path / "m.pth"), progress=False)
    assert not list(tmp_path.iterdir())


def test_cli_train_upscale_evaluate(setup, tmp_path, capsys):
    code = cli.main(["train", "sr", "--data", setup["data"], "--crop", "32", "--vgg-weights", setup["vgg"],
                     "--steps", "1", "--batch-size", "2", "--channels", "8", "--blocks", "1", "--sample-every", "0",
                     "--no-plot", "--quiet", "--factor", "2", "-o", str(tmp_path / "x2.pth")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.startswith(f"wrote {tmp_path / 'x2.pth'} (1 steps")
    src = os.path.join(setup["data"], "hr0.png")
    code = cli.main(["upscale", str(tmp_path / "x2.pth"), src, "-o", str(tmp_path / "up.png")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out == f"wrote 1 image (x2) to {tmp_path / 'up.png'}\n"
    assert image.load_image(str(tmp_path / "up.png")).shape == (1, 3, 80, 88)
    code = cli.main(["evaluate", "sr", setup["model"], setup["data"], "--channel", "rgb"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert len(out.out.splitlines()) == 6  # header, 4 images, mean
    code = cli.main(["upscale", str(tmp_path / "x2.pth"), src, "-o", str(tmp_path / "up.png")])
    err = capsys.readouterr().err
    assert code == 2 and "up.png already exists" in err
    code = cli.main(["upscale", src, src, "-o", str(tmp_path / "up2.png")])
    err = capsys.readouterr().err
    assert code == 2 and "hr0.png" in err and not (tmp_path / "up2.png").exists()
