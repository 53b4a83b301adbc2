"""fastnst.models.loaders: pytorch/examples TransformerNet checkpoints (.pth/.safetensors) and
jcjohnson/fast-neural-style Torch7 (.t7) models.

The .t7 tests build small jcjohnson-style networks twice from the same random weights: as Torch
layer tables written with tests/t7write.py, and as float64 reference computations written here
from the layers' definitions (fractionally strided convolution by zero insertion, instance and
batch norm from their formulas), independently of the loader."""

import math
import re

import numpy as np
import pytest
import t7write
import torch
import torch.nn.functional as F
from t7write import TorchClass

from fastnst.models.loaders import (
    CheckpointError,
    TorchTransformer,
    load_johnson,
    load_t7_model,
    load_transformer_state,
)
from fastnst.models.transformer import TransformerNet

PTH = ("a pytorch/examples fast_neural_style TransformerNet state_dict (torch.save'd .pth/.pt/.model, "
       "or .safetensors)")
T7 = "a jcjohnson/fast-neural-style .t7 checkpoint (torch.save of a table whose model field is an nn.Sequential)"
KNOWN = ("cudnn.ReLU, cudnn.SpatialBatchNormalization, cudnn.SpatialConvolution, cudnn.SpatialFullConvolution, "
         "cudnn.Tanh, nn.CAddTable, nn.ConcatTable, nn.Identity, nn.InstanceNormalization, nn.MulConstant, nn.ReLU, "
         "nn.Sequential, nn.ShaveImage, nn.SpatialBatchNormalization, nn.SpatialConvolution, "
         "nn.SpatialConvolutionMM, nn.SpatialFullConvolution, nn.SpatialReflectionPadding, "
         "nn.SpatialReplicationPadding, nn.SpatialUpSamplingNearest, nn.SpatialZeroPadding, nn.Tanh, "
         "nn.TotalVariation")
VGG_MEAN_BGR = torch.tensor([103.939, 116.779, 123.68], dtype=torch.float64).view(1, 3, 1, 1)
RESNET_MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
RESNET_STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)


def exactly(msg: str) -> str:
    return "^" + re.escape(msg) + "$"


@pytest.fixture
def torchfile():
    return pytest.importorskip("torchfile", reason="reading .t7 files needs the torchfile package")


# ---------------------------------------------------------------------------------------------
# Torch layers (for t7write) with their float64 reference forwards
# ---------------------------------------------------------------------------------------------

def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


