#!/usr/bin/env bash
# The rehearsal on a GPU: the clotho profile's path on CUDA, then step times in fp32 and mixed precision, peak GPU
# memory at batch 32 x 30 s, the torch log-mel throughput and the whole Clotho run extrapolated (about 3-5 minutes
# on one recent GPU). Run from anywhere, on a machine with a CUDA GPU, torch, h5py and sentence-transformers:
#
#   bash benchmarks/rehearsal_gpu.sh [OUT.json]        (default: benchmarks/results/rehearsal_gpu.json)
#
# A machine without librosa, soundfile or py7zr: first run scripts/download_gpu_wheels.sh where PyPI is reachable
# and bring the .whl/ folder it fills along; this script installs those wheels into /tmp/rehearsal-site.
# Without a CUDA GPU it stops at once with exit code 3 (the CPU rehearsal is `make rehearsal`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT_JSON=${1:-benchmarks/results/rehearsal_gpu.json}

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "rehearsal_gpu.sh: no CUDA GPU is visible to $PYTHON (or torch is missing). Run it on a GPU machine;" \
         "on this one, 'make rehearsal' runs the CPU rehearsal." >&2
    exit 3
fi
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/rehearsal-site .whl/*.whl
    export PYTHONPATH=/tmp/rehearsal-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
missing=$("$PYTHON" - <<'EOF'
import importlib.util
print(" ".join(name for name in ("librosa", "soundfile", "soxr", "py7zr", "pooch", "h5py", "sentence_transformers", "psutil")
               if importlib.util.find_spec(name) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "rehearsal_gpu.sh: missing Python packages: $missing. Run scripts/download_gpu_wheels.sh on a machine with PyPI" \
         "access and bring its .whl/ folder into this repository, or pip install them." >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
PYTHONUNBUFFERED=1 exec "$PYTHON" benchmarks/rehearsal.py --device cuda --out "$OUT_JSON"
