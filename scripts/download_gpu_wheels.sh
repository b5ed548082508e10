#!/usr/bin/env bash
# Download, on a machine with PyPI access, the wheels benchmarks/rehearsal_gpu.sh installs on a GPU machine
# that has torch, h5py, numpy, pandas, sentence-transformers and numba but not the course's audio and archive
# packages (librosa, soundfile, soxr, py7zr and their small dependencies). Versions come from constraints.txt;
# the wheels are for CPython 3.12 on x86-64 Linux (override with PYTHON_VERSION=3.11 etc.).
#
#   scripts/download_gpu_wheels.sh [.whl]      # then carry the folder to the GPU machine beside the repository
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
PACKAGES="librosa audioread decorator soxr soundfile cffi pycparser pooch platformdirs
          py7zr texttable pycryptodomex backports.zstd pyppmd pybcj multivolumefile inflate64 brotli"
mkdir -p "$DEST"
for name in $PACKAGES; do
    pin=$(grep -i "^${name//./[.-]}==" constraints.txt | head -1)
    if [ -z "$pin" ]; then
        echo "constraints.txt has no version of $name" >&2
        exit 1
    fi
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$DEST" "$pin"
done
du -sh "$DEST"
ls "$DEST"