class Build:
    """Makes (Torch layer, reference function) pairs. Weights are stored in the file as `dtype`
    tensors; the references use the same values in float64."""

    def __init__(self, dtype=torch.float64):
        self.dtype = dtype

    def _param(self, *shape, scale=1.0, offset=0.0, positive=False):
        t = (torch.rand(*shape, dtype=torch.float64) + 0.5) if positive else torch.randn(*shape, dtype=torch.float64)
        stored = (t * scale + offset).to(self.dtype)
        return stored, stored.to(torch.float64)

    @staticmethod
    def module(typename, version=1, **fields):
        return TorchClass(typename, {"output": t7write.empty(), "gradInput": t7write.empty(), "train": True,
                                     **fields}, version)

    def conv(self, cin, cout, k, s=1, p=0, *, bias=True, mm=False, typename="nn.SpatialConvolution", **extra):
        (kh, kw), (sh, sw), (ph, pw) = _pair(k), _pair(s), _pair(p)
        w_st, w = self._param(cout, cin, kh, kw, scale=1.0 / math.sqrt(cin * kh * kw))
        b_st, b = self._param(cout, scale=0.1) if bias else (None, None)
        obj = self.module(typename, nInputPlane=cin, nOutputPlane=cout, kW=kw, kH=kh, dW=sw, dH=sh, padW=pw,
                          padH=ph, weight=w_st.reshape(cout, -1) if mm else w_st, bias=b_st,
                          gradWeight=t7write.empty(), gradBias=t7write.empty(), finput=t7write.empty(),
                          fgradInput=t7write.empty(), **extra)
        return obj, lambda x: F.conv2d(x, w, b, stride=(sh, sw), padding=(ph, pw))

    def full_conv(self, cin, cout, k, s, p, a):
        (kh, kw), (sh, sw), (ph, pw), (ah, aw) = _pair(k), _pair(s), _pair(p), _pair(a)
        w_st, w = self._param(cin, cout, kh, kw, scale=1.0 / math.sqrt(cin * kh * kw))  # Torch: [in, out, kH, kW]
        b_st, b = self._param(cout, scale=0.1)
        obj = self.module("nn.SpatialFullConvolution", nInputPlane=cin, nOutputPlane=cout, kW=kw, kH=kh, dW=sw,
                          dH=sh, padW=pw, padH=ph, adjW=aw, adjH=ah, weight=w_st, bias=b_st,
                          gradWeight=t7write.empty(), gradBias=t7write.empty(), ones=t7write.empty(),
                          finput=t7write.empty())

        def ref(x):  # stride zero insertion, pad k-1-p (+adj at the end), correlate with the flipped kernel
            n, c, h, wd = x.shape
            up = x.new_zeros(n, c, (h - 1) * sh + 1, (wd - 1) * sw + 1)
            up[:, :, ::sh, ::sw] = x
            qh, qw = kh - 1 - ph, kw - 1 - pw
            up = F.pad(up, (qw, qw + aw, qh, qh + ah))
            return F.conv2d(up, w.transpose(0, 1).flip(2, 3), b)

        return obj, ref

    def instance_norm(self, c, eps=1e-5):
        w_st, w = self._param(c, positive=True)
        b_st, b = self._param(c, scale=0.2)
        inner = self.module("nn.SpatialBatchNormalization", 2, eps=eps, momentum=0.1, affine=True,
                            running_mean=torch.zeros(2 * c, dtype=self.dtype),
                            running_var=torch.ones(2 * c, dtype=self.dtype),
                            weight=torch.ones(2 * c, dtype=self.dtype), bias=torch.zeros(2 * c, dtype=self.dtype))
        obj = self.module("nn.InstanceNormalization", nOutput=c, eps=eps, prev_N=2, weight=w_st, bias=b_st,
                          gradWeight=t7write.empty(), gradBias=t7write.empty(), bn=inner)

        def ref(x):
            mean = x.mean(dim=(2, 3), keepdim=True)
            var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)
            return (x - mean) / torch.sqrt(var + eps) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)

        return obj, ref

    def batch_norm(self, c, *, affine=True, old=False, eps=1e-5):
        m_st, m = self._param(c, scale=0.3)
        v_st, v = self._param(c, positive=True)
        w_st, w = self._param(c, positive=True) if affine else (None, None)
        b_st, b = self._param(c, scale=0.2) if affine else (None, None)
        fields = {"eps": eps, "momentum": 0.1, "weight": w_st, "bias": b_st, "running_mean": m_st}
        if old:  # nn before BatchNormalization version 2 kept 1 / sqrt(var + eps), and no affine flag
            inv_st = (v + eps).rsqrt().to(self.dtype)
            inv = inv_st.to(torch.float64)
            obj = self.module("nn.SpatialBatchNormalization", 1, running_std=inv_st, **fields)
        else:
            inv = (v + eps).rsqrt()
            obj = self.module("nn.SpatialBatchNormalization", 2, affine=affine, running_var=v_st,
                              save_mean=t7write.empty(), save_std=t7write.empty(), **fields)

        def ref(x):
            y = (x - m.view(1, -1, 1, 1)) * inv.view(1, -1, 1, 1)
            return y * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1) if affine else y

        return obj, ref

    def relu(self):
        return self.module("nn.ReLU", threshold=0, val=0, inplace=True), lambda x: x.clamp_min(0)

    def tanh(self):
        return self.module("nn.Tanh"), torch.tanh

    def mul(self, c):
        return self.module("nn.MulConstant", constant_scalar=c, inplace=False), lambda x: x * c

    def tv(self):
        return self.module("nn.TotalVariation", strength=1e-6, x_diff=t7write.empty(),
                           y_diff=t7write.empty()), lambda x: x

    def identity(self):
        return self.module("nn.Identity"), lambda x: x

    def shave(self, s):
        return self.module("nn.ShaveImage", size=s), lambda x: x[:, :, s:-s, s:-s]

    def pad(self, kind, left, right, top, bottom):
        typename = {"reflect": "nn.SpatialReflectionPadding", "replicate": "nn.SpatialReplicationPadding",
                    "zero": "nn.SpatialZeroPadding"}[kind]
        obj = self.module(typename, pad_l=left, pad_r=right, pad_t=top, pad_b=bottom)
        if kind == "zero":
            def ref(x):  # positive pads add zeros, negative ones crop
                x = F.pad(x, tuple(max(0, v) for v in (left, right, top, bottom)))
                h, w = x.shape[2], x.shape[3]
                return x[:, :, max(0, -top):h - max(0, -bottom), max(0, -left):w - max(0, -right)]
            return obj, ref
        return obj, lambda x: F.pad(x, (left, right, top, bottom), mode=kind)

    def upsample_nearest(self, s):
        return (self.module("nn.SpatialUpSamplingNearest", scale_factor=s),
                lambda x: x.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3))

    def seq(self, *layers):
        objs, refs = [obj for obj, _ in layers], [ref for _, ref in layers]

        def ref(x):
            for f in refs:
                x = f(x)
            return x

        return self.module("nn.Sequential", modules=objs), ref

    def residual(self, block, skip):
        concat = self.module("nn.ConcatTable", modules=[block[0], skip[0]])
        cadd = self.module("nn.CAddTable", inplace=False)
        return self.module("nn.Sequential", modules=[concat, cadd]), lambda x: block[1](x) + skip[1](x)


