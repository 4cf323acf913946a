#!/usr/bin/env bash
# The GPU check as four device calls, each well inside the 600 s one call may run and each with its own
# budget; every call leaves what it measured under $OUT even when stopped early (line-buffered logs, the
# profile rewritten after every figure). From the repo root:
#
#   here, once:  python bench/gpu_wheels.py && bash bench/gpu_check.sh prep
#                (.whl 53 MiB, .whl-train 51 MiB, .gpu-shards: smoke shards made here with the tiny models)
#   (a) device run, carry [".whl"], timeout_s 540:                      bash bench/gpu_check.sh profile
#       gsplat JIT-built in the background while the random: models are built; every stage and the Era3D
#       UNet (eager and compiled) profiled; GPU tests; cost plan. Budget: install 60 + bench 330 + tests 90
#       + plan 20 = 500 s.
#   (b) device run, carry [".whl", ".gpu-out"], timeout_s 420:          bash bench/gpu_check.sh e2e
#       the Ray job end to end on E2E_N objects (default 16), added to (a)'s profile (copy (a)'s files to
#       .gpu-out/ first); reuses (a)'s model and gsplat caches if the machine is still warm. Budget: install 60 + job 330 = 390 s.
#   (c) device run, carry [".whl-train", ".gpu-shards"], timeout_s 420: bash bench/gpu_check.sh train
#       bare forward+backward vs the Ray Train + DeepSpeed ZeRO-2 step, LGM-big random weights, bf16, 40 steps,
#       NaN check; lambda_lpips 0 (LPIPS-VGG weights, 57 MB, do not fit beside Ray in a call). Budget: 60 + 330 = 390 s.
#   (d) device run, carry [".whl"], timeout_s 240:                      bash bench/gpu_check.sh openlrm
#       OpenLRM-base (random weights, bf16): 336² input -> triplanes, 4 views of 288² at 96 samples per ray:
#       rays/s and objects/s (bench/bench_openlrm.py). Budget: install 60 + bench 150 = 210 s.
#
# CPU dry run of the same calls (tiny models; the budgets hold): GPU_CHECK_CPU=1 bash bench/gpu_check.sh <call>
set -uo pipefail
call=${1:-}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
CPU=${GPU_CHECK_CPU:-0}
E2E_N=${E2E_N:-16}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled MVBOOST_CACHE=${MVBOOST_CACHE:-/tmp/mvboost-cache}
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=12 PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
log() { tee -a "$OUT/$1"; }  # tee writes each line as it comes; the python commands are unbuffered
install() {  # the carried wheels (not on a CPU dry run: the packages are installed here)
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
print(f'gsplat ready in {time.time() - t:.1f} s')" > "$OUT/gsplat_build.log" 2>&1 &
  fi
  timeout 330 python3 bench/bench_gpu.py "${TINY[@]}" --skip-e2e --objects 8 --unet-objects 2 --out "$OUT/profile.json" 2>&1 \
    | grep --line-buffered -v "Loading\|Writing model" | log bench_gpu.log
  wait
  if [ "$CPU" != 1 ]; then
    timeout 90 python3 -m pytest -m gpu -q -p no:cacheprovider -s tests/test_render.py 2>&1 | log pytest_gpu.log
  fi
  timeout 20 python3 -m ray_jobs.cost_plan --config ray_jobs/configs/generate.yaml --n 100000 \
    --profile "$OUT/profile.json" --gpu-hour-usd 2.5 2>&1 | log plan.txt
  ;;
e2e)
  install .whl
  [ -f .gpu-out/profile.json ] && cp .gpu-out/profile.json "$OUT/profile.json"
  extra=()
  [ "$CPU" = 1 ] && extra=(--set ray.num_gpus=1 --set ray.num_cpus=6)  # declared, not real: the layout schedules; torch stays on the CPU
  timeout 330 python3 bench/bench_gpu.py "${TINY[@]}" "${extra[@]}" --e2e-only --e2e-n "$E2E_N" --out "$OUT/profile.json" 2>&1 \
    | grep --line-buffered -v "Loading\|Writing model" | log bench_e2e.log
  ;;
train)
  install .whl-train
  [ -d .gpu-shards ] || { echo "no .gpu-shards: run 'bash bench/gpu_check.sh prep' here first" | log check.log; exit 2; }
  if [ "$CPU" = 1 ]; then args=(--model tiny:lgm --device cpu); else args=(--model random:lgm --device cuda --precision bf16); fi
  timeout 330 python3 bench/bench_train.py --ray "${args[@]}" --lambda-lpips 0 --steps 40 --shards "$PWD/.gpu-shards" \
    --out "$OUT/train.json" 2>&1 | grep --line-buffered -v "Loading\|Writing model\|Reporting training result\|PlacementGroupCleaner" \
    | log bench_train.log
  ;;
openlrm)
  install .whl
  if [ "$CPU" = 1 ]; then args=(--preset tiny --size 56 --render 32 --samples 16); else args=(--preset base --device cuda --dtype bf16 --size 336 --render 288 --samples 96 --repeat 3); fi
  timeout 150 python3 bench/bench_openlrm.py "${args[@]}" --out "$OUT/openlrm.json" 2>&1 | log bench_openlrm.log
  ;;
*)
  echo "usage: bash bench/gpu_check.sh prep|profile|e2e|train|openlrm (GPU_CHECK_CPU=1 for a CPU dry run)" >&2
  exit 2
  ;;
esac
rc=$?
echo "$call: $(( $(date +%s) - start )) s, exit $rc" | log check.log
exit $rc
