#!/usr/bin/env bash
# The GPU benchmark and the CUDA checks (issue 18 item 7), for a machine with one CUDA GPU; about 8 minutes.
#
#   bash bench/gpu.sh [extra bench_gpu.py flags]     # e.g. --models cnn_default,upernet_convnext
#
# 1. bench/bench_gpu.py: train img/s (bf16 autocast, channels-last, torch.compile off and on), loader img/s,
#    TTA-batched inference img/s and peak GPU memory of cnn_default and UPerNet on ConvNeXt / Swin / BEiT at
#    512x512; the table (machine, date, commit in its first line) goes to bench/gpu_results.md, to be pasted into
#    bench/RESULTS.md.
# 2. pytest -m gpu: the CUDA-only tests, among them tests/e2e/test_cuda.py (one training epoch, the OOF step and
#    inference on the GPU against the CPU, within bf16 tolerance).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu.sh: no CUDA device here (torch.cuda.is_available() is False)")'
"$PY" bench/bench_gpu.py --out bench/gpu_results.md "$@"
"$PY" -m pytest -m gpu -q -p no:cacheprovider tests