def instance_norm_model(b: Build, nres=2):
    """jcjohnson's default recipe, scaled down: arch c9s1-4,d8,d16,R16 x nres,u8,u4,c9s1-3 with
    instance norm and 'reflect-start' padding: zero-padded 'c' convs, valid residual convs with a
    ShaveImage(2) skip, and the reflection padding train.lua inserts first so that the output keeps
    the input's size (4 pixels per residual block at 1/4 scale: 8 * nres on each side)."""
    layers = [b.pad("reflect", *[8 * nres] * 4),
              b.conv(3, 4, 9, 1, 4), b.instance_norm(4), b.relu(),
              b.conv(4, 8, 3, 2, 1), b.instance_norm(8), b.relu(),
              b.conv(8, 16, 3, 2, 1), b.instance_norm(16), b.relu()]
    for _ in range(nres):
        block = b.seq(b.conv(16, 16, 3), b.instance_norm(16), b.relu(), b.conv(16, 16, 3), b.instance_norm(16))
        layers.append(b.residual(block, b.shave(2)))
    layers += [b.full_conv(16, 8, 3, 2, 1, 1), b.instance_norm(8), b.relu(),
               b.full_conv(8, 4, 3, 2, 1, 1), b.instance_norm(4), b.relu(),
               b.conv(4, 3, 9, 1, 4), b.tanh(), b.mul(150), b.tv()]
    return b.seq(*layers)


def batch_norm_model(b: Build):
    """The eccv16 family: batch norm; here with models.lua's 'reflect' padding (reflection padding
    before every 'c' conv and inside the residual blocks, identity skip)."""
    block = b.seq(b.pad("reflect", 1, 1, 1, 1), b.conv(8, 8, 3), b.batch_norm(8), b.relu(),
                  b.pad("reflect", 1, 1, 1, 1), b.conv(8, 8, 3), b.batch_norm(8))
    return b.seq(b.pad("reflect", 4, 4, 4, 4), b.conv(3, 4, 9), b.batch_norm(4), b.relu(),
                 b.conv(4, 8, 3, 2, 1), b.batch_norm(8), b.relu(),
                 b.residual(block, b.identity()),
                 b.full_conv(8, 4, 3, 2, 1, 1), b.batch_norm(4), b.relu(),
                 b.pad("reflect", 4, 4, 4, 4), b.conv(4, 3, 9), b.tanh(), b.mul(150), b.tv())


def misc_model(b: Build):
    """The other layers: replication, asymmetric reflection and zero padding (negative: cropping), SpatialConvolutionMM
    with a 2-D weight and no bias, pre-version-2 batch norm without affine parameters, nearest
    upsampling, a cudnn conv; kernels, strides, paddings and adjustments that differ in H and W."""
    return b.seq(b.pad("replicate", 1, 2, 0, 1),
                 b.conv(3, 4, 3, mm=True, bias=False, typename="nn.SpatialConvolutionMM"),
                 b.batch_norm(4, affine=False, old=True), b.relu(), b.pad("reflect", 2, 0, 1, 3),
                 b.upsample_nearest(2),
                 b.pad("zero", -1, 2, 1, -2),
                 b.conv(4, 5, (3, 5), (1, 2), (1, 2), typename="cudnn.SpatialConvolution", groups=1),
                 b.full_conv(5, 3, (3, 4), (2, 3), (1, 1), (1, 2)), b.tanh(), b.mul(2.0))


