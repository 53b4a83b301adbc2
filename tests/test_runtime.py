"""fastnst.runtime.malloc: the CLI's malloc settings. With them a second large allocation reuses
mapped pages (few page faults) where glibc's defaults map fresh ones (one fault per 4 KiB page);
the re-exec decision."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_engine import ENV

from fastnst.runtime import malloc

_DRIVER = r"""
import resource, torch
from fastnst.models.transformer import TransformerNet
from fastnst.nn import accelerate
torch.manual_seed(0)
m = accelerate(TransformerNet()).eval().requires_grad_(False)
m.fused_inference = False  # module by module: every intermediate a fresh allocation
x = torch.rand(1, 3, 256, 256) * 255
def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with torch.inference_mode():
    m(x); m(x)                      # warm: the heap reaches its working size
    before = faults()
    for _ in range(2):
        m(x)
print(faults() - before)
"""


def _faults(env) -> int:
    p = subprocess.run([sys.executable, "-c", _DRIVER], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return int(p.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or not malloc._glibc(), reason="glibc only")
def test_settings_make_freed_memory_reused():
    """Two TransformerNet forwards at 256² (module by module; the fused path pools its own
    buffers) after two warm-up passes: with glibc's defaults every large activation is fresh
    mmap pages (tens of thousands of faults); with the CLI's settings the heap's pages are
    reused."""
    base = {k: v for k, v in ENV.items() if k not in malloc.ENV and k != malloc.MARK}
    default = _faults(base)
    kept = _faults(dict(base, **malloc.ENV))
    assert default > 10_000
    assert kept < 0.25 * default  # measured: 16-23k with the defaults, 0-2k with the settings


def test_reexec_decision(monkeypatch):
    if not sys.platform.startswith("linux") or not malloc._glibc():
        assert malloc.reexec_argv(["fastnst", "stylize"], ["py", "fastnst", "stylize"], {}) is None
        return
    orig = [sys.executable, "-m", "fastnst", "stylize", "johnson", "m.pth", "a.png", "-o", "b.png"]
    argv = ["-m", "stylize", "johnson"]
    assert malloc.reexec_argv(argv, orig, {}) == [sys.executable, *orig[1:]]
    for cmd in ("train", "upscale", "evaluate"):
        assert malloc.reexec_argv(["fastnst", cmd], ["py", "/bin/fastnst", cmd], {}) == \
            [sys.executable, "/bin/fastnst", cmd]
    for cmd in ("info", "bench", "--help"):
        assert malloc.reexec_argv(["fastnst", cmd], ["py", "/bin/fastnst", cmd], {}) is None
    assert malloc.reexec_argv(argv, orig, {malloc.MARK: "1"}) is None  # once
    assert malloc.reexec_argv(argv, orig, {"FASTNST_MALLOC": "system"}) is None
    assert malloc.reexec_argv(argv, orig, {"MALLOC_MMAP_MAX_": "65536"}) is None  # the user's own


def test_apply_for_cli_reexecutes_once_with_the_settings():
    """apply_for_cli execs the process's own command line again with the settings and the mark
    (here the "command line" prints what the new process sees)."""
    if not sys.platform.startswith("linux") or not malloc._glibc():
        pytest.skip("glibc only")
    show = "import os; print(os.environ.get('FASTNST_MALLOC_APPLIED'), os.environ.get('MALLOC_MMAP_MAX_'))"
    driver = ("import sys; sys.argv = ['fastnst', 'stylize']; "
              f"sys.orig_argv = [sys.executable, '-c', {show!r}, 'stylize']; "
              "from fastnst.runtime import malloc; malloc.apply_for_cli(); print('not replaced')")
    env = {k: v for k, v in ENV.items() if k not in malloc.ENV and k != malloc.MARK}
    p = subprocess.run([sys.executable, "-c", driver], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["1", "0"]
    p = subprocess.run([sys.executable, "-c", driver], env=dict(env, FASTNST_MALLOC="system"),
                       capture_output=True, text=True, timeout=120)
    assert p.stdout.split() == ["not", "replaced"]

