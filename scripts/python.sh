#!/usr/bin/env bash
# The Python tests, as a user gets the package: builds the wheel (maturin, the shared
# libraries it needs bundled), installs it into a new venv with only PyPI packages, runs
# python/tests (S3 on the server scripts/s3.sh started) and the README's Python quick
# start from the repository root. scripts/test.sh runs it after the Rust tests, whose
# build it reuses (same features, same profile as their dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

VENV=.work/python-test
scripts/wheel.sh .work/wheels "$VENV" --profile "${DFF_WHEEL_PROFILE:-dev}"
"$VENV/bin/pip" install -q --disable-pip-version-check pytest
"$VENV/bin/python" -m pytest -q python/tests

# The README's first python block, as a reader would paste it.
awk '/^```python$/ {on = 1; next} on && /^```$/ {exit} on' README.md > .work/quickstart.py
[ -s .work/quickstart.py ] || { echo "python: README has no python block" >&2; exit 1; }
"$VENV/bin/python" .work/quickstart.py
