#!/usr/bin/env bash
# One-call GPU check (device tool): uses the machine's own torch + triton, downloads nothing.
# Needs torch, triton and safetensors there (listed in the device KINDS.md). Makes the package
# importable without building the C++ extension (the GPU path does not use
# it): a copy with kernels/ placed as spatialseg_fast/kernels, as the wheel lays it out.
#   run: bash bench/gpu_check.sh     (sized to finish in well under 10 minutes; not yet run)
set -euo pipefail
cd "$(dirname "$0")/.."
site=$(mktemp -d)
cp -r spatialseg_fast "$site/spatialseg_fast"
rm -rf "$site/spatialseg_fast/kernels" && cp -r kernels "$site/spatialseg_fast/kernels"
export PYTHONPATH="$site" PYTHONUNBUFFERED=1 SPATIALSEG_DISABLE_EXT=1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
python3 bench/gpu_check.py 2>&1 | tee "${OUT:-/tmp}/gpu_check.log"
# the CUDA training tests (skipped on CPUs), where the machine has pytest
if python3 -c "import pytest" 2>/dev/null; then
    python3 -m pytest -q -p no:cacheprovider tests/test_training.py -k "gpu or device" 2>&1 | tee -a "${OUT:-/tmp}/gpu_check.log"
fi