def checkpoint(model, preprocessing="vgg", **opt):
    opt = {"arch": "c9s1-32,d64,d128,R128,R128,R128,R128,R128,u64,u32,c9s1-3", "use_instance_norm": 1,
           "padding_type": "reflect-start", "tanh_constant": 150, "tv_strength": 1e-6, "style_weights": "5.0",
           **({"preprocessing": preprocessing} if preprocessing else {}), **opt}
    return {"opt": opt, "model": model, "train_loss_history": [3.5, 2.25], "val_loss_history": [3.0],
            "val_loss_history_ts": [1000], "style_loss_history": {"style-1": [1.0]}}


def reference(ref, preprocessing, x):
    if preprocessing == "resnet":
        y = ref((x / 255.0 - RESNET_MEAN) / RESNET_STD)
        return (y * RESNET_STD + RESNET_MEAN) * 255.0
    y = ref(x[:, [2, 1, 0]] - VGG_MEAN_BGR)
    return (y + VGG_MEAN_BGR)[:, [2, 1, 0]]


FAMILIES = {  # builder, preprocessing, input size
    "instance_norm": (instance_norm_model, "vgg", (20, 24)),
    "eccv16": (batch_norm_model, "vgg", (12, 16)),
    "misc": (misc_model, "resnet", (9, 11)),
}


# ---------------------------------------------------------------------------------------------
# t7write itself
# ---------------------------------------------------------------------------------------------

def test_t7write_round_trips_through_torchfile(tmp_path, torchfile):
    shared = {"k": 1}
    storage = t7write.Storage(np.arange(12, dtype=np.float64))
    view = t7write.Tensor(storage, [3, 2], [1, 3], offset=2)  # a strided view into a shared storage
    prefix = t7write.Tensor(storage, [4])
    weight = torch.arange(6, dtype=torch.float32).view(2, 3)
    module = TorchClass("nn.Foo", {"x": 1.5, "w": weight}, version=2)
    obj = {"num": 2.5, "int": 7, "neg": -3, "str": "hello", "yes": True, "no": False, "list": [1, "a", 2],
           "nested": {"deep": {"x": 4}}, "t": weight, "again": weight, "view": view, "prefix": prefix,
           "mod": module, "s1": shared, "s2": shared, "empty": t7write.empty()}
    path = tmp_path / "x.t7"
    t7write.save(path, obj)
    got = torchfile.load(str(path))
    assert got[b"num"] == 2.5 and got[b"int"] == 7 and got[b"neg"] == -3
    assert got[b"str"] == b"hello" and got[b"yes"] is True and got[b"no"] is False
    assert got[b"list"] == [1, b"a", 2] and got[b"nested"][b"deep"][b"x"] == 4
    assert got[b"t"].dtype == np.float32 and np.array_equal(got[b"t"], weight.numpy())
    assert got[b"again"] is got[b"t"]  # written once, then as a reference
    assert np.array_equal(got[b"view"], np.arange(12.0)[2:8].reshape(2, 3).T)
    assert np.array_equal(got[b"prefix"], np.arange(4.0))
    assert got[b"mod"].torch_typename() == b"nn.Foo" and got[b"mod"][b"x"] == 1.5
    assert got[b"mod"]._version_number == 2 and got[b"mod"][b"w"] is got[b"t"]
    assert got[b"s1"] is got[b"s2"] and got[b"empty"].size == 0
    # the same bytes as an in-memory dump
    assert path.read_bytes() == t7write.dumps(obj)


