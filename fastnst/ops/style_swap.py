"""Style swap (Chen & Schmidt 2016, "Fast Patch-based Style Transfer of Arbitrary Style").

For every k × k content patch, the style patch with the highest normalised cross-correlation

    score(p, q) = <content patch p, style patch q> / (‖style patch q‖₂ + eps)

(the content patch's own norm would not change the argmax, so it is left out), then the
**unnormalised** chosen style patches are pasted and every pixel is divided by the number of
patches covering it.

Two registered ops carry it (schemas and geometry in csrc/registration.cpp):
  fastnst::style_swap_match(content, style, patch_size, stride, eps) -> indices [B, nh, nw]
  fastnst::style_swap_reconstruct(style, indices, patch_size, stride, out_h, out_w) -> out
with Triton versions ``fastnst::<op>_triton``. The matching never forms the
n_content × n_style score matrix or a one-hot tensor: score tiles feed a running argmax.
"""

from __future__ import annotations

import operator

import torch

from fastnst import _ext, reference
from fastnst.backend import resolve
from fastnst.ops import autocast
from fastnst.ops._common import check_same_device, check_tensor, shape_str
from fastnst.ops.registry import OpSpec, Sample, register

EPS = 1e-8  # as the Torch original: style patches are divided by (norm + 1e-8)
_OP = "style_swap"


def _grid(size: int, k: int, s: int) -> int:
    return (size - k) // s + 1


# ---- Triton ops ------------------------------------------------------------------------------
@torch.library.custom_op("fastnst::style_swap_match_triton", mutates_args=())
def _match_triton(content: torch.Tensor, style: torch.Tensor, patch_size: int, stride: int,
                  eps: float) -> torch.Tensor:
    from fastnst.kernels import style_swap as k

    return k.style_swap_match(content, style, patch_size, stride, eps)


@torch.library.custom_op("fastnst::style_swap_reconstruct_triton", mutates_args=())
def _reconstruct_triton(style: torch.Tensor, indices: torch.Tensor, patch_size: int, stride: int,
                        out_h: int, out_w: int) -> torch.Tensor:
    from fastnst.kernels import style_swap as k

    return k.style_swap_reconstruct(style, indices, patch_size, stride, out_h, out_w)


# ---- fake kernels ----------------------------------------------------------------------------
# A direct op call that mixes a meta tensor with real ones dispatches here (Meta wins the
# dispatch), so the fakes check the devices themselves: otherwise they would hand back an
# uninitialised tensor on the first argument's device.
def _match_fake(op: str):
    def fake(content, style, patch_size, stride, eps):
        check_same_device(f"fastnst::{op}", "content", content, "style", style)
        b, _, h, w = content.shape
        return content.new_empty((b, _grid(h, patch_size, stride), _grid(w, patch_size, stride)),
                                 dtype=torch.int64)

    return fake


def _reconstruct_fake(op: str):
    def fake(style, indices, patch_size, stride, out_h, out_w):
        check_same_device(f"fastnst::{op}", "style", style, "indices", indices)
        return style.new_empty((indices.shape[0], style.shape[1], out_h, out_w))

    return fake


_FAKES = {"style_swap_match": _match_fake, "style_swap_reconstruct": _reconstruct_fake}
for _op, _fake in _FAKES.items():
    torch.library.register_fake(f"fastnst::{_op}_triton")(_fake(f"{_op}_triton"))
    if _ext.available():
        torch.library.register_fake(f"fastnst::{_op}")(_fake(_op))


def _kernels(backend: str):
    """(match, reconstruct) registered ops of a kernel backend, from the specs."""
    return STYLE_SWAP.kernel_op(backend), STYLE_SWAP_RECONSTRUCT.kernel_op(backend)


# ---- public API -----------------------------------------------------------------------------
def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{_OP}: {name} must be an int >= {lo}, got {v!r}")
    if v < lo:
        raise ValueError(f"{_OP}: {name} must be >= {lo}, got {v}")
    return v


def _check_size(out_size) -> tuple[int, int]:
    """(height, width) from a pair of ints: anything with __index__ (numpy integers, integer
    0-d tensors) but not bool; floats, strings and other lengths are refused, not truncated."""
    def index(v) -> int:
        if isinstance(v, bool) or (isinstance(v, torch.Tensor) and v.dtype == torch.bool):
            raise TypeError
        return operator.index(v)

    try:
        if isinstance(out_size, (str, bytes)) or len(out_size) != 2:
            raise TypeError
        return index(out_size[0]), index(out_size[1])
    except (TypeError, ValueError, IndexError, KeyError, RuntimeError):
        raise TypeError(f"{_OP}: out_size must be a pair of ints (height, width), got {out_size!r}") from None


