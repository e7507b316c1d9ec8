#!/usr/bin/env bash
# The benchmark report: installs what is missing, starts the SeaweedFS S3 server on
# 127.0.0.1, measures, and writes .work/bench/report.{md,json,png}. Data, indexes and
# exact neighbours are made on the first run and kept in .work/bench.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
scripts/setup.sh
scripts/s3.sh start
trap 'scripts/s3.sh stop' EXIT
cargo bench --bench report "$@"