# ---------------------------------------------------------------------------------------------
# .t7 models against their references
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_t7_model_matches_reference_fp64(tmp_path, torchfile, family):
    build, preprocessing, (h, w) = FAMILIES[family]
    model, ref = build(Build(torch.float64))
    path = tmp_path / f"{family}.t7"
    t7write.save(path, checkpoint(model, preprocessing))
    net = load_t7_model(path, dtype=torch.float64)
    assert isinstance(net, TorchTransformer) and net.preprocessing == preprocessing and not net.training
    assert len(net.body) == len(model.fields["modules"])
    x = torch.rand(2, 3, h, w, dtype=torch.float64) * 255
    expect = reference(ref, preprocessing, x)
    with torch.no_grad():
        y = net(x)
    if family != "misc":
        assert y.shape == x.shape  # reflect-start padding and 'reflect' padding keep the size
    assert y.shape == expect.shape
    torch.testing.assert_close(y, expect, rtol=1e-10, atol=1e-9)
    if family == "eccv16":  # batch norm stays in test mode (running statistics) whatever .train() says
        with torch.no_grad():
            torch.testing.assert_close(net.train()(x), expect, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("family", ["instance_norm", "eccv16"])
def test_t7_model_float_tensors_fp32(tmp_path, torchfile, family):
    build, preprocessing, (h, w) = FAMILIES[family]
    model, ref = build(Build(torch.float32))  # the file holds torch.FloatTensors, as Torch saves them
    path = tmp_path / f"{family}.t7"
    t7write.save(path, checkpoint(model, preprocessing))
    net, notes = load_johnson(path)
    assert next(net.parameters()).dtype == torch.float32
    family_note = "instance norm" if family == "instance_norm" else "batch norm (eccv16)"
    assert notes == [f"jcjohnson/fast-neural-style Torch7 model: {len(model.fields['modules'])} top-level layers, "
                     f"{family_note}, vgg preprocessing"]
    x = (torch.rand(1, 3, h, w, dtype=torch.float64) * 255).float()
    with torch.no_grad():
        y = net(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), reference(ref, preprocessing, x.double()), rtol=0, atol=2e-3)


def test_t7_structure_of_the_reflect_start_model(tmp_path, torchfile):
    model, _ = instance_norm_model(Build())
    path = tmp_path / "m.t7"
    t7write.save(path, checkpoint(model))
    body = load_t7_model(path).body
    assert isinstance(body[0], torch.nn.ReflectionPad2d) and body[0].padding == (16, 16, 16, 16)
    assert isinstance(body[2], torch.nn.InstanceNorm2d) and body[2].affine
    residual = body[10]  # Sequential(ConcatTable(block, ShaveImage), CAddTable), as in the Torch tree
    assert type(residual[0][1]).__name__ == "_ShaveImage" and residual[0][1].size == 2
    up = body[12]
    assert isinstance(up, torch.nn.ConvTranspose2d) and up.output_padding == (1, 1) and up.stride == (2, 2)
    assert [type(m).__name__ for m in body[-3:]] == ["Tanh", "_MulConstant", "Identity"]


def test_t7_bare_network_and_4_byte_longs(tmp_path, torchfile):
    """A file holding just the network (scripts/convert_network.lua), written with 4-byte C longs."""
    model, ref = batch_norm_model(Build())
    path = tmp_path / "bare.t7"
    t7write.save(path, model, long_format="<i")
    net, notes = load_johnson(path)
    assert notes[1] == "the file holds a bare network, with no training options; assuming vgg preprocessing"
    x = torch.rand(1, 3, 12, 16, dtype=torch.float64) * 255
    with torch.no_grad():
        torch.testing.assert_close(net.double()(x), reference(ref, "vgg", x), rtol=0, atol=1e-3)


def test_t7_without_recorded_preprocessing_assumes_vgg(tmp_path, torchfile):
    model, ref = misc_model(Build())
    path = tmp_path / "m.t7"
    t7write.save(path, checkpoint(model, preprocessing=None))
    net, notes = load_johnson(path)
    assert net.preprocessing == "vgg"
    assert notes[1] == "the checkpoint records no preprocessing; assuming vgg (train.lua's default)"


# ---------------------------------------------------------------------------------------------
# .t7 errors
# ---------------------------------------------------------------------------------------------

def _simple(b, *extra):
    """conv 3->4, ReLU, the extra layers, conv 4->3: the Torch nn.Sequential only."""
    return b.seq(b.conv(3, 4, 3, 1, 1), b.relu(), *extra, b.conv(4, 3, 3, 1, 1))[0]


def test_t7_unknown_layer(tmp_path, torchfile):
    b = Build()
    pool = b.module("nn.SpatialMaxPooling", kW=2, kH=2, dW=2, dH=2)
    model = _simple(b, b.seq(b.identity(), b.identity(), (pool, None)))
    path = tmp_path / "pool.t7"
    t7write.save(path, checkpoint(model))
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: unknown Torch layer nn.SpatialMaxPooling at model.2.2 (fastnst reads: {KNOWN})")):
        load_t7_model(path)


