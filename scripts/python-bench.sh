#!/usr/bin/env bash
# The report's Python rows (.work/bench/python.md): the release wheel, stripped of
# symbols as one to publish, in its own venv with only PyPI packages, against the release
# CLI on the same queries (python/benches/overhead.py). The CLI is built with the wheel's
# crate beside it so both share one set of compiled dependencies (the same features).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
scripts/setup.sh
TARGET=${CARGO_TARGET_DIR:-target}
rm -rf .work/bench/wheel "$TARGET/maturin"
.work/maturin/bin/maturin build --quiet --release --strip -m python/Cargo.toml --auditwheel repair --out .work/bench/wheel
cargo build --release -p datafusion-faiss-cli -p datafusion-faiss-python
wheel=$(ls .work/bench/wheel/*.whl)
VENV=.work/bench/python
rm -rf "$VENV"
/usr/bin/python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "$wheel" "datafusion==55.0.0" "pyarrow==26.0.1" numpy "faiss-cpu==1.15.1"
mkdir -p .work/bench
"$VENV/bin/python" python/benches/overhead.py "$TARGET/release/datafusion-faiss" "$wheel" .work/bench
