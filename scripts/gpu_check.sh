#!/usr/bin/env bash
# The first run on a machine with a CUDA GPU, in one command:
#   ./scripts/gpu_check.sh [REPORT_DIR]          (default: gpu_report/)
# 1. records the device (nvidia-smi, torch's CUDA build and device name, the CPU);
# 2. builds fastnst with its CUDA sources (FASTNST_FORCE_CUDA=1, --no-build-isolation: the
#    installed CUDA torch is used, never another) and checks that the CUDA kernels registered;
# 3. runs the tests that need the GPU: the `cuda`-marked ones and every op's cuda and triton
#    backend cases (`-k "cuda or triton"`);
# 4. runs `fastnst bench --device cuda` for every op benchmark that has GPU cases;
# and writes REPORT_DIR/report.md with each step's status and the benchmark tables (logs next to
# it). Without a CUDA GPU (or with a CPU-only torch) it stops at step 1, exit status 2.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_report}
mkdir -p "$OUT"
REPORT="$OUT/report.md"
status=0

step() {  # step NAME LOGFILE COMMAND...: run, record ok / failed (exit status) in the report
    local name=$1 log=$2
    shift 2
    if "$@" > "$OUT/$log" 2>&1; then
        echo "- $name: ok (\`$log\`)" >> "$REPORT"
    else
        local rc=$?
        echo "- $name: **failed** (exit $rc, \`$log\`)" >> "$REPORT"
        status=1
    fi
}

{
    echo "# fastnst GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo '```'
    (nvidia-smi 2>&1 || echo "nvidia-smi: not found") | head -20
    lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)" || true
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" 2>&1
    echo '```'
    echo
} > "$REPORT"

if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "- no CUDA GPU visible to torch (a CPU-only torch, or no device): nothing to check" >> "$REPORT"
    echo "gpu_check: no CUDA GPU visible to torch (see $REPORT)" >&2
    exit 2
fi

step "build with the CUDA sources" build.log \
    env FASTNST_FORCE_CUDA=1 python -m pip install --no-build-isolation -e ".[test]"
step "CUDA kernels registered" registered.log python - <<'EOF'
import sys
import torch
from fastnst import _ext
from fastnst.backend import cuda_op_registered
info = _ext.build_info()
print(info)
ops = ["gram", "instance_norm", "mean_std", "style_swap_match"]
missing = [op for op in ops if not cuda_op_registered(op)]
print("missing CUDA kernels:", missing or "none")
sys.exit(1 if missing or not info.get("with_cuda") else 0)
EOF
step "GPU tests (cuda-marked, cuda and triton backends)" tests.log \
    python -m pytest tests -q -rs -k "cuda or triton"
for op in gram norm style_swap gatys; do
    step "fastnst bench --op $op --device cuda" "bench_$op.log" \
        fastnst bench --op "$op" --device cuda --out "$OUT/bench"
done

{
    echo
    echo "## Benchmarks"
    for f in "$OUT"/bench/*.md; do
        [ -e "$f" ] || continue
        echo
        cat "$f"
    done
    echo
    echo "## Test summary"
    echo '```'
    tail -n 5 "$OUT/tests.log" 2>/dev/null
    echo '```'
} >> "$REPORT"
echo "gpu_check: wrote $REPORT"
exit $status