def test_t7_misshapen_weight(tmp_path, torchfile):
    b = Build()
    model = _simple(b)
    model.fields["modules"][0].fields["weight"] = torch.zeros(4, 3, 3, 5)
    path = tmp_path / "w.t7"
    t7write.save(path, checkpoint(model))
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: nn.SpatialConvolution at model.0: weight has shape [4, 3, 3, 5]; expected a float tensor of "
            "shape [4, 3, 3, 3] (nOutputPlane, nInputPlane, kH, kW)")):
        load_t7_model(path)


def test_t7_field_errors(tmp_path, torchfile):
    b = Build()
    path = tmp_path / "w.t7"
    model = _simple(b)
    model.fields["modules"][0].fields["weight"] = torch.zeros(4, 3, 3, 3, dtype=torch.int64)
    t7write.save(path, checkpoint(model))
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: nn.SpatialConvolution at model.0: weight has dtype int64; expected a float tensor of shape "
            "[4, 3, 3, 3] (nOutputPlane, nInputPlane, kH, kW)")):
        load_t7_model(path)
    model = _simple(b)
    model.fields["modules"][2].fields["bias"] = torch.tensor([0.0, 1.0, float("nan")])
    t7write.save(path, checkpoint(model))
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: nn.SpatialConvolution at model.2: bias holds 1 NaN/Inf value; expected a float tensor of "
            "shape [3] (nOutputPlane), finite")):
        load_t7_model(path)
    model = _simple(b)
    model.fields["modules"][1].fields["threshold"] = 1e-6  # an nn.Threshold in disguise
    t7write.save(path, checkpoint(model))
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: nn.ReLU at model.1: threshold is 1e-06; expected a finite number equal to 0")):
        load_t7_model(path)
    model = _simple(b)
    del model.fields["modules"][0].fields["kH"]
    t7write.save(path, checkpoint(model))
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: nn.SpatialConvolution at model.0: kH is missing; expected an integer >= 1")):
        load_t7_model(path)


def test_t7_channel_mismatch_and_tensor_outside_storage(tmp_path, torchfile):
    b = Build()
    path = tmp_path / "c.t7"
    model, _ = b.seq(b.conv(3, 4, 3, 1, 1), b.relu(), b.conv(5, 3, 3, 1, 1))
    t7write.save(path, checkpoint(model))
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: nn.SpatialConvolution at model.2: nInputPlane is 5 but the layer receives 4 channels; "
            "expected 4, the channels of the previous layer's output")):
        load_t7_model(path)
    model = _simple(b)  # a weight whose sizes run past the end of its storage
    model.fields["modules"][0].fields["weight"] = t7write.Tensor(t7write.Storage(np.zeros(10, np.float32)),
                                                                 [4, 3, 3, 3])
    t7write.save(path, checkpoint(model))
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: nn.SpatialConvolution at model.0: weight points outside its storage; expected a float tensor "
            "of shape [4, 3, 3, 3] (nOutputPlane, nInputPlane, kH, kW) inside its storage")):
        load_t7_model(path)


def test_t7_bad_files(tmp_path, torchfile):
    b = Build()
    path = tmp_path / "m.t7"
    t7write.save(path, checkpoint(instance_norm_model(b, nres=1)[0]))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: cannot parse it as a Torch7 binary file (the file ends early: truncated); expected {T7}")):
        load_t7_model(path)
    t7write.save(path, {"opt": {"preprocessing": "vgg"}, "loss": [1.0]})
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: its checkpoint table has no model field (fields: loss, opt); expected {T7}")):
        load_t7_model(path)
    t7write.save(path, checkpoint(_simple(b), preprocessing="caffe"))
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: opt.preprocessing is 'caffe'; expected 'vgg' or 'resnet'")):
        load_t7_model(path)
    looped = _simple(b)
    looped.fields["modules"].insert(1, looped)
    t7write.save(path, checkpoint(looped))
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: nn.Sequential at model.1 contains itself; expected a tree of modules")):
        load_t7_model(path)
    t7write.save(path, checkpoint(b.conv(3, 3, 3)[0]))
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: its model is an nn.SpatialConvolution; expected an nn.Sequential")):
        load_t7_model(path)
    t7write.save(path, checkpoint(b.seq(b.conv(3, 4, 3))[0]))
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: its model outputs 4 channels; expected 3 (an RGB image)")):
        load_t7_model(path)
    pth = tmp_path / "net.pth"
    torch.save({"w": torch.zeros(1)}, pth)
    with pytest.raises(CheckpointError, match=exactly(
            f"{pth}: is a torch.save file, not a Torch7 file (read it with load_transformer_state or load_johnson); "
            f"expected {T7}")):
        load_t7_model(pth)
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: is a Torch7 .t7 file, not a PyTorch state_dict (read it with load_t7_model or load_johnson); "
            f"expected {PTH}")):
        load_transformer_state(path)


