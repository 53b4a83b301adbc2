"""The training engine: exact resume (the resumed loss curve and weights equal the uninterrupted
run's), torchrun with 2 processes x 2 images == 1 process x 4 images, a SIGKILL during a
checkpoint write leaves the previous checkpoint intact and resumable, atomic exports, bad
checkpoints and output paths refused before any work, the JSONL log and the loss plot.

Runs Johnson's method on 32 x 32 images with a 4-conv VGG-16 (relu1_2, relu2_2) made here."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from fastnst import image
from fastnst.engine import CheckpointError, checkpoint, precision, read_weights
from fastnst.engine import log as runlog
from fastnst.methods import johnson

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))


def small_vgg16(path) -> str:
    """torchvision vgg16 layout, conv1_1 .. conv2_2 only (features.0, 2, 5, 7)."""
    g = torch.Generator().manual_seed(0)
    shapes = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128)}
    sd = {}
    for i, (o, c) in shapes.items():
        sd[f"features.{i}.weight"] = torch.randn(o, c, 3, 3, generator=g) * (2.0 / (9 * c)) ** 0.5
        sd[f"features.{i}.bias"] = torch.zeros(o)
    torch.save(sd, path)
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("engine")
    data = d / "data"
    data.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(8):
        img = torch.rand(1, 3, 36 + i, 40, generator=g)
        image.save_image(img, data / f"{i}.png")
    image.save_image(torch.rand(1, 3, 48, 48, generator=g), d / "style.png")
    return {"dir": d, "data": str(data), "style": str(d / "style.png"), "vgg": small_vgg16(d / "vgg16.pth")}


def config(s, **kw) -> johnson.Config:
    base = dict(style=s["style"], data=s["data"], vgg_weights=s["vgg"], style_layers=("relu1_2", "relu2_2"),
                image_size=32, batch_size=2, steps=6, checkpoint_every=2, sample_every=3, plot=False)
    base.update(kw)
    return johnson.Config(**base)


def weights(path) -> dict:
    return read_weights(str(path))[0]


def test_resume_equals_uninterrupted(setup, tmp_path):
    full = johnson.train(config(setup), str(tmp_path / "full.safetensors"), progress=False)
    assert full.steps == 6 and len(full.records) == 6
    part = johnson.train(config(setup, steps=3), str(tmp_path / "part.safetensors"), progress=False)
    assert part.steps == 3
    ck = str(tmp_path / "part_run" / "checkpoint.pt")
    assert checkpoint.load(ck, "johnson")["step"] == 3
    res = johnson.train(config(setup), str(tmp_path / "part.safetensors"), resume=ck, progress=False)
    assert res.steps == 6
    assert res.losses == full.losses  # every step, bit for bit
    keys = {k for k in full.records[0] if k not in ("seconds",)}
    assert [{k: r[k] for k in keys} for r in runlog.read(str(tmp_path / "part_run" / "log.jsonl"))] == \
        [{k: r[k] for k in keys} for r in full.records]
    a, b = weights(tmp_path / "full.safetensors"), weights(tmp_path / "part.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_mid_epoch_and_across_epochs(setup, tmp_path):
    # 8 images / batch 2 = 4 steps per epoch: stop at step 5 (inside epoch 1), go on to 9.
    full = johnson.train(config(setup, steps=9, checkpoint_every=5), str(tmp_path / "f.pth"), progress=False)
    johnson.train(config(setup, steps=5, checkpoint_every=5), str(tmp_path / "p.pth"), progress=False)
    res = johnson.train(config(setup, steps=9, checkpoint_every=5), str(tmp_path / "p.pth"),
                        resume=str(tmp_path / "p_run" / "checkpoint.pt"), progress=False)
    assert res.losses == full.losses
    assert [r["epoch"] for r in full.records] == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    a = torch.load(tmp_path / "f.pth", weights_only=True)
    b = torch.load(tmp_path / "p.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_log_samples_plot_and_export(setup, tmp_path):
    pytest.importorskip("matplotlib")
    r = johnson.train(config(setup, plot=True), str(tmp_path / "m.safetensors"), progress=False)
    run = tmp_path / "m_run"
    assert sorted(os.listdir(run)) == ["checkpoint.pt", "log.jsonl", "loss.png", "samples"]
    assert sorted(os.listdir(run / "samples")) == ["step_0000003.png", "step_0000006.png"]
    recs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs] == [1, 2, 3, 4, 5, 6]
    for x in recs:
        terms = [k for k in x if ":" in k]
        assert sorted(terms) == ["content:relu2_2", "gram:relu1_2", "gram:relu2_2"]
        assert x["loss"] == pytest.approx(sum(x[k] for k in terms), rel=1e-5)
        assert x["lr"] == 1e-3
    assert image.load_image(str(run / "loss.png")).shape[-2:] == (450, 800)
    state, meta = read_weights(str(tmp_path / "m.safetensors"))
    assert meta["fastnst_method"] == "johnson" and json.loads(meta["fastnst_config"])["steps"] == 6
    assert len(state) == 62 and r.output == str(tmp_path / "m.safetensors")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_schedules(setup, tmp_path):
    r = johnson.train(config(setup, lr_schedule="cosine", steps=4), str(tmp_path / "c.pth"), progress=False)
    import math
    assert [x["lr"] for x in r.records] == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * s / 4))
                                                          for s in range(4)])
    r = johnson.train(config(setup, lr_schedule="inverse", lr_decay=0.5, steps=3), str(tmp_path / "i.pth"),
                      progress=False)
    assert [x["lr"] for x in r.records] == pytest.approx([1e-3 / (1 + 0.5 * s) for s in range(3)])


def test_bf16_autocast_trains(setup, tmp_path):
    fp = johnson.train(config(setup, steps=3), str(tmp_path / "a.pth"), progress=False)
    bf = johnson.train(config(setup, steps=3, precision="bf16"), str(tmp_path / "b.pth"), progress=False)
    for a, b in zip(fp.losses, bf.losses):
        assert b == pytest.approx(a, rel=0.05)


def test_precision_rules():
    with pytest.raises(ValueError, match=r"^precision must be one of fp32, bf16, fp16, got 'fp64'$"):
        precision.check("fp64", "cpu")
    if not precision.cpu_flags() & {"avx512_fp16", "amx_fp16"}:
        with pytest.raises(ValueError, match=r"^precision fp16 needs a CPU with AVX512-FP16 or AMX-FP16"):
            precision.check("fp16", "cpu")


def test_bad_resume_files(setup, tmp_path):
    cfg = config(setup)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk.pt is not a fastnst checkpoint: it cannot be read"):
        johnson.train(cfg, str(tmp_path / "o.pth"), resume=str(junk), progress=False)
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match=r"plain.pt is not a fastnst checkpoint \(no 'fastnst_checkpoint'"):
        johnson.train(cfg, str(tmp_path / "o.pth"), resume=str(plain), progress=False)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"fastnst_checkpoint": 1, "x": Evil()}, evil)
    with pytest.raises(CheckpointError, match=r"evil.pt is not a fastnst checkpoint: it needs code to be unpickled "
                                              r"\(posix.system; fastnst reads checkpoints with weights_only=True\)"):
        johnson.train(cfg, str(tmp_path / "o.pth"), resume=str(evil), progress=False)
    other = tmp_path / "other.pt"
    torch.save({"fastnst_checkpoint": 1, "method": "sr", "config": {}, "step": 1, "model": {}, "optimizer": {}},
               other)
    with pytest.raises(CheckpointError, match=r"other.pt is a checkpoint of the 'sr' method, not 'johnson'$"):
        johnson.train(cfg, str(tmp_path / "o.pth"), resume=str(other), progress=False)
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*nope.pt does not exist"):
        johnson.train(cfg, str(tmp_path / "o.pth"), resume=str(tmp_path / "nope.pt"), progress=False)


def test_resume_with_other_settings_or_shapes(setup, tmp_path):
    johnson.train(config(setup, steps=2), str(tmp_path / "m.pth"), progress=False)
    ck = str(tmp_path / "m_run" / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"the run was started with other settings: batch_size=2 \(now 4\)"):
        johnson.train(config(setup, batch_size=4), str(tmp_path / "m.pth"), resume=ck, progress=False)
    with pytest.raises(ValueError, match=r"the run already did 2 steps; ask for more with --steps \(now 2\)"):
        johnson.train(config(setup, steps=2), str(tmp_path / "m.pth"), resume=ck, progress=False)
    bad = torch.load(ck, weights_only=True)
    bad["model"]["conv1.conv2d.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad.pt: its weights do not fit the model: .*conv1.conv2d.weight"):
        johnson.train(config(setup), str(tmp_path / "m.pth"), resume=str(tmp_path / "bad.pt"), progress=False)


def test_outputs_refused_before_work(setup, tmp_path):
    cfg = config(setup)
    with pytest.raises(ValueError, match=r"output weights are a .safetensors, .pth or .pt file, got '.*m.png'"):
        johnson.train(cfg, str(tmp_path / "m.png"), progress=False)
    with pytest.raises(FileNotFoundError, match=r"cannot write the output weights .*: folder .*nodir does not exist"):
        johnson.train(cfg, str(tmp_path / "nodir" / "m.pth"), progress=False)
    (tmp_path / "e.pth").write_bytes(b"x")
    with pytest.raises(FileExistsError, match=r"e.pth already exists; pass overwrite=True"):
        johnson.train(cfg, str(tmp_path / "e.pth"), progress=False)
    johnson.train(config(setup, steps=1), str(tmp_path / "r.pth"), progress=False)
    os.unlink(tmp_path / "r.pth")
    with pytest.raises(FileExistsError, match=r"already holds a run .*checkpoint.pt\); resume it with --resume"):
        johnson.train(cfg, str(tmp_path / "r.pth"), progress=False)
    with pytest.raises(ValueError, match=r"^batch_size must be an integer >= 1, got 0$"):
        johnson.train(config(setup, batch_size=0), str(tmp_path / "z.pth"), progress=False)
    with pytest.raises(ValueError, match=r"the data set has 8 items, fewer than one batch \(batch_size 16\)"):
        johnson.train(config(setup, batch_size=16), str(tmp_path / "z.pth"), progress=False)


_KILL_DRIVER = r"""
import os, signal, sys, torch
from fastnst.engine import checkpoint
from fastnst.methods import johnson
real = torch.save
calls = {"n": 0}
def dying_save(obj, f, *a, **k):
    calls["n"] += 1
    if calls["n"] == 2:          # the second checkpoint: write half of it, then die
        import io
        buf = io.BytesIO(); real(obj, buf, *a, **k)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush(); os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, f, *a, **k)
