"""`fastnst info`: every public op appears with its backends; nothing initialises CUDA."""

import subprocess
import sys

from fastnst import _ext, info


def test_collect_lists_every_op():
    data = info.collect()
    assert list(data["ops"]) == ["gram", "mean_std", "instance_norm", "style_swap"]
    for row in data["ops"].values():
        assert set(row) == {"cpu", "cuda", "triton", "reference"}
        assert row["reference"] == "yes"
        assert (row["cpu"] == "yes") == _ext.available()


def test_render_aligns_columns():
    lines = info.render(info.collect()).splitlines()
    table = lines[lines.index("op x backend (float32):") + 2:]
    assert [ln.split()[0] for ln in table] == ["op", "gram", "mean_std", "instance_norm", "style_swap"]
    starts = {ln.index(ln.split()[1]) for ln in table}
    assert len(starts) == 1  # the second column starts at the same place on every row


def test_cli_info_runs():
    out = subprocess.run([sys.executable, "-m", "fastnst", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "style_swap" in out.stdout
