"""Training a conditional-instance-norm (multi-style) network with the engine (fastnst.methods.cin):
the loss is Magenta's formula, a resumed run equals the uninterrupted one, fine-tuning a new
style changes only its γ/β row, the export loads for `fastnst stylize cin`, bad input is refused.

Tiny: 32 x 32 crops, a 4-conv VGG-16 (relu1_2, relu2_2) made by test_engine, a few steps."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_engine import small_vgg16

from fastnst import cli, image
from fastnst.engine import checkpoint
from fastnst.methods import cin
from fastnst.models.magenta import CINTransformer
from fastnst.models.vgg import load_vgg


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cin")
    data = d / "data"
    data.mkdir()
    g = torch.Generator().manual_seed(3)
    for i in range(6):
        image.save_image(torch.rand(1, 3, 34, 36 + i, generator=g), data / f"p{i}.png")
    styles = []
    for k in range(3):
        p = d / f"style{k}.png"
        image.save_image(torch.rand(1, 3, 40, 40, generator=g) ** (k + 1), p)
        styles.append(str(p))
    vgg = small_vgg16(d / "vgg16.pth")
    cfg = cin.Config(styles=tuple(styles[:2]), data=str(data), vgg_weights=vgg, content_layer="relu2_2",
                     style_layers=("relu1_2", "relu2_2"), image_size=32, style_size=32, batch_size=2, steps=4,
                     checkpoint_every=2, sample_every=0, plot=False)
    model = str(d / "two.safetensors")
    base = cin.train(cfg, model, progress=False)
    return {"dir": d, "data": str(data), "styles": styles, "vgg": vgg, "cfg": cfg, "model": model, "base": base}


def test_loss_is_magentas_formula(setup):
    """Content: mean squared feature difference; style: mean squared difference of Grams / (H W),
    per layer, weights 1 and 1e-4 in Magenta's units (features of 0-255 input) rescaled for
    the torchvision-convention encoder by s² and s⁴."""
    from fastnst.methods.common import CAFFE_SCALE

    cfg = setup["cfg"]
    t = cin.task(cfg)
    t.to(torch.device("cpu"))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    s = int(torch.randint(2, (1,)))  # the style the loss draws next
    torch.manual_seed(5)
    total, terms = t.loss(t.model, x)
    vgg = load_vgg(setup["vgg"], arch="vgg16")
    layers = ["relu1_2", "relu2_2"]
    style = image.resize(image.load_image(setup["styles"][s]), 32)

    def gram(f):
        b, c, h, w = f.shape
        f = f.flatten(2)
        return f @ f.transpose(1, 2) / (h * w)

    with torch.no_grad():
        y = t.model(x, s)
        fy, fx, fs = (vgg.features_of(vgg.preprocess(v), layers) for v in (y, x, style))
        content = torch.mean((fy["relu2_2"] - fx["relu2_2"]) ** 2) * CAFFE_SCALE ** 2
        style_loss = sum(torch.mean((gram(fy[n]) - gram(fs[n])) ** 2) for n in layers) * 1e-4 * CAFFE_SCALE ** 4
    torch.testing.assert_close(total.detach(), content + style_loss, rtol=1e-4, atol=0)


def test_export_loads_and_stylizes(setup, tmp_path):
    model = cin.load(setup["model"])
    assert isinstance(model, CINTransformer) and model.num_styles == 2
    x = torch.rand(1, 3, 24, 28)
    a, b = cin.stylize(model, [x], "0")[0], cin.stylize(model, [x], "1")[0]
    assert a.shape == x.shape and not torch.equal(a, b)
    # the same weights as .pth (a weights_only state_dict)
    pth = tmp_path / "two.pth"
    cin.train(dataclasses.replace(setup["cfg"], steps=1), str(pth), progress=False)
    assert cin.load(str(pth)).num_styles == 2


def test_resume_equals_uninterrupted(setup, tmp_path):
    cfg = setup["cfg"]
    part = cin.train(dataclasses.replace(cfg, steps=2), str(tmp_path / "part.safetensors"), progress=False)
    assert part.steps == 2
    ck = str(tmp_path / "part_run" / "checkpoint.pt")
    assert checkpoint.load(ck, "cin")["step"] == 2
    res = cin.train(cfg, str(tmp_path / "part.safetensors"), resume=ck, progress=False)
    assert res.losses == setup["base"].losses  # the styles drawn, the losses: bit for bit
    a = cin.load(setup["model"]).state_dict()
    b = cin.load(str(tmp_path / "part.safetensors")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stylize_options_read_the_networks_style_count(setup, tmp_path):
    """An exported network's own style count bounds --style (a fine-tuned one may have more than
    26); without --weights the built-in 26."""
    assert cin.StylizeOptions(style="1", weights=setup["model"]).style == "1"
    with pytest.raises(ValueError, match="^style index must be 0 to 1, got 2$"):
        cin.StylizeOptions(style="2", weights=setup["model"])
    assert cin.StylizeOptions(style="25").style == "25"
    with pytest.raises(ValueError, match="^style index must be 0 to 25, got 26$"):
        cin.StylizeOptions(style="26")


def test_task_refuses_a_model_with_finetune(setup):
    cfg = dataclasses.replace(setup["cfg"], finetune=setup["model"])
    with pytest.raises(ValueError, match="give finetune .* or model, not both"):
        cin.task(cfg, CINTransformer(num_styles=3))


def test_finetune_learns_only_the_new_row(setup, tmp_path):
    cfg = dataclasses.replace(setup["cfg"], styles=(setup["styles"][2],), finetune=setup["model"], steps=3,
                              lr=1e-2)
    out = str(tmp_path / "three.safetensors")
    cin.train(cfg, out, progress=False)
    base, tuned = cin.load(setup["model"]).state_dict(), cin.load(out)
    assert tuned.num_styles == 3
    new = tuned.state_dict()
    moved = 0
    for k, v in base.items():
        if k.endswith((".norm.weight", ".norm.bias")):
            assert torch.equal(new[k][:2], v), k  # the old styles' rows, bit for bit
            init = v.mean(0)
            moved += int(not torch.equal(new[k][2], init))
        else:
            assert torch.equal(new[k], v), k  # convolutions frozen
    assert moved > 0


def test_cli_train_then_stylize(setup, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    args = ["train", "cin", "--styles", ",".join(setup["styles"][:2]), "--data", setup["data"],
            "--vgg-weights", setup["vgg"], "--content-layer", "relu2_2", "--style-layers", "relu1_2,relu2_2",
            "--image-size", "32", "--style-size", "32", "--batch-size", "2", "--steps", "1",
            "--sample-every", "0", "--no-plot", "--quiet", "-o", str(out)]
    assert cli.main(args) == 0 and out.exists()
    photo = tmp_path / "photo.png"
    image.save_image(torch.rand(1, 3, 20, 24), photo)
    dst = tmp_path / "styled.png"
    assert cli.main(["stylize", "cin", str(photo), "--weights", str(out), "--style", "1", "-o", str(dst)]) == 0
    assert image.load_image(str(dst)).shape == (1, 3, 20, 24)
    capsys.readouterr()
    bad = tmp_path / "bad.png"
    assert cli.main(["stylize", "cin", str(photo), "--weights", str(out), "--style", "2", "-o", str(bad)]) == 2
    assert capsys.readouterr().err == "fastnst stylize: error: style index must be 0 to 1, got 2\n"
    assert not bad.exists()


@pytest.mark.parametrize("change, message", [
    (dict(styles=()), "cin training needs at least one style image"),
    (dict(styles=("missing.png",)), "style image missing.png does not exist"),
    (dict(style_weight=-1.0), "style_weight must be finite and >= 0, got -1.0"),
])
def test_bad_config(setup, tmp_path, change, message):
    cfg = dataclasses.replace(setup["cfg"], **change)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        cin.train(cfg, str(tmp_path / "x.safetensors"), progress=False)
    assert not (tmp_path / "x.safetensors").exists()
