"""scripts/: gpu_check.sh (the one-command first run on a CUDA machine) where there is no GPU."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
from test_engine import ENV

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "gpu_check.sh")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here: the script would run the whole check")
def test_gpu_check_script_without_a_gpu(tmp_path):
    """Without a CUDA GPU the script records the device, says there is nothing to check and
    exits with status 2, building and running nothing."""
    p = subprocess.run(["bash", SCRIPT, str(tmp_path / "report")], capture_output=True, text=True, timeout=120,
                       env=ENV)
    assert p.returncode == 2, p.stderr
    assert p.stderr == f"gpu_check: no CUDA GPU visible to torch (see {tmp_path / 'report' / 'report.md'})\n"
    report = (tmp_path / "report" / "report.md").read_text()
    assert report.startswith("# fastnst GPU check, ") and "available False" in report
    assert report.rstrip().endswith("nothing to check")
    assert sorted(os.listdir(tmp_path / "report")) == ["report.md"]
