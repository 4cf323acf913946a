#!/usr/bin/env bash
# The GPU check for a GPU machine without network access: four steps, each with its own time budget and each
# leaving what it measured in the output folder even when stopped early (line-buffered logs, the profile
# rewritten after every figure).
#
# 1. Here, on a machine with network access, from the repo root, once:
#      python bench/gpu_wheels.py && bash bench/gpu_check.sh prep
#    fills .whl (53 MiB: diffusers, gsplat, Ray, ...), .whl-train (51 MiB: Ray, gsplat, DeepSpeed, lpips, ...)
#    and .gpu-shards (smoke shards made here with the tiny models).
# 2. Copy the repository with those three folders to the GPU machine (torch with CUDA installed there).
# 3. Run the steps there from the repo root, each under the given wall-clock limit; results land in the
#    folder given as the second argument (default: gpu-check-out/):
#   profile, limit 540 s: bash bench/gpu_check.sh profile OUT_DIR
#       gsplat JIT-built in the background while the random: models are built; every stage and the Era3D
#       UNet (eager and compiled) profiled; GPU tests; cost plan. Budget: install 60 + bench 330 + tests 90
#       + plan 20 = 500 s.
#   e2e, limit 420 s: bash bench/gpu_check.sh e2e OUT_DIR
#       the Ray job end to end on E2E_N objects (default 16), added to the profile step's profile.json (found in
#       OUT_DIR, or in .gpu-out/ when the output folder is a fresh one). Budget: install 60 + job 330 = 390 s.
#   train, limit 420 s: bash bench/gpu_check.sh train OUT_DIR
#       bare forward+backward vs the Ray Train + DeepSpeed ZeRO-2 step, LGM-big random weights, bf16, 40 steps,
#       NaN check; lambda_lpips 0. Budget: install 60 + bench 330 = 390 s.
#   openlrm, limit 240 s: bash bench/gpu_check.sh openlrm OUT_DIR
#       OpenLRM-base (random weights, bf16): 336² input -> triplanes, 4 views of 288² at 96 samples per ray:
#       rays/s and objects/s (bench/bench_openlrm.py). Budget: install 60 + bench 150 = 210 s.
# 4. Copy OUT_DIR back: profile.json, train.json, openlrm.json, the logs and check.log (one line per step).
#
# CPU dry run of the same steps (tiny models; the budgets hold): GPU_CHECK_CPU=1 bash bench/gpu_check.sh <step>
set -uo pipefail
call=${1:-}
OUT_DIR=${2:-gpu-check-out}
mkdir -p "$OUT_DIR"
CPU=${GPU_CHECK_CPU:-0}
E2E_N=${E2E_N:-16}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled MVBOOST_CACHE=${MVBOOST_CACHE:-/tmp/mvboost-cache}
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=12 PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
log() { tee -a "$OUT_DIR/$1"; }  # tee writes each line as it comes; the python commands are unbuffered
install() {  # the wheels built in step 1 (not on a CPU dry run: the packages are installed here)
  [ "$CPU" = 1 ] && return 0
  timeout 60 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$1"/*.whl \
    || { echo "wheel install failed" | log check.log; exit 1; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | log device.txt
}
if [ "$CPU" = 1 ]; then TINY=(--tiny --device cpu --peak-tflops 1.0); else TINY=(); fi
start=$(date +%s)
case "$call" in
prep)
  python -m ray_jobs.generate --config ray_jobs/configs/generate_smoke.yaml --in-process --output "$PWD/.gpu-shards" \
    --n 8 --set job.shard_size=4 --set job.progress=false
  ;;
profile)
  install .whl
  if [ "$CPU" != 1 ]; then  # JIT-compile gsplat in the background while bench_gpu builds the models
    timeout 240 python3 -c "
import time, torch; t = time.time(); from gsplat import rasterization
m = torch.zeros(1, 3, device='cuda'); q = torch.tensor([[1.0, 0, 0, 0]], device='cuda')
rasterization(m, q, torch.full((1, 3), 0.1, device='cuda'), torch.ones(1, device='cuda'), torch.ones(1, 3, device='cuda'),
              torch.eye(4, device='cuda')[None], torch.tensor([[[64.0, 0, 32], [0, 64, 32], [0, 0, 1]]], device='cuda'), 64, 64)
print(f'gsplat ready in {time.time() - t:.1f} s')" > "$OUT_DIR/gsplat_build.log" 2>&1 &
  fi
  timeout 330 python3 bench/bench_gpu.py "${TINY[@]}" --skip-e2e --objects 8 --unet-objects 2 --out "$OUT_DIR/profile.json" 2>&1 \
    | grep --line-buffered -v "Loading\|Writing model" | log bench_gpu.log
  wait
  if [ "$CPU" != 1 ]; then
    timeout 90 python3 -m pytest -m gpu -q -p no:cacheprovider -s tests/core/test_render.py 2>&1 | log pytest_gpu.log
  fi
  timeout 20 python3 -m ray_jobs.cost_plan --config ray_jobs/configs/generate.yaml --n 100000 \
    --profile "$OUT_DIR/profile.json" --gpu-hour-usd 2.5 2>&1 | log plan.txt
  ;;
e2e)
  install .whl
  [ -f "$OUT_DIR/profile.json" ] || { [ -f .gpu-out/profile.json ] && cp .gpu-out/profile.json "$OUT_DIR/profile.json"; }
  extra=()
  [ "$CPU" = 1 ] && extra=(--set ray.num_gpus=1 --set ray.num_cpus=6)  # declared, not real: the layout schedules; torch stays on the CPU
  timeout 330 python3 bench/bench_gpu.py "${TINY[@]}" "${extra[@]}" --e2e-only --e2e-n "$E2E_N" --out "$OUT_DIR/profile.json" 2>&1 \
    | grep --line-buffered -v "Loading\|Writing model" | log bench_e2e.log
  ;;
train)
  install .whl-train
  [ -d .gpu-shards ] || { echo "no .gpu-shards: run 'bash bench/gpu_check.sh prep' here first" | log check.log; exit 2; }
  if [ "$CPU" = 1 ]; then args=(--model tiny:lgm --device cpu); else args=(--model random:lgm --device cuda --precision bf16); fi
  timeout 330 python3 bench/bench_train.py --ray "${args[@]}" --lambda-lpips 0 --steps 40 --shards "$PWD/.gpu-shards" \
    --out "$OUT_DIR/train.json" 2>&1 | grep --line-buffered -v "Loading\|Writing model\|Reporting training result\|PlacementGroupCleaner" \
    | log bench_train.log
  ;;
openlrm)
  install .whl
  if [ "$CPU" = 1 ]; then args=(--preset tiny --size 56 --render 32 --samples 16); else args=(--preset base --device cuda --dtype bf16 --size 336 --render 288 --samples 96 --repeat 3); fi
  timeout 150 python3 bench/bench_openlrm.py "${args[@]}" --out "$OUT_DIR/openlrm.json" 2>&1 | log bench_openlrm.log
  ;;
*)
  echo "usage: bash bench/gpu_check.sh prep|profile|e2e|train|openlrm [OUT_DIR] (GPU_CHECK_CPU=1 for a CPU dry run)" >&2
  exit 2
  ;;
esac
rc=$?
echo "$call: $(( $(date +%s) - start )) s, exit $rc" | log check.log
exit $rc
