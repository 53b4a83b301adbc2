#!/usr/bin/env bash
# Release check: fastnst works as users install it.
#   1. build the sdist (in a temp dir) and check it carries every file the build needs;
#   2. build a wheel from that sdist (pip wheel --no-build-isolation, as a user would);
#   3. check the wheel: its tag (cpXY-abi3) agrees with Py_LIMITED_API and Requires-Python,
#      the .so is stripped, kernels/ is installed as fastnst.kernels;
#   4. install it into a fresh virtualenv that has only torch (the very torch it was built
#      against) and run `fastnst info` and a one-op smoke test from outside the checkout;
#   5. replace it there by `pip install --no-build-isolation` of the sdist itself (what a user
#      with the .tar.gz does) and run the same checks again.
# Exits non-zero with a "check_dist: FAIL: ..." line on the first failure. About 3-4 minutes on
# 2 cores (most of it compiling fastnst._C). Environment: PYTHON (default python), MAX_JOBS,
# KEEP=1 keeps the temp dir for inspection.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd -P)
PY=${PYTHON:-python}
T0=$SECONDS
TMP=$(mktemp -d "${TMPDIR:-/tmp}/fastnst-dist.XXXXXX")
TMP=$(cd "$TMP" && pwd -P)
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "check_dist: kept $TMP"; else rm -rf "$TMP"; fi; }
trap cleanup EXIT
step() { echo "check_dist: [$((SECONDS - T0))s] $*"; }
fail() { echo "check_dist: FAIL: $*" >&2; exit 1; }
# Runs a command with its output in a log; prints the log's tail when it fails.
logged() {
  local log=$1; shift
  if ! "$@" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    fail "$* (full log: $log; rerun with KEEP=1 to keep it)"
  fi
}
case "$TMP/" in "$REPO"/*) fail "temp dir $TMP lies inside the checkout: set TMPDIR elsewhere" ;; esac

VERSION=$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' fastnst/_version.py)
[ -n "$VERSION" ] || fail "no __version__ in fastnst/_version.py"
TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__)') || fail "torch is not importable by $PY"
LIMITED_HEX=$("$PY" - <<'EOF'
import re
s = open("setup.py", encoding="utf-8").read()
print("0x%02X%02X0000" % tuple(map(int, re.search(r"^LIMITED_API = \((\d+), (\d+)\)", s, re.M).groups())))
EOF
) || fail "no LIMITED_API = (X, Y) in setup.py"
PYTAG="cp$((LIMITED_HEX >> 24))$(((LIMITED_HEX >> 16) & 0xFF))"  # 0x030A0000 -> cp310
step "fastnst $VERSION, torch $TORCH_VERSION, Py_LIMITED_API=$LIMITED_HEX (wheel tag $PYTAG-abi3), temp $TMP"

# 1. sdist. FASTNST_NO_EXTENSION=1: the file list must come from MANIFEST.in alone, never from
# what this machine's torch would compile (a CPU torch skips csrc/cuda). egg_info goes to the
# temp dir, not the checkout.
step "building the sdist"
logged "$TMP/sdist.log" env FASTNST_NO_EXTENSION=1 "$PY" setup.py egg_info --egg-base "$TMP" sdist --dist-dir "$TMP/sdist"
SDIST="$TMP/sdist/fastnst-$VERSION.tar.gz"
[ -f "$SDIST" ] || fail "no $SDIST (sdist made: $(ls "$TMP/sdist"))"
tar tzf "$SDIST" | sed "s|^fastnst-$VERSION/||" | sort >"$TMP/sdist.txt"
missing=$(
  { find csrc -type f \( -name '*.h' -o -name '*.hpp' -o -name '*.cuh' -o -name '*.cpp' -o -name '*.cu' \)
    find fastnst kernels -name '*.py' -not -path '*/__pycache__/*'
    for f in README.md pyproject.toml setup.py MANIFEST.in LICENSE; do if [ -e "$f" ]; then echo "$f"; fi; done
  } | sort | comm -23 - "$TMP/sdist.txt")
[ -z "$missing" ] || fail "the sdist lacks files the build needs (MANIFEST.in): $(echo $missing)"
stray=$(grep -E '\.(so|o|pyc)$|(^|/)(build|dist|__pycache__)/' "$TMP/sdist.txt" || true)
[ -z "$stray" ] || fail "the sdist carries build artifacts: $(echo $stray)"
step "sdist ok: $(basename "$SDIST"), $(grep -vc '/$' "$TMP/sdist.txt") files ($(grep -c '^csrc/.*[^/]$' "$TMP/sdist.txt") in csrc/), $(du -k "$SDIST" | cut -f1) KiB"

# 2. wheel from the sdist, against the torch installed here.
step "building the wheel from the sdist (MAX_JOBS=${MAX_JOBS:-$(nproc)})"
logged "$TMP/wheel.log" env MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" -m pip wheel -v --no-build-isolation --no-deps \
  -w "$TMP/wheel" "$SDIST"
WHEELS=("$TMP"/wheel/fastnst-*.whl)
[ ${#WHEELS[@]} = 1 ] && [ -f "${WHEELS[0]}" ] || fail "expected one wheel, got: $(ls "$TMP/wheel")"
WHEEL=${WHEELS[0]}
step "wheel built: $(basename "$WHEEL")"

# 3. what the wheel says it is.
case "$(basename "$WHEEL")" in
  "fastnst-$VERSION-$PYTAG-abi3-"*.whl) ;;
  *) fail "wheel $(basename "$WHEEL") is not tagged $PYTAG-abi3 (Py_LIMITED_API=$LIMITED_HEX)" ;;
esac
"$PY" - "$WHEEL" "$TMP/so" "$PYTAG" <<'EOF' || fail "wheel contents (above)"
import sys, zipfile
whl, dest, tag = sys.argv[1:]
names = zipfile.ZipFile(whl).namelist()
meta = zipfile.ZipFile(whl).read([n for n in names if n.endswith(".dist-info/METADATA")][0]).decode()
errors = []
want = f"Requires-Python: >={tag[2]}.{tag[3:]}"
if want not in meta.splitlines():
    errors.append(f"METADATA lacks {want!r} (the abi3 tag and python_requires must agree)")
sos = [n for n in names if n.endswith(".so")]
if sos != ["fastnst/_C.abi3.so"]:
    errors.append(f"expected exactly fastnst/_C.abi3.so, got {sos}")
for need in ("fastnst/_version.py", "fastnst/kernels/__init__.py"):
    if need not in names:
        errors.append(f"{need} missing")
if any(n.startswith(("kernels/", "csrc/", "tests/")) for n in names):
    errors.append("top-level kernels/, csrc/ or tests/ in the wheel")
for e in errors:
    print("  " + e, file=sys.stderr)
if not errors:
    zipfile.ZipFile(whl).extract("fastnst/_C.abi3.so", dest)
sys.exit(1 if errors else 0)
EOF
SO="$TMP/so/fastnst/_C.abi3.so"
if readelf -S "$SO" | grep -qE '\.debug_|\.symtab'; then
  fail "fastnst/_C.abi3.so in the wheel is not stripped (set FASTNST_DEBUG=1 only for debug builds)"
fi
step "wheel ok: $("$PY" -c 'import sys, zipfile; print(len(zipfile.ZipFile(sys.argv[1]).namelist()))' "$WHEEL") files, fastnst/_C.abi3.so $(du -k "$SO" | cut -f1) KiB stripped"

# 4. a fresh virtualenv with only torch (the build's own version: the wheel links against its
# ABI; the constraint keeps pip from ever resolving another torch), then the wheel and its
# other requirements from the registry.
step "fresh virtualenv: torch==$TORCH_VERSION, then the wheel"
"$PY" -m venv "$TMP/venv" || fail "python -m venv"
VPY="$TMP/venv/bin/python"
echo "torch==$TORCH_VERSION" >"$TMP/constraints.txt"
logged "$TMP/venv-torch.log" "$VPY" -m pip install -c "$TMP/constraints.txt" "torch==$TORCH_VERSION"
logged "$TMP/venv-wheel.log" "$VPY" -m pip install -c "$TMP/constraints.txt" "$WHEEL"
[ "$("$VPY" -c 'import torch; print(torch.__version__)')" = "$TORCH_VERSION" ] || fail "the venv's torch changed"

# 5. run it as a user would: from a directory outside the checkout, no PYTHONPATH.
mkdir "$TMP/run"
unset PYTHONPATH
export PYTHONNOUSERSITE=1
run_checks() {  # $1: what was installed
  cd "$TMP/run"
  step "fastnst info (from $TMP/run; installed from $1)"
  "$TMP/venv/bin/fastnst" info >info.txt 2>&1 || { cat info.txt >&2; fail "fastnst info exited non-zero"; }
  grep -q "^fastnst $VERSION\$" info.txt || { cat info.txt >&2; fail "fastnst info does not print version $VERSION"; }
  grep -qE '^extension +loaded$' info.txt || { cat info.txt >&2; fail "fastnst info: the extension is not loaded"; }
  sed 's/^/  | /' info.txt
  step "one-op smoke test (installed from $1)"
  "$VPY" - "$REPO" "$VERSION" <<'EOF' || fail "smoke test (above)"
import importlib.util, os, sys, warnings
repo, version = sys.argv[1:]
warnings.simplefilter("error", RuntimeWarning)  # a missing extension warns: make it fail
import torch
import fastnst
from fastnst import _ext
where = os.path.realpath(fastnst.__file__)
assert "site-packages" in where and not where.startswith(repo + os.sep), f"fastnst imported from {where}"
assert _ext.available(), f"fastnst._C did not load: {_ext.import_error()}"
assert fastnst.__version__ == version, (fastnst.__version__, version)
assert importlib.util.find_spec("fastnst.kernels") is not None, "fastnst.kernels is not installed"
torch.manual_seed(0)
x = torch.randn(2, 8, 5, 7)
g = fastnst.gram_matrix(x, backend="cpu")
f = x.flatten(2)
ref = torch.bmm(f, f.transpose(1, 2)) / (8 * 5 * 7)
torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)
print(f"  gram_matrix(cpu) on [2, 8, 5, 7] matches torch.bmm; fastnst {fastnst.__version__} from {where}")
EOF
  cd "$REPO"
}
run_checks "the wheel"

# 6. the sdist itself, built by pip in that virtualenv (no build isolation: against its torch).
step "pip install --no-build-isolation of the sdist into the same virtualenv"
logged "$TMP/venv-tools.log" "$VPY" -m pip install -c "$TMP/constraints.txt" "setuptools>=64" wheel ninja
logged "$TMP/venv-uninstall.log" "$VPY" -m pip uninstall -y fastnst
logged "$TMP/venv-sdist.log" env MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$VPY" -m pip install -c "$TMP/constraints.txt" \
  --no-build-isolation "$SDIST"
[ "$("$VPY" -c 'import torch; print(torch.__version__)')" = "$TORCH_VERSION" ] || fail "the venv's torch changed"
run_checks "the sdist"
step "OK: sdist, wheel $(basename "$WHEEL"), clean installs from both and smoke tests passed in $((SECONDS - T0))s"
