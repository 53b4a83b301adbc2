"""A few optimisation steps on fastnst's ops and on the reference give the same loss curve."""

import importlib.util
import pathlib

import pytest

from conftest import kernel_backends

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "gram_style_loss.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("gram_style_loss", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("backend", [b for b in kernel_backends("gram_matrix") if b != "triton"])
def test_style_loss_curve_matches_reference(backend):
    ex = _load_example()
    ours = ex.fit(backend, steps=8)
    ref = ex.fit("reference", steps=8)
    assert ours[-1] < 0.5 * ours[0]  # it optimises
    for a, b in zip(ours, ref):
        assert a == pytest.approx(b, rel=1e-4)
