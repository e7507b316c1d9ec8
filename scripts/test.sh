#!/usr/bin/env bash
# Runs every test: installs what is missing, starts the SeaweedFS S3 server on
# 127.0.0.1 for the S3 tests, runs the Rust tests, then the Python ones against the wheel
# (scripts/python.sh), and stops the server again whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
scripts/setup.sh
scripts/s3.sh start
trap 'scripts/s3.sh stop' EXIT
cargo test --workspace --all-targets "$@"
scripts/python.sh
