#!/usr/bin/env bash
# The main job on local files: index Fashion-MNIST into .work/demo and search it
# header-only, next to FAISS's own in-memory search and exact search.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
scripts/setup.sh
cargo run --release --quiet -p datafusion-faiss-cli -- demo "$@"
