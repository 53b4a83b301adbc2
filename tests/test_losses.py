"""fastnst.losses: each term against its plain formula (float64), targets set once, one encoder
pass per step up to the deepest layer, no gradient into the encoder, style blends, batch
broadcasting, bad input; and Gatys' loss is a PerceptualLoss (the same numbers)."""

import pathlib

import pytest
import torch
import torch.nn as nn

from fastnst import image, losses
from fastnst.methods import gatys
from fastnst.models import vgg

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONTENT = str(ROOT / "examples" / "images" / "astronaut.jpg")
STYLE = str(ROOT / "examples" / "images" / "hubble_deep_field.jpg")


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return vgg.VGGEncoder()  # random weights: the losses' plumbing, not pretty pictures


def rand(*shape, dtype=torch.float64, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def counting(encoder, monkeypatch):
    """Record every features_of call's layers, and how often each module of the encoder runs."""
    calls, runs = [], {}
    real = encoder.features_of

    def features_of(x, layers):
        calls.append(list(layers))
        return real(x, layers)

    monkeypatch.setattr(encoder, "features_of", features_of)
    handles = [m.register_forward_hook(lambda m, i, o, n=n: runs.__setitem__(n, runs.get(n, 0) + 1))
               for n, m in encoder.features.named_children()]
    return calls, runs, handles


# ---- each term against its formula, float64 ----------------------------------------------
def test_terms_match_plain_formulas():
    f, t = rand(2, 5, 4, 3, seed=1), rand(2, 5, 4, 3, seed=2)
    c = losses.ContentLoss("relu1_1", weight=2.5)
    c.set_target(t)
    assert torch.allclose(c(f), 2.5 * ((f - t) ** 2).mean(), rtol=1e-12)

    for normalize, div in (("chw", 5 * 12), ("hw", 12), ("none", 1)):
        g = losses.GramLoss("relu1_1", weight=3.0, normalize=normalize, backend="reference")
        g.set_target(t)
        fl, tl = f.flatten(2), t.flatten(2)
        want = 3.0 * ((fl @ fl.transpose(1, 2) / div - tl @ tl.transpose(1, 2) / div) ** 2).mean()
        assert torch.allclose(g(f), want, rtol=1e-10), normalize
        g_auto = losses.GramLoss("relu1_1", weight=3.0, normalize=normalize)  # fastnst's kernel
        g_auto.set_target(t)
        assert torch.allclose(g_auto(f), want, rtol=1e-10), normalize

    m = losses.MeanStdLoss("relu1_1", weight=0.5)
    m.set_target(t)

    def stats(x):  # AdaIN's calc_mean_std: unbiased variance + 1e-5
        x = x.flatten(2)
        return x.mean(2), (x.var(2, unbiased=True) + 1e-5).sqrt()

    (fm, fs), (tm, ts) = stats(f), stats(t)
    assert torch.allclose(m(f), 0.5 * (((fm - tm) ** 2).mean() + ((fs - ts) ** 2).mean()), rtol=1e-10)

    x, y = rand(2, 3, 6, 5, seed=3), rand(2, 3, 6, 5, seed=4)
    p = losses.PixelLoss(weight=4.0)
    p.set_target(y)
    assert p.layer is None and torch.allclose(p(x), 4.0 * ((x - y) ** 2).mean(), rtol=1e-12)

    tv = sum((x[..., i + 1, j] - x[..., i, j]).pow(2).sum() for i in range(5) for j in range(5)) + \
        sum((x[..., i, j + 1] - x[..., i, j]).pow(2).sum() for i in range(6) for j in range(4))
    assert torch.allclose(losses.TVLoss(weight=1e-3)(x), 1e-3 * tv, rtol=1e-12)
    assert gatys.tv_loss is losses.tv_loss  # gatys' TV is this one


def test_targets_are_detached_non_persistent_buffers():
    f = rand(1, 4, 3, 3).requires_grad_()
    g = losses.GramLoss("relu1_1")
    g.set_target(f * 2)
    assert not g.target.requires_grad and g.state_dict() == {}
    assert g.to(torch.float32).target.dtype == torch.float32  # buffers follow .to()


# ---- the perceptual loss: targets once, one pass per step, no encoder gradients ------------
def test_one_encoder_pass_per_step_up_to_the_deepest_layer(encoder, monkeypatch):
    crit = losses.PerceptualLoss(
        encoder, content=[losses.ContentLoss("relu2_2")],
        style=[losses.GramLoss("relu1_1"), losses.MeanStdLoss("relu3_1")], regularizers=[losses.TVLoss(1e-3)])
    assert crit.layers == ["relu1_1", "relu2_2", "relu3_1"]  # the encoder's order
    calls, runs, handles = counting(encoder, monkeypatch)
    try:
        crit.set_content_target(rand(1, 3, 16, 16, dtype=torch.float32))
        assert calls == [["relu2_2"]]  # the content group's layers only
        crit.set_style_target([rand(1, 3, 16, 16, dtype=torch.float32, seed=5),
                               rand(1, 3, 20, 12, dtype=torch.float32, seed=6)])
        assert calls[1:] == [["relu1_1", "relu3_1"]] * 2  # once per style image
        calls.clear()
        runs.clear()
        x = rand(1, 3, 16, 16, dtype=torch.float32, seed=7).requires_grad_()
        for step in range(3):
            total, terms = crit(x)
            total.backward()
        assert calls == [crit.layers] * 3  # one pass per step, targets not recomputed
        last = encoder.names.index("relu3_1")
        assert runs == {n: 3 for n in encoder.names[:last + 1]}  # never past relu3_1
    finally:
        for h in handles:
            h.remove()
    assert list(terms) == ["content:relu2_2", "gram:relu1_1", "mean_std:relu3_1", "tv"]
    assert torch.allclose(sum(terms.values()), total.detach())
    assert all(not v.requires_grad for v in terms.values())


def test_encoder_parameters_stay_out_of_autograd(encoder):
    encoder.requires_grad_(True)
    try:
        crit = losses.PerceptualLoss(encoder, content=[losses.ContentLoss("relu1_2")],
                                     style=[losses.GramLoss("relu2_1")])
        assert not any(p.requires_grad for p in encoder.parameters())
        crit.train()
        assert not encoder.training  # the encoder stays in eval mode
        crit.set_content_target(rand(1, 3, 8, 8, dtype=torch.float32))
        crit.set_style_target(rand(1, 3, 8, 8, dtype=torch.float32, seed=1))
        assert not crit.content[0].target.requires_grad and crit.content[0].target.grad_fn is None
        x = rand(1, 3, 8, 8, dtype=torch.float32, seed=2).requires_grad_()
        crit(x)[0].backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        assert all(p.grad is None for p in encoder.parameters())
    finally:
        encoder.requires_grad_(False)


def test_preprocess_and_memory_format(encoder):
    img, c, s = (rand(1, 3, 16, 16, dtype=torch.float32, seed=k) for k in range(3))

    def build(pre):
        crit = losses.PerceptualLoss(encoder, content=[losses.ContentLoss("relu2_1")],
                                     style=[losses.GramLoss("relu1_1")], preprocess=pre)
        f = (lambda t: t) if pre else encoder.preprocess
        crit.set_content_target(f(c))
        crit.set_style_target(f(s))
        return crit, f

    (a, _), (b, f) = build(True), build(False)
    assert torch.equal(a(img)[0], b(f(img))[0])  # RGB [0, 1] in, or the encoder's convention
    cl = a(img, memory_format=torch.channels_last)[0]
    assert torch.allclose(cl, a(img)[0], rtol=1e-5)


# ---- style blends -------------------------------------------------------------------------
def test_style_targets_blend_by_weight(encoder):
    s1, s2 = rand(1, 3, 16, 16, dtype=torch.float32, seed=1), rand(1, 3, 24, 20, dtype=torch.float32, seed=2)
    crit = losses.PerceptualLoss(encoder, style=[losses.GramLoss("relu1_1"), losses.MeanStdLoss("relu2_1")])
    crit.set_style_target([s1, s2], blend=[3, 1])
    with torch.no_grad():
        f1, f2 = encoder(s1, ["relu1_1", "relu2_1"]), encoder(s2, ["relu1_1", "relu2_1"])
    gram = losses.GramLoss("relu1_1")
    want = gram.encode(f1["relu1_1"])[0] * 0.75 + gram.encode(f2["relu1_1"])[0] * 0.25
    assert torch.equal(crit.style[0].target, want)  # Gatys' blend: Σ β_i G(s_i), β normalised
    ms = losses.MeanStdLoss("relu2_1")
    (m1, d1), (m2, d2) = ms.encode(f1["relu2_1"]), ms.encode(f2["relu2_1"])
    assert torch.allclose(crit.style[1].target_mean, 0.75 * m1 + 0.25 * m2)
    assert torch.allclose(crit.style[1].target_std, 0.75 * d1 + 0.25 * d2)
    # Equal by default; the same on a loss object directly.
    crit.set_style_target([s1, s2])
    gram.set_target([f1["relu1_1"], f2["relu1_1"]])
    assert torch.equal(crit.style[0].target, gram.target)
    with pytest.raises(ValueError, match=r"blend must have one weight per item \(2\), got 1"):
        crit.set_style_target([s1, s2], blend=[1])
    with pytest.raises(ValueError, match="blend must be finite numbers >= 0 with a finite sum > 0"):
        crit.set_style_target([s1, s2], blend=[0, 0])
    content = losses.ContentLoss("relu1_1")
    with pytest.raises(ValueError, match=r"content:relu1_1: cannot blend targets of shapes"):
        content.set_target([f1["relu1_1"], f2["relu1_1"]])  # features of different sizes


# ---- batches ------------------------------------------------------------------------------
def test_batch_broadcast_rules():
    x, t1, t3 = rand(3, 4, 5, 5, seed=1), rand(1, 4, 5, 5, seed=2), rand(3, 4, 5, 5, seed=3)
    for cls in (losses.ContentLoss, losses.GramLoss, losses.MeanStdLoss):
        term = cls("relu1_1")
        term.set_target(t1)  # batch 1: broadcast, the batch's mean of per-sample losses
        per_sample = torch.stack([term(x[i:i + 1]) for i in range(3)])
        assert torch.allclose(term(x), per_sample.mean(), rtol=1e-10), cls.__name__
        term.set_target(t3)  # batch B: sample by sample
        per_sample = []
        for i in range(3):
            one = cls("relu1_1")
            one.set_target(t3[i:i + 1])
            per_sample.append(one(x[i:i + 1]))
        assert torch.allclose(term(x), torch.stack(per_sample).mean(), rtol=1e-10), cls.__name__
        term.set_target(rand(2, 4, 5, 5))
        with pytest.raises(ValueError, match=r"target's shape \[2, .*does not match the input's \[3, "):
            term(x)


# ---- bad input ----------------------------------------------------------------------------
def test_bad_input(encoder):
    with pytest.raises(ValueError) as info:
        losses.PerceptualLoss(encoder, style=[losses.GramLoss("relu1_1"), losses.GramLoss("relu9_1")])
    msg = str(info.value)
    assert "unknown vgg19 layer 'relu9_1'" in msg and "layers are conv1_1, relu1_1, conv1_2" in msg
    g = losses.ContentLoss("relu1_1")
    with pytest.raises(RuntimeError, match=r"content:relu1_1: no target; call set_target"):
        g(rand(1, 4, 3, 3))
    g.set_target(rand(1, 4, 3, 3))
    with pytest.raises(ValueError, match=r"target's shape \[1, 4, 3, 3\] does not match the input's \[1, 4, 3, 2\]"):
        g(rand(1, 4, 3, 2))
    crit = losses.PerceptualLoss(encoder, content=[losses.ContentLoss("relu1_1")])
    crit.set_content_target(rand(1, 3, 8, 8, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"content:relu1_1: the target's shape \[1, 64, 8, 8\] does not match"):
        crit(rand(1, 3, 8, 6, dtype=torch.float32))
    with pytest.raises(TypeError, match="regularizers takes target-free losses"):
        losses.PerceptualLoss(encoder, regularizers=[losses.PixelLoss()])
    with pytest.raises(TypeError, match="content takes losses with a target"):
        losses.PerceptualLoss(encoder, content=[losses.TVLoss()])
    with pytest.raises(ValueError, match="GramLoss: weight must be a finite number >= 0, got -1"):
        losses.GramLoss("relu1_1", weight=-1)
    with pytest.raises(ValueError, match="GramLoss: normalize must be"):
        losses.GramLoss("relu1_1", normalize="c")


def test_pixel_content_and_duck_typed_encoder():
    class Tiny(nn.Module):  # any encoder with names and features_of
        names = ["a", "b"]

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def preprocess(self, x):
            return x

        def features_of(self, x, layers):
            a = self.conv(x)
            return {n: v for n, v in (("a", a), ("b", a.relu())) if n in layers}

    enc = Tiny()
    crit = losses.PerceptualLoss(enc, content=[losses.PixelLoss(2.0), losses.ContentLoss("b")],
                                 style=[losses.GramLoss("a"), losses.GramLoss("a", 2.0)])
    assert not enc.conv.weight.requires_grad
    c, s, x = (rand(1, 3, 4, 4, dtype=torch.float32, seed=k) for k in range(3))
    crit.set_content_target(c)
    crit.set_style_target(s)
    total, terms = crit(x)
    assert list(terms) == ["pixel", "content:b", "gram:a", "gram:a#2"]
    assert torch.allclose(terms["pixel"], 2.0 * ((x - c) ** 2).mean())
    assert torch.allclose(terms["gram:a#2"], 2 * terms["gram:a"])
    with pytest.raises(ValueError, match="unknown layer 'c'; layers are a, b"):
        losses.PerceptualLoss(enc, content=[losses.ContentLoss("c")])


# ---- Gatys' loss is this perceptual loss -------------------------------------------------
def test_gatys_loss_is_the_plain_formula(encoder):
    d = gatys.DEFAULTS
    layers = list(dict.fromkeys(d.content_layers + d.style_layers))
    x = (rand(1, 3, 32, 32, dtype=torch.float32, seed=1) * 255).requires_grad_()
    with torch.no_grad():
        t = encoder.features_of(rand(1, 3, 32, 32, dtype=torch.float32, seed=2) * 255, layers)
    tc = [t[n] for n in d.content_layers]
    tg = [losses.GramLoss(n).encode(t[n])[0] for n in d.style_layers]
    feats = encoder.features_of(x, layers)
    got = gatys.loss(feats, x, tc, tg)
    want = x.new_zeros(())  # gatys.loss before fastnst.losses, verbatim
    for n, tt in zip(d.content_layers, tc):
        want = want + d.content_weight * 1.0 * nn.functional.mse_loss(feats[n], tt)
    for n, tt in zip(d.style_layers, tg):
        g = losses.GramLoss(n).encode(feats[n])[0]
        want = want + d.style_weight * 1.0 * nn.functional.mse_loss(g, tt)
    want = want + d.tv_weight * losses.tv_loss(x)
    assert torch.equal(got, want)


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_gatys_steps_equal_a_perceptual_loss_from_its_defaults(encoder, optimizer):
    d, size, steps = gatys.DEFAULTS, 32, 3
    r = gatys.stylize(CONTENT, STYLE, size=size, steps=steps, optimizer=optimizer, encoder=encoder)
    crit = losses.PerceptualLoss(
        encoder, content=[losses.ContentLoss(n, d.content_weight) for n in d.content_layers],
        style=[losses.GramLoss(n, d.style_weight) for n in d.style_layers],
        regularizers=[losses.TVLoss(d.tv_weight)], preprocess=False)
    c = image.resize(image.load_image(CONTENT), size=size)
    s = image.resize(image.load_image(STYLE), size=round(size * d.style_scale))
    crit.set_content_target(encoder.preprocess(c))
    crit.set_style_target(encoder.preprocess(s))
    x = encoder.preprocess(c).detach().contiguous().requires_grad_(True)
    opt = (torch.optim.Adam([x], lr=10.0) if optimizer == "adam" else
           torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=100, tolerance_grad=-1, tolerance_change=-1))
    ours = []
    for _ in range(steps):
        def closure():
            opt.zero_grad(set_to_none=True)
            loss = crit(x)[0]
            loss.backward()
            ours.append(loss.item())
            return loss
        opt.step(closure)
    assert len(ours) == len(r.losses) == steps
    for a, b in zip(ours, r.losses):
        assert a == b  # bit for bit: the same terms, in the same order