def test_t7_needs_torchfile(tmp_path, monkeypatch):
    path = tmp_path / "m.t7"
    path.write_bytes(t7write.dumps({"model": {}}))
    monkeypatch.setitem(__import__("sys").modules, "torchfile", None)
    with pytest.raises(ImportError, match=exactly(
            "reading .t7 files needs the torchfile package: pip install torchfile")):
        load_t7_model(path)


# ---------------------------------------------------------------------------------------------
# pytorch/examples TransformerNet checkpoints
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def net_state():
    g = torch.Generator().manual_seed(1)
    net = TransformerNet().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return net, {k: v.clone() for k, v in net.state_dict().items()}


def _running_keys():
    prefixes = [f"in{i}" for i in range(1, 6)] + [f"res{k}.in{j}" for k in range(1, 6) for j in (1, 2)]
    return [f"{p}.{s}" for p in prefixes for s in ("running_mean", "running_var")]


def test_pth_with_pre_04_running_keys(tmp_path, net_state):
    net, state = net_state
    old = dict(state)
    for k in _running_keys():
        old[k] = torch.zeros(state[k.rsplit(".", 1)[0] + ".weight"].shape)
    assert len(old) == 62 + 30
    path = tmp_path / "candy.pth"
    torch.save(old, path, _use_new_zipfile_serialization=False)  # the legacy format of the released models
    loaded, notes = load_transformer_state(path)
    assert notes == ["dropped 30 running_mean/running_var keys of pre-0.4 PyTorch instance norms"]
    assert list(loaded) == list(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    model, notes = load_johnson(path)
    assert isinstance(model, TransformerNet) and not model.training
    assert notes == ["pytorch/examples fast_neural_style TransformerNet",
                     "dropped 30 running_mean/running_var keys of pre-0.4 PyTorch instance norms"]
    x = torch.rand(1, 3, 16, 16) * 255
    with torch.no_grad():
        assert torch.equal(model(x), net(x))


def test_pth_wrapped_and_prefixed(tmp_path, net_state):
    _, state = net_state
    path = tmp_path / "ddp.pt"
    prefixed = {"module." + k: v for k, v in state.items()}
    prefixed["module.in1.num_batches_tracked"] = torch.tensor(5)
    torch.save({"epoch": 2, "state_dict": prefixed}, path)
    loaded, notes = load_transformer_state(path)
    assert notes == ["stripped the 'module.' prefix of a DataParallel/DistributedDataParallel state_dict",
                     "dropped 1 num_batches_tracked key"]
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    torch.save({"model": state, "optimizer": {"lr": 1e-3}}, path)
    assert load_transformer_state(path)[1] == []


def test_pth_key_and_tensor_errors(tmp_path, net_state):
    _, state = net_state
    path = tmp_path / "bad.pth"
    first = "conv1.conv2d.weight [32, 3, 9, 9], conv1.conv2d.bias [32], in1.weight [32] and 59 more"
    cases = [
        ({k: v for k, v in state.items() if not k.startswith("in5.")},
         f"2 TransformerNet keys missing (in5.weight [32], in5.bias [32]); expected the 62 keys of pytorch/examples' "
         f"TransformerNet ({first})"),
        ({**state, "extra.weight": torch.zeros(1)},
         f"1 unexpected key (extra.weight); expected the 62 keys of pytorch/examples' TransformerNet ({first})"),
        ({**state, "conv1.conv2d.weight": torch.zeros(16, 3, 9, 9)},
         "wrong shapes: conv1.conv2d.weight is [16, 3, 9, 9] (TransformerNet has [32, 3, 9, 9]); expected the tensor "
         "shapes of pytorch/examples' TransformerNet"),
        ({**state, "in1.weight": torch.ones(32, dtype=torch.int64)},
         "not dense floating-point tensors: in1.weight (torch.int64); expected dense floating-point tensors"),
        ({**state, "in1.bias": torch.full((32,), float("inf"))},
         "non-finite values: in1.bias (32 NaN/Inf values); expected finite float32 values"),
        ({**state, "in2.bias": torch.full((64,), 1e39, dtype=torch.float64)},
         "non-finite values: in2.bias (64 NaN/Inf values); expected finite float32 values"),
        ([1, 2], f"holds a list, not a state_dict; expected {PTH}"),
        ({"epoch": 3, "lr": 0.1}, f"holds a dict with no state_dict or model entry (non-tensor entries: 'epoch', "
                                  f"'lr'); expected {PTH}"),
    ]
    for i, (obj, msg) in enumerate(cases):
        torch.save(obj, path)
        with pytest.raises(CheckpointError, match=exactly(f"{path}: {msg}")):
            (load_johnson if i % 2 else load_transformer_state)(path)


class _Evil:
    """Unpickling this would call open(marker, "w")."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pth_malicious_pickle_is_refused(tmp_path, net_state):
    _, state = net_state
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({**state, "payload": _Evil(marker)}, path)
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: its pickle needs more than weights-only loading (unsupported GLOBAL io.open), which fastnst "
            f"refuses because unpickling it could run code; expected {PTH} holding only tensors")):
        load_johnson(path)
    assert not marker.exists()


def test_pth_unreadable_files(tmp_path, net_state):
    _, state = net_state
    path = tmp_path / "cut.pth"
    torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: cannot read it with torch.load (a truncated or corrupt zip archive); expected {PTH}")):
        load_transformer_state(path)
    torch.save(state, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: cannot read it with torch.load (the file ends early: truncated); expected {PTH}")):
        load_transformer_state(path)
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match=exactly(
            f"{text}: is not a torch.save file or a safetensors file (its first bytes are neither a zip archive, a "
            f"pickle nor a safetensors header); expected {PTH}")):
        load_johnson(text)
    other = tmp_path / "notes.bin"
    other.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match=exactly(
            f"{other}: is not a recognised checkpoint (neither a torch.save file, a safetensors file nor a Torch7 "
            "file); expected a pytorch/examples TransformerNet state_dict (.pth/.pt/.model/.safetensors) or a "
            "jcjohnson/fast-neural-style .t7 checkpoint")):
        load_johnson(other)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=exactly(f"{empty}: is empty (0 bytes); expected a checkpoint file")):
        load_johnson(empty)
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match=exactly(f"{missing}: no such file")):
        load_johnson(missing)
    with pytest.raises(FileNotFoundError, match=exactly(f"{missing}: no such file")):
        load_t7_model(missing)
    with pytest.raises(CheckpointError, match=exactly(f"{tmp_path}: is a directory; expected a checkpoint file")):
        load_transformer_state(tmp_path)


def test_content_wins_over_extension(tmp_path, torchfile, net_state):
    _, state = net_state
    t7_named_pth = tmp_path / "model.pth"
    t7write.save(t7_named_pth, checkpoint(_simple(Build())))
    assert isinstance(load_johnson(t7_named_pth)[0], TorchTransformer)
    pth_named_t7 = tmp_path / "model.t7"
    torch.save(state, pth_named_t7)
    assert isinstance(load_johnson(pth_named_t7)[0], TransformerNet)


def test_safetensors(tmp_path, net_state):
    st = pytest.importorskip("safetensors.torch", reason="reading .safetensors files needs the safetensors package")
    net, state = net_state
    path = tmp_path / "candy.safetensors"
    st.save_file(state, str(path))
    model, notes = load_johnson(path)
    assert notes == ["pytorch/examples fast_neural_style TransformerNet"]
    x = torch.rand(1, 3, 16, 16) * 255
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    st.save_file({k: v for k, v in state.items() if k != "deconv3.conv2d.bias"}, str(path))
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: 1 TransformerNet key missing (deconv3.conv2d.bias "
                                                        "[3]); expected the 62 keys")):
        load_transformer_state(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: cannot read it as a safetensors file (")):
        load_transformer_state(path)
