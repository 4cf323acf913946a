#!/usr/bin/env bash
# The GPU checks of issue 10 as ONE command on a lent GPU machine (H100/H200), from the repo root,
# with the wheels of `python bench/gpu_wheels.py` carried in .whl:
#   device run: carry [".whl"], timeout_s 600, command: bash bench/gpu_check.sh
# Writes to $OUT: pytest_gpu.log, bench_gpu.log, profile.json, plan.txt. Budget (H100, estimated):
# gsplat JIT build ~90 s, random full-size models built on the GPU ~90 s, stage benchmarks with the
# compiled UNet ~3 min, the Ray job end to end on E2E_N objects ~4 min. E2E_N=0 skips the Ray run.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
E2E_N=${E2E_N:-24}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=12 MVBOOST_CACHE=/tmp/mvboost-cache PATH=/tmp/site/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 - <<'PY' 2>&1 | tee "$OUT/gsplat_build.log"   # JIT-compile gsplat once (~90 s)
import time, torch
t = time.time()
from gsplat import rasterization
m = torch.zeros(1, 3, device="cuda"); q = torch.tensor([[1.0, 0, 0, 0]], device="cuda")
rasterization(m, q, torch.full((1, 3), 0.1, device="cuda"), torch.ones(1, device="cuda"), torch.ones(1, 3, device="cuda"),
              torch.eye(4, device="cuda")[None], torch.tensor([[[64.0, 0, 32], [0, 64, 32], [0, 0, 1]]], device="cuda"), 64, 64)
print(f"gsplat ready in {time.time() - t:.1f} s")
PY
timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider -s tests/test_render.py 2>&1 | tee "$OUT/pytest_gpu.log"
args=(--out "$OUT/profile.json" --objects 8 --unet-objects 2)
if [ "$E2E_N" -gt 0 ]; then args+=(--e2e-n "$E2E_N"); else args+=(--skip-e2e); fi
timeout 480 python3 bench/bench_gpu.py "${args[@]}" 2>&1 | grep -v "Loading\|Writing model" | tee "$OUT/bench_gpu.log"
python3 -m ray_jobs.cost_plan --config ray_jobs/configs/generate.yaml --n 100000 --profile "$OUT/profile.json" \
    --gpu-hour-usd 2.5 2>&1 | tee "$OUT/plan.txt"
