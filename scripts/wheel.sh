#!/usr/bin/env bash
# Builds the wheel (maturin, the shared libraries it needs bundled) into OUT with the
# given maturin flags, and installs it into a new venv VENV with only PyPI packages: the
# datafusion it was built for, pyarrow, numpy and pip's faiss-cpu.
# usage: scripts/wheel.sh OUT VENV [MATURIN FLAGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1 venv=$2
shift 2
# maturin repairs the module in target/maturin in place; a second run over a module
# cargo did not rebuild would find it repaired already, its libraries renamed, and fail.
rm -rf "$out" "${CARGO_TARGET_DIR:-target}/maturin"
.work/maturin/bin/maturin build --quiet -m python/Cargo.toml --auditwheel repair --out "$out" "$@"
wheel=$(ls "$out"/*.whl)
echo "python: built $(basename "$wheel") ($(du -h "$wheel" | cut -f1))"
rm -rf "$venv"
/usr/bin/python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "$wheel" "datafusion==55.0.0" "pyarrow==26.0.1" numpy "faiss-cpu==1.15.1"