torch.save = dying_save
cfg = johnson.Config(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in eval(sys.argv[1]).items()})
johnson.train(cfg, sys.argv[2], progress=False)
"""


def test_sigkill_during_checkpoint_write_keeps_previous(setup, tmp_path):
    cfg = config(setup, steps=6, checkpoint_every=2, sample_every=0)
    out = str(tmp_path / "k.pth")
    args = repr(dataclasses.asdict(cfg))
    p = subprocess.run([sys.executable, "-c", _KILL_DRIVER, args, out], env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == -9, p.stderr
    run = tmp_path / "k_run"
    left = sorted(os.listdir(run))
    assert "checkpoint.pt" in left and any(f.endswith(".tmp") for f in left)  # the half-written temp file
    ck = checkpoint.load(str(run / "checkpoint.pt"), "johnson")
    assert ck["step"] == 2  # the first checkpoint, intact
    res = johnson.train(cfg, out, resume=str(run / "checkpoint.pt"), progress=False)
    assert not [f for f in os.listdir(run) if f.endswith(".tmp")]  # the stale temp file is gone
    full = johnson.train(cfg, str(tmp_path / "full.pth"), progress=False)
    assert res.losses == full.losses
    assert not os.path.exists(out + ".tmp")


def _torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "fastnst", *args]
    env = dict(ENV, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_two_processes_equal_one(setup, tmp_path):
    common = ["train", "johnson", "--style", setup["style"], "--data", setup["data"], "--vgg-weights", setup["vgg"],
              "--style-layers", "relu1_2,relu2_2", "--image-size", "32", "--batch-size", "4", "--steps", "3",
              "--sample-every", "0", "--no-plot", "--quiet"]
    one = _torchrun(1, common + ["-o", str(tmp_path / "one.pth")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(2, common + ["-o", str(tmp_path / "two.pth")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1  # rank 0 alone writes and reports
    a = torch.load(tmp_path / "one.pth", weights_only=True)
    b = torch.load(tmp_path / "two.pth", weights_only=True)
    assert a.keys() == b.keys()
    # Adam's first steps are lr x sign(gradient) per element: where an element's gradient is
    # zero up to rounding (biases feeding an instance norm, which subtracts them, and a few
    # elements elsewhere), summation order alone flips the sign, and Adam's normalisation
    # magnifies small differences of small gradients. So: the loss curves agree to 1e-6, the
    # typical weight to 1e-5, and no element differs by more than 2 x lr x steps.
    lr, steps = 1e-3, 3
    for k in a:
        d = (b[k] - a[k]).abs()
        assert d.max() <= 2 * lr * steps * 1.01, k
        if not k.endswith("bias"):
            assert d.median() < 1e-5, k
    la = [r["loss"] for r in runlog.read(str(tmp_path / "one_run" / "log.jsonl"))]
    lb = [r["loss"] for r in runlog.read(str(tmp_path / "two_run" / "log.jsonl"))]
    assert lb == pytest.approx(la, rel=1e-6)