def _validate(content, style, patch_size, stride) -> None:
    checked = content
    if isinstance(content, torch.Tensor) and content.dim() == 4 and content.shape[0] == 0 and all(content.shape[1:]):
        # An empty batch is allowed (the result is an empty batch too): check_tensor, which
        # refuses empty tensors, sees a one-sample stand-in (one element is allocated).
        checked = content.new_empty(()).expand(1, *content.shape[1:])
    check_tensor(_OP, "content", checked, (4,), "[B, C, H, W]")
    check_tensor(_OP, "style", style, (4,), "[B or 1, C, H, W]")
    check_same_device(_OP, "content", content, "style", style)
    if autocast.cast_dtype(style) != autocast.cast_dtype(content):  # after autocast's casts
        raise TypeError(f"{_OP}: style must have the content's dtype {content.dtype}, got {style.dtype}")
    b, c = content.shape[0], content.shape[1]
    if style.shape[1] != c:
        raise ValueError(f"{_OP}: style must have the content's {c} channels, got {shape_str(style)}")
    if style.shape[0] not in (1, b):
        raise ValueError(f"{_OP}: style must have batch 1 or the content's {b}, got {shape_str(style)}")
    _check_int("patch_size", patch_size, 1)
    _check_int("stride", stride, 1)
    for nm, t in (("style", style), ("content", content)):
        if patch_size > min(t.shape[2], t.shape[3]):
            raise ValueError(f"{_OP}: patch_size {patch_size} is larger than the {nm} map "
                             f"{t.shape[2]}x{t.shape[3]} ({nm} is {shape_str(t)})")


def style_swap(content: torch.Tensor, style: torch.Tensor, patch_size: int = 3, stride: int = 1,
               return_indices: bool = False, *, eps: float = EPS, backend: str = "auto"):
    """Replace every content patch by its best-matching style patch (style swap).

    Args:
        content: features [B, C, Hc, Wc] (e.g. VGG relu3_1); float32, float16, bfloat16
            (float64 on the CPU); any strides. B = 0 gives empty results on every backend.
        style: features [1 or B, C, Hs, Ws] of the same dtype and device; any spatial size.
            A batch of 1 serves every content sample; a batch of B pairs sample b with style b.
        patch_size: k, the side of the square patches (default 3).
        stride: s, the step between patches of both maps (default 1), as in the public code.
        return_indices: also return the chosen style patch of every content patch.
        eps: style patches are divided by (‖patch‖₂ + eps); 1e-8 as the Torch original. An
            all-zero style patch scores 0 (no NaN, also with eps = 0).
        backend: "auto", "cpu", "cuda", "triton" or "reference".

    Geometry: content patches sit at (i·s, j·s), i < nh = (Hc − k) // s + 1, j < nw likewise;
    style patches at (qi·s, qj·s), numbered q = qi·mw + qj with mw = (Ws − k) // s + 1.
    Ties: style patches that are identical (element by element) score bit-equal on every
    kernel backend and the lowest q among them wins. Scores are <c, q> · 1 / (‖q‖ + eps),
    rounded, so distinct patches with mathematically equal scores (positive multiples of each
    other with eps = 0) may round a few ulps apart and any of them may win: the winner's exact
    score is within (3K + 8)·u·‖content patch‖ of the best (K = C·k², u = 2⁻²⁴, 2⁻⁵³ for
    float64; README, "Style swap"). Apart from such near-ties, for finite inputs the indices
    are those of the conv-based reference; a NaN score never wins (the reference's argmax
    would pick it).

    Returns:
        [B, C, Hc, Wc] (contiguous, the style's dtype): each pixel is the mean of the chosen
        style patches that cover it. Pixels that no content patch covers — the last
        (Hc − k) % s rows and (Wc − k) % s columns, and gaps when s > k — are 0.
        With ``return_indices``: ``(output, indices)``, indices int64 [B, nh, nw]; pass them to
        :func:`style_swap_reconstruct` to reuse a match (e.g. across video frames).

    Not differentiable (the output is a target): inputs are detached. Memory is
    O(content + style); no score matrix or one-hot tensor is formed.
    """
    _validate(content, style, patch_size, stride)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"{_OP}: eps must be a finite number >= 0, got {eps!r}")
    if not (0 <= eps < float("inf")):
        raise ValueError(f"{_OP}: eps must be a finite number >= 0, got {eps!r}")
    content, style = content.detach(), style.detach()
    name = resolve(STYLE_SWAP, content, backend)
    if content.shape[0] == 0:  # every backend: an empty batch in, an empty batch out
        k, s = patch_size, stride
        out = style.new_empty(content.shape)
        idx = content.new_empty((0, _grid(content.shape[2], k, s), _grid(content.shape[3], k, s)),
                                dtype=torch.int64)
    elif name == "reference":
        out, idx = reference.style_swap(content, style, patch_size, stride, float(eps))
    else:
        match, rec = _kernels(name)
        idx = match(content, style, patch_size, stride, float(eps))
        out = rec(style, idx, patch_size, stride, content.shape[2], content.shape[3])
    return (out, idx) if return_indices else out


