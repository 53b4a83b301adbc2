"""fastnst.compat against copies of pytorch/examples' fast_neural_style utils.py formulas."""

import pytest
import torch

from fastnst import compat


def examples_gram_matrix(y):  # pytorch/examples' formula
    (b, ch, h, w) = y.size()
    features = y.view(b, ch, w * h)
    features_t = features.transpose(1, 2)
    return features.bmm(features_t) / (ch * h * w)


def examples_normalize_batch(batch):  # pytorch/examples' formula
    mean = batch.new_tensor([0.485, 0.456, 0.406]).view(-1, 1, 1)
    std = batch.new_tensor([0.229, 0.224, 0.225]).view(-1, 1, 1)
    batch = batch.div_(255.0)
    return (batch - mean) / std


@pytest.mark.parametrize("shape", [(2, 8, 7, 5), (1, 3, 1, 1), (3, 16, 4, 9)])
def test_gram_matrix_matches_the_examples_formula_float64(shape):
    torch.manual_seed(0)
    y = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    y_ref = y.detach().clone().requires_grad_()
    g, g_ref = compat.gram_matrix(y), examples_gram_matrix(y_ref)
    assert g.shape == g_ref.shape and g.dtype == torch.float64
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(g)
    (g * w).sum().backward()
    (g_ref * w).sum().backward()
    torch.testing.assert_close(y.grad, y_ref.grad, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(compat.gram_matrix, (y[:1].detach().requires_grad_(),))


def test_gram_matrix_float32_channels_last_and_shapes():
    y = torch.randn(2, 6, 5, 4)
    torch.testing.assert_close(compat.gram_matrix(y), examples_gram_matrix(y), rtol=1e-5, atol=1e-6)
    cl = y.to(memory_format=torch.channels_last)
    torch.testing.assert_close(compat.gram_matrix(cl), examples_gram_matrix(y), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"y must be \[B, C, H, W\], got \[6, 20\]"):
        compat.gram_matrix(torch.randn(6, 20))


def test_normalize_batch_matches_the_examples_formula_float64():
    torch.manual_seed(0)
    leaf = (torch.rand(2, 3, 5, 4, dtype=torch.float64) * 255).requires_grad_()
    leaf_ref = leaf.detach().clone().requires_grad_()
    x, x_ref = leaf * 1, leaf_ref * 1  # non-leaves: both divide their input in place
    out, out_ref = compat.normalize_batch(x), examples_normalize_batch(x_ref)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
    torch.testing.assert_close(x, x_ref, rtol=0, atol=0)  # the input was divided by 255, as there
    torch.testing.assert_close(x, leaf.detach() / 255, rtol=0, atol=0)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (out_ref * w).sum().backward()
    torch.testing.assert_close(leaf.grad, leaf_ref.grad, rtol=0, atol=0)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(-1, 1, 1)
    torch.testing.assert_close(leaf.grad, w / 255 / std)


def test_normalize_batch_float32_unbatched_and_refusals():
    img = torch.rand(3, 4, 4) * 255
    torch.testing.assert_close(compat.normalize_batch(img.clone()), examples_normalize_batch(img.clone()))
    with pytest.raises(RuntimeError):  # a leaf that requires grad cannot be divided in place
        compat.normalize_batch(torch.rand(1, 3, 2, 2, requires_grad=True))
