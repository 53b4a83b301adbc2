#!/usr/bin/env bash
# Install fastnst on a fresh machine: torch (on this project's CPU machines the 2.13.0 CPU
# wheel that lies on disk), the build tools, and fastnst itself with its test extras.
# --no-build-isolation: pip must build against the torch installed here, never fetch another.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0"
python -m pip install -q ninja "setuptools>=64" wheel
python -m pip install -q --no-build-isolation -e ".[test]"
python -c "import fastnst, sys; from fastnst import _ext; sys.exit(0 if _ext.available() else 'fastnst._C failed to build')"