def style_swap_reconstruct(style: torch.Tensor, indices: torch.Tensor, out_size: tuple[int, int],
                           patch_size: int = 3, stride: int = 1, *, backend: str = "auto") -> torch.Tensor:
    """Paste the style patches ``indices`` names and average the overlaps (the second half of
    :func:`style_swap`), e.g. to reuse a match across video frames.

    ``indices``: int64 [B, nh, nw] as returned by ``style_swap(..., return_indices=True)``;
    ``out_size``: (Hc, Wc) of the content it was matched on, a pair of ints (numpy integers
    too; not bool, float or str). Returns [B, C, Hc, Wc]; B = 0 gives an empty batch on every
    backend. Index values are checked (ValueError) except on meta tensors, where only shapes
    are.
    """
    check_tensor(_OP, "style", style, (4,), "[B or 1, C, H, W]")
    if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64 or indices.dim() != 3:
        got = f"{indices.dtype} {shape_str(indices)}" if isinstance(indices, torch.Tensor) else type(indices).__name__
        raise TypeError(f"{_OP}: indices must be an int64 tensor [B, nh, nw], got {got}")
    check_same_device(_OP, "style", style, "indices", indices)
    _check_int("patch_size", patch_size, 1)
    _check_int("stride", stride, 1)
    out_h, out_w = _check_size(out_size)
    if patch_size > min(out_h, out_w, style.shape[2], style.shape[3]):
        raise ValueError(f"{_OP}: patch_size {patch_size} is larger than the style map "
                         f"{style.shape[2]}x{style.shape[3]} or out_size {out_h}x{out_w}")
    nh, nw = _grid(out_h, patch_size, stride), _grid(out_w, patch_size, stride)
    if tuple(indices.shape[1:]) != (nh, nw) or style.shape[0] not in (1, indices.shape[0]):
        raise ValueError(f"{_OP}: indices must be [B, {nh}, {nw}] for out_size {out_h}x{out_w}, "
                         f"patch_size {patch_size}, stride {stride} (style batch 1 or B), got "
                         f"{shape_str(indices)} with style {shape_str(style)}")
    n_style = _grid(style.shape[2], patch_size, stride) * _grid(style.shape[3], patch_size, stride)
    # Meta tensors have no values; under torch.compile the range check would break the graph
    # (the CPU kernel still raises on an out-of-range index, the GPU kernels write NaN).
    if indices.numel() and indices.device.type != "meta" and not torch.compiler.is_compiling():
        lo, hi = (int(v) for v in torch.aminmax(indices))
        if lo < 0 or hi >= n_style:
            raise ValueError(f"{_OP}: indices must lie in [0, {n_style}) (the style's patches), got "
                             f"values in [{lo}, {hi}]")
    style = style.detach()
    name = resolve(STYLE_SWAP_RECONSTRUCT, style, backend)
    if indices.shape[0] == 0:  # every backend, as style_swap: an empty batch out
        return style.new_empty((0, style.shape[1], out_h, out_w))
    if name == "reference":
        return reference.style_swap_paste(style, indices, patch_size, stride, out_h, out_w)
    return _kernels(name)[1](style, indices, patch_size, stride, out_h, out_w)


# ---- specs -------------------------------------------------------------------------------------
def _style_swap_samples(device: torch.device, dtype: torch.dtype) -> list[Sample]:
    def mk(*shape):
        return torch.randn(shape, device=device, dtype=dtype)

    return [Sample((mk(1, 4, 8, 9), mk(1, 4, 7, 6)), note="default 3x3, stride 1"),
            Sample((mk(2, 6, 10, 9), mk(2, 6, 8, 8), 1, 1), note="1x1 patches, per-sample styles"),
            Sample((mk(2, 5, 11, 10), mk(1, 5, 9, 12), 3, 2), note="stride 2: uncovered pixels"),
            Sample((mk(1, 3, 6, 7), mk(1, 3, 5, 5)), {"return_indices": True}, "indices too")]


def _reconstruct_samples(device: torch.device, dtype: torch.dtype) -> list[Sample]:
    style = torch.randn(1, 4, 7, 6, device=device, dtype=dtype)
    n_style = _grid(7, 3, 1) * _grid(6, 3, 1)
    idx = torch.randint(n_style, (2, _grid(8, 3, 1), _grid(9, 3, 1)), device=device)
    idx2 = torch.randint(_grid(7, 3, 2) * _grid(6, 3, 2), (1, _grid(9, 3, 2), _grid(9, 3, 2)), device=device)
    return [Sample((style, idx, (8, 9)), note="3x3, stride 1"),
            Sample((style, idx2, (9, 9), 3, 2), note="stride 2")]


STYLE_SWAP = register(OpSpec(
    name="style_swap", kernel="style_swap_match", triton="style_swap_match_triton", function=style_swap,
    reference_call=lambda *a, **k: style_swap(*a, backend="reference", **k), samples=_style_swap_samples,
    differentiable=False, doc="best normalised-cross-correlation style patch per content patch, overlap-averaged"))
STYLE_SWAP_RECONSTRUCT = register(OpSpec(
    name="style_swap_reconstruct", kernel="style_swap_reconstruct", triton="style_swap_reconstruct_triton",
    function=style_swap_reconstruct,
    reference_call=lambda *a, **k: style_swap_reconstruct(*a, backend="reference", **k),
    samples=_reconstruct_samples, differentiable=False, doc="paste chosen style patches, average overlaps"))
