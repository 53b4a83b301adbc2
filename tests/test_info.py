"""`fastnst info`: every public op appears with its backends; nothing initialises CUDA."""

import subprocess
import sys

from fastnst import _ext, info


def test_collect_lists_every_op():
    data = info.collect()
    assert list(data["ops"]) == ["gram_matrix", "mean_std", "instance_norm", "adain", "style_swap",
                                 "style_swap_reconstruct"]
    for row in data["ops"].values():
        assert set(row) == {"cpu", "cuda", "triton", "reference"}
        assert row["reference"] == "yes"
        assert (row["cpu"] == "yes") == _ext.available()


def test_render_aligns_columns():
    lines = info.render(info.collect()).splitlines()
    table = lines[lines.index("op x backend (float32):") + 2:]
    table = table[:table.index("")] if "" in table else table  # the CPU paths table follows
    assert [ln.split()[0] for ln in table] == ["op"] + list(info.collect()["ops"])
    starts = {ln.index(ln.split()[1]) for ln in table}
    assert len(starts) == 1  # the second column starts at the same place on every row


def test_render_never_truncates_a_reason():
    data = info.collect()
    reason = "no: triton is not installed (ModuleNotFoundError: No module named 'triton')"
    data["ops"]["gram_matrix"]["triton"] = reason
    text = info.render(data)
    assert reason in text
    lines = text.splitlines()
    table = lines[lines.index("op x backend (float32):") + 2:]
    table = table[:table.index("")] if "" in table else table
    header = table[0]
    col = header.index("reference")  # later columns move right, they do not overlap
    assert all(ln[col - 2:col] == "  " for ln in table)


def test_cli_info_runs():
    out = subprocess.run([sys.executable, "-m", "fastnst", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "style_swap" in out.stdout
