"""Johnson's method: the training step is pytorch/examples' (same loss on the same network and
batch), exported weights load into pytorch/examples' own TransformerNet, stylize (batching,
odd sizes, strength, colour preservation, bf16), and the CLI (train + resume with the run's
settings, stylize a file / a folder / under torchrun, bad input: exit 2, nothing written)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from test_engine import ENV, small_vgg16

from fastnst import cli, image
from fastnst.bench.examples import ExTransformerNet
from fastnst.engine import read_weights
from fastnst.methods import johnson
from fastnst.models.transformer import TransformerNet
from fastnst.models.vgg import load_vgg


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("johnson")
    data = d / "data"
    data.mkdir()
    g = torch.Generator().manual_seed(1)
    for i in range(4):
        image.save_image(torch.rand(1, 3, 34, 38 + i, generator=g), data / f"img{i}.png")
    image.save_image(torch.rand(1, 3, 40, 40, generator=g), d / "style.png")
    vgg = small_vgg16(d / "vgg16.pth")
    cfg = johnson.Config(style=str(d / "style.png"), data=str(data), vgg_weights=vgg,
                         style_layers=("relu1_2", "relu2_2"), image_size=32, batch_size=2, steps=2,
                         sample_every=0, plot=False)
    model = str(d / "model.safetensors")
    johnson.train(cfg, model, progress=False)
    return {"dir": d, "data": str(data), "style": str(d / "style.png"), "vgg": vgg, "cfg": cfg, "model": model}


def _examples_gram(y):
    b, ch, h, w = y.size()
    features = y.view(b, ch, w * h)
    return features.bmm(features.transpose(1, 2)) / (ch * h * w)


def test_loss_is_pytorch_examples_loss(setup):
    """The engine's loss for one batch equals pytorch/examples' train() formula written out."""
    cfg = setup["cfg"]
    t = johnson.task(cfg)
    t.to(torch.device("cpu"))
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    total, terms = t.loss(t.model, x)
    vgg = load_vgg(setup["vgg"], arch="vgg16")
    net = ExTransformerNet()
    net.load_state_dict(t.model.state_dict())
    y = net(x * 255)

    def norm(b):  # pytorch/examples' normalize_batch
        mean = b.new_tensor([0.485, 0.456, 0.406]).view(-1, 1, 1)
        std = b.new_tensor([0.229, 0.224, 0.225]).view(-1, 1, 1)
        return (b / 255.0 - mean) / std

    fy = vgg.features_of(norm(y), ["relu1_2", "relu2_2"])
    fx = vgg.features_of(norm(x * 255), ["relu2_2"])
    style = image.load_image(cfg.style)
    fs = vgg.features_of(norm(style * 255), ["relu1_2", "relu2_2"])
    content = 1e5 * F.mse_loss(fy["relu2_2"], fx["relu2_2"])
    style_loss = sum(F.mse_loss(_examples_gram(fy[k]), _examples_gram(fs[k]).expand(2, -1, -1))
                     for k in ("relu1_2", "relu2_2")) * 1e10
    torch.testing.assert_close(total, content + style_loss, rtol=2e-4, atol=0)
    torch.testing.assert_close(terms["content:relu2_2"], content.detach(), rtol=2e-4, atol=0)


def test_exported_weights_load_into_pytorch_examples_net(setup):
    state, meta = read_weights(setup["model"])
    net = ExTransformerNet()
    net.load_state_dict(state)  # strict: the exact keys of pytorch/examples
    model, _ = johnson.load(setup["model"])
    x = torch.rand(1, 3, 36, 44)
    want = (net(x * 255) / 255).clamp(0, 1)
    got = johnson.stylize(model, [x])[0]
    torch.testing.assert_close(got, want, rtol=0, atol=2e-4)


def test_stylize_batches_odd_sizes_strength_color(setup):
    model, _ = johnson.load(setup["model"])
    g = torch.Generator().manual_seed(3)
    imgs = [torch.rand(1, 3, 30, 41, generator=g), torch.rand(1, 3, 30, 41, generator=g),
            torch.rand(1, 3, 25, 19, generator=g)]
    batched = johnson.stylize(model, imgs, batch_size=4)
    single = [johnson.stylize(model, [im], batch_size=1)[0] for im in imgs]
    for b, s, im in zip(batched, single, imgs):
        assert b.shape == im.shape
        torch.testing.assert_close(b, s, rtol=0, atol=1e-5)
    # Odd sizes: padded to a multiple of 4 by reflection, the network run, then cropped.
    plain = TransformerNet()
    plain.load_state_dict(read_weights(setup["model"])[0])
    xp = F.pad(imgs[2] * 255, (0, 1, 0, 3), mode="reflect")
    torch.testing.assert_close(single[2], (plain(xp)[..., :25, :19] / 255).clamp(0, 1), rtol=0, atol=2e-4)
    assert torch.equal(johnson.stylize(model, imgs[:1], strength=0.0)[0], imgs[0].clamp(0, 1))
    half = johnson.stylize(model, imgs[:1], strength=0.5)[0]
    torch.testing.assert_close(half, (0.5 * single[0] + 0.5 * imgs[0]).clamp(0, 1), rtol=0, atol=1e-6)
    kept = johnson.stylize(model, imgs[:1], preserve_color="luminance")[0]
    torch.testing.assert_close(kept, image.luminance_transfer(single[0], imgs[0]), rtol=0, atol=1e-6)
    small = johnson.stylize(model, imgs[:1], size=20)[0]
    assert max(small.shape[-2:]) == 20


def test_stylize_bf16_close_to_fp32(setup):
    model, _ = johnson.load(setup["model"])
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    a = johnson.stylize(model, [x])[0]
    b = johnson.stylize(model, [x], precision="bf16")[0]
    assert (a - b).abs().mean() < 0.02


def test_stylize_bad_arguments(setup):
    model, _ = johnson.load(setup["model"])
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"^strength must be a number in \[0, 1\], got 1.5$"):
        johnson.stylize(model, [x], strength=1.5)
    with pytest.raises(ValueError, match=r"^preserve_color must be None or 'luminance', got 'match'$"):
        johnson.stylize(model, [x], preserve_color="match")
    with pytest.raises(FileNotFoundError, match=r"^input image .*missing.png does not exist$"):
        johnson.stylize(model, [str(setup["dir"] / "missing.png")])
    with pytest.raises(ValueError, match=r"^image must be \[B, 3, H, W\], got \[1, 1, 16, 16\]$"):
        johnson.stylize(model, [torch.rand(1, 1, 16, 16)])


def test_training_refuses_missing_style_data_and_weights(setup, tmp_path):
    cfg = setup["cfg"]
    import dataclasses

    with pytest.raises(FileNotFoundError, match=r"^style image .*nostyle.png does not exist$"):
        johnson.train(dataclasses.replace(cfg, style=str(tmp_path / "nostyle.png")), str(tmp_path / "m.pth"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty"):
        johnson.train(dataclasses.replace(cfg, data=str(empty)), str(tmp_path / "m.pth"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match=r"no readable image"), pytest.warns(UserWarning, match="unreadable"):
        johnson.train(dataclasses.replace(cfg, data=str(bad)), str(tmp_path / "m.pth"))
    env = os.environ.pop("FASTNST_VGG16", None)
    try:
        with pytest.raises(FileNotFoundError, match=r"^the vgg16 encoder needs VGG-16 weights: pass vgg_weights"):
            johnson.train(dataclasses.replace(cfg, vgg_weights=None), str(tmp_path / "m.pth"))
    finally:
        if env is not None:
            os.environ["FASTNST_VGG16"] = env
    assert not list(tmp_path.glob("m.pth*")) and not (tmp_path / "m_run").exists()


def run(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_train_resume_takes_the_runs_settings(setup, tmp_path, capsys):
    base = ["train", "johnson", "--style", setup["style"], "--data", setup["data"], "--vgg-weights", setup["vgg"],
            "--style-layers", "relu1_2,relu2_2", "--image-size", "32", "--batch-size", "2", "--sample-every", "0",
            "--no-plot", "--quiet"]
    code, out, err = run(base + ["--steps", "4", "-o", str(tmp_path / "full.pth")], capsys)
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 'full.pth'} (4 steps, final loss ")
    code, out, err = run(base + ["--steps", "2", "-o", str(tmp_path / "p.pth")], capsys)
    assert code == 0, err
    ck = str(tmp_path / "p_run" / "checkpoint.pt")
    # Only --steps and the paths: style, data, layers, sizes come from the checkpoint.
    code, out, err = run(["train", "johnson", "--resume", ck, "--steps", "4", "-o", str(tmp_path / "p.pth"),
                          "--quiet"], capsys)
    assert code == 0, err
    a = torch.load(tmp_path / "full.pth", weights_only=True)
    b = torch.load(tmp_path / "p.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    code, out, err = run(["train", "johnson", "--resume", ck, "--steps", "6", "--batch-size", "4", "-o",
                          str(tmp_path / "p.pth"), "--quiet"], capsys)
    assert code == 2 and err.startswith("fastnst train: error: --resume ") and "batch_size=2 (now 4)" in err


def test_cli_train_bad_input(setup, tmp_path, capsys):
    base = ["train", "johnson", "--vgg-weights", setup["vgg"], "--quiet", "--steps", "1"]
    code, _, err = run(base + ["--data", setup["data"], "-o", str(tmp_path / "m.pth")], capsys)
    assert (code, err) == (2, "fastnst train: error: fastnst train johnson: the following arguments are "
                              "required: --style\n")
    code, _, err = run(base + ["--style", setup["style"], "--data", setup["data"], "-o",
                               str(tmp_path / "no" / "m.pth")], capsys)
    assert code == 2 and "folder" in err and "does not exist" in err
    code, _, err = run(base + ["--style", setup["style"], "--data", str(tmp_path / "nodata"), "-o",
                               str(tmp_path / "m.pth")], capsys)
    assert code == 2 and "nodata" in err
    code, _, err = run(base + ["--style", setup["style"], "--data", setup["data"], "--resume",
                               setup["style"], "-o", str(tmp_path / "m.pth")], capsys)
    assert code == 2 and "style.png is not a fastnst checkpoint" in err
    assert not [p for p in tmp_path.iterdir()]


def test_cli_stylize_file_folder_and_errors(setup, tmp_path, capsys):
    code, out, err = run(["stylize", "johnson", setup["model"], str(setup["dir"] / "style.png"), "-o",
                          str(tmp_path / "one.png")], capsys)
    assert code == 0, err
    assert out == f"wrote 1 image to {tmp_path / 'one.png'}\n"
    assert image.load_image(str(tmp_path / "one.png")).shape == (1, 3, 40, 40)
    code, out, err = run(["stylize", "johnson", setup["model"], setup["data"], "-o", str(tmp_path / "out"),
                          "--size", "24", "--preserve-color", "luminance", "--strength", "0.8"], capsys)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "out")) == [f"img{i}.png" for i in range(4)]
    # Existing outputs are refused before any work, and nothing changes.
    before = (tmp_path / "out" / "img0.png").read_bytes()
    code, out, err = run(["stylize", "johnson", setup["model"], setup["data"], "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and "img0.png already exists" in err
    assert (tmp_path / "out" / "img0.png").read_bytes() == before
    code, _, err = run(["stylize", "johnson", setup["model"], setup["data"], "-o", str(tmp_path / "x.png")], capsys)
    assert (code, err) == (2, f"fastnst stylize: error: 4 inputs need an output folder, got the file name "
                              f"{tmp_path / 'x.png'}\n")
    code, _, err = run(["stylize", "johnson", str(tmp_path / "nomodel.pth"), setup["style"], "-o",
                        str(tmp_path / "y.png")], capsys)
    assert (code, err) == (2, f"fastnst stylize: error: model {tmp_path / 'nomodel.pth'} does not exist\n")
    code, _, err = run(["stylize", "johnson", setup["model"], setup["style"], "-o", str(tmp_path / "z.png"),
                        "--strength", "2"], capsys)
    assert (code, err) == (2, "fastnst stylize: error: strength must be a number in [0, 1], got 2.0\n")
    assert not (tmp_path / "z.png").exists() and not (tmp_path / "y.png").exists()


def test_cli_stylize_under_torchrun_splits_the_files(setup, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "fastnst",
           "stylize", "johnson", setup["model"], setup["data"], "-o", str(tmp_path / "out")]
    p = subprocess.run(cmd, env=dict(ENV, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert sorted(p.stdout.split("\n")[:2]) == [f"wrote 2 images to {tmp_path / 'out'} (rank 0 of 2)",
                                                f"wrote 2 images to {tmp_path / 'out'} (rank 1 of 2)"]
    assert sorted(os.listdir(tmp_path / "out")) == [f"img{i}.png" for i in range(4)]
    model, _ = johnson.load(setup["model"])
    want = johnson.stylize(model, [os.path.join(setup["data"], "img3.png")])[0]
    got = image.load_image(str(tmp_path / "out" / "img3.png"))
    assert (got - want).abs().max() <= 1 / 255 + 1e-6  # 8-bit PNG rounding


@pytest.mark.slow
def test_bf16_training_tracks_fp32_over_200_steps(setup, tmp_path):
    """The issue's bar: after 200 steps the bf16 run's loss (as logged, autocast forward) is
    within 2 % of the fp32 run's (mean of the last 10 steps, to average out batch noise)."""
    import dataclasses

    cfg = dataclasses.replace(setup["cfg"], steps=200, checkpoint_every=200)
    fp = johnson.train(cfg, str(tmp_path / "fp.pth"), progress=False).losses
    bf = johnson.train(dataclasses.replace(cfg, precision="bf16"), str(tmp_path / "bf.pth"), progress=False).losses
    a, b = sum(fp[-10:]) / 10, sum(bf[-10:]) / 10
    assert abs(b - a) <= 0.02 * a, (a, b)
    assert fp[-1] < 0.5 * fp[0]  # it learns


