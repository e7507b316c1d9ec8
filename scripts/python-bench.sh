#!/usr/bin/env bash
# The report's Python rows (.work/bench/python.md): the release wheel, stripped of
# symbols as one to publish, in its own venv with only PyPI packages, against the release
# CLI on the same queries (python/benches/overhead.py). The CLI is built with the wheel's
# crate beside it so both share one set of compiled dependencies (the same features).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
scripts/setup.sh
VENV=.work/bench/python
scripts/wheel.sh .work/bench/wheel "$VENV" --release --strip
cargo build --release -p datafusion-faiss-cli -p datafusion-faiss-python
mkdir -p .work/bench
"$VENV/bin/python" python/benches/overhead.py "${CARGO_TARGET_DIR:-target}/release/datafusion-faiss" .work/bench/wheel/*.whl .work/bench
