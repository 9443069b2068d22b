#!/usr/bin/env bash
# The GPU check (issue 16): the CUDA tests, then a short bench of features against training
# steps on a larger random-weight model. Needs torch with CUDA, transformers, peft, accelerate;
# no internet, no Hub, no SmolLM2 (built-in tiny and random-weight models only); without
# bitsandbytes the 4-bit test skips. About 5 minutes on one GPU.
#   bash scripts/gpu_check.sh            # writes bench/results/gpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
export GROUPTUNE_PROGRESS=0 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
$PY -m pytest -q -p no:randomly -m gpu tests/test_gpu.py
$PY bench/gpu.py