@pytest.mark.parametrize("shape,scale,pad", [((2, 3, 5, 7), 2, 1), ((1, 2, 1, 3), 2, 1), ((1, 4, 4, 4), 2, 4),
                                             ((1, 1, 3, 9), 3, 2), ((1, 2, 6, 5), 2, 0)])
def test_upsample_reflect_pad_is_interpolate_then_pad(shape, scale, pad):
    from fastnst.models.transformer import upsample_reflect_pad

    x = torch.randn(shape)
    want = F.interpolate(x, scale_factor=scale, mode="nearest")
    want = F.pad(want, (pad,) * 4, mode="reflect") if pad else want
    with torch.no_grad():
        assert torch.equal(upsample_reflect_pad(x, scale, pad), want)  # the gather
    xg = x.clone().requires_grad_()
    got = upsample_reflect_pad(xg, scale, pad)  # with autograd: the aten ops
    assert torch.equal(got, want)
    got.sum().backward()
    assert xg.grad is not None


_MEMORY_DRIVER = r"""
import resource, sys, torch
from fastnst.methods import johnson
from fastnst.models.transformer import TransformerNet
from fastnst.nn import accelerate
model = accelerate(TransformerNet()).eval().requires_grad_(False)
x = torch.rand(1, 3, 2048, 2048)
y = johnson.stylize(model, [x])[0]
assert y.shape == (1, 3, 2048, 2048)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_stylize_2048_fits_in_4_gb():
    p = subprocess.run([sys.executable, "-c", _MEMORY_DRIVER], env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    peak_kib = int(p.stdout.split()[-1])
    assert peak_kib < 4 * 1024 * 1024, f"peak RSS {peak_kib / 2**20:.2f} GiB"


@pytest.mark.parametrize("shape,pad", [((2, 3, 5, 7), 1), ((1, 2, 2, 3), 1), ((1, 4, 9, 9), 4), ((1, 2, 6, 5), 0)])
def test_reflect_pad_is_f_pad(shape, pad):
    from fastnst.models.transformer import reflect_pad

    x = torch.randn(shape)
    want = F.pad(x, (pad,) * 4, mode="reflect")
    with torch.no_grad():
        assert torch.equal(reflect_pad(x, pad), want)
        assert torch.equal(reflect_pad(x.to(torch.bfloat16), pad), want.to(torch.bfloat16))
        xc = x.contiguous(memory_format=torch.channels_last)
        got = reflect_pad(xc, pad)  # channels_last: the copy path too, channels_last out
        assert torch.equal(got, want) and (pad == 0 or got.is_contiguous(memory_format=torch.channels_last))
    xg = x.clone().requires_grad_()
    assert torch.equal(reflect_pad(xg, pad), want)


@pytest.mark.slow
def test_compiled_network_matches(setup):
    model, _ = johnson.load(setup["model"])
    compiled, _ = johnson.load(setup["model"], compile=True)
    x = torch.rand(1, 3, 40, 36, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(johnson.stylize(compiled, [x])[0], johnson.stylize(model, [x])[0], rtol=0, atol=1e-4)
