#!/usr/bin/env bash
# The benchmark report: installs what is missing, starts the SeaweedFS S3 server on
# 127.0.0.1, measures, and writes .work/bench/report.{md,json,png} (the shard rows, made by
# the Ballista crate's bench, the changing-table rows, by the CLI's, and the Python rows, by
# scripts/python-bench.sh, appended to report.md). Data, indexes and exact neighbours are
# made on the first run and kept in .work/bench.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
scripts/setup.sh
# DFF_REPORT=python: only the Python rows (release wheel against the release CLI).
if [ "${DFF_REPORT:-}" = python ]; then
  exec scripts/python-bench.sh
fi
scripts/s3.sh start
trap 'scripts/s3.sh stop' EXIT
# DFF_REPORT=shards: only the shard rows (ballista/benches/shards.rs) and the rows of
# tables that change (cli/benches/changes.rs).
if [ "${DFF_REPORT:-}" != shards ]; then
  cargo bench -p datafusion-faiss --bench report "$@"
fi
# DFF_REPORT=filtered (cold): the filtered-search (cold-start) rows alone (.work/bench/filtered.md, cold.md).
case "${DFF_REPORT:-}" in filtered|cold) exit 0 ;; esac
cargo bench -p datafusion-faiss-ballista --bench shards "$@"
cat .work/bench/shards.md >> .work/bench/report.md
cargo bench -p datafusion-faiss-cli --bench changes "$@"
cat .work/bench/changes.md >> .work/bench/report.md
if [ -z "${DFF_REPORT:-}" ]; then
  scripts/python-bench.sh
  cat .work/bench/python.md >> .work/bench/report.md
fi
