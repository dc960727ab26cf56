#!/usr/bin/env bash
# Everything the GPU box is used for, in one device-tool call (see README, "GPU box"):
# install the carried wheels, check correctness on CUDA, benchmark zoo throughput,
# train the GPU zoo with Kedro. Results land in $OUT (default: benchmarks/results).
# Usage there: bash benchmarks/gpu_session.sh     (with .whl carried; see fetch-wheels.sh)
# Switches: CHECKS=0 skips checks + throughput, SKIP_KEDRO=1 skips the GPU zoo,
# D2NWG=1 / FUSION=1 / DISTILL=1 / WF=1 / SW=1 add those pipelines' target runs (--env gpu);
# SCALEOUT=1 the torchrun scale-out benchmark and checks (benchmarks/scaleout.py).
# The box has no .git: pass WEIGHTSPACE_COMMIT=<sha of a clean checkout> so the result
# files name the code they came from (benchmarks/pipeline_targets.py: code_version).
set -euo pipefail
OUT=${OUT:-benchmarks/results}
DATA=data/gpu  # where --env gpu writes (conf/gpu/globals.yml)
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD/src:/tmp/site KEDRO_DISABLE_TELEMETRY=1 DVC_NO_ANALYTICS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
if [ "${CHECKS:-1}" = 1 ]; then
  python3 benchmarks/gpu_checks.py --out "$OUT/gpu_checks.json"
  python3 benchmarks/zoo_throughput.py --device cuda --n-batched 16384 --n-loop 5 \
    --out "$OUT/zoo_throughput_cuda_16k.json"
  python3 benchmarks/zoo_throughput.py --device cuda --n-batched 65536 --n-loop 2 \
    --out "$OUT/zoo_throughput_cuda_64k.json"
fi
if [ "${SKIP_KEDRO:-0}" != 1 ]; then
  time python3 -m kedro run --env gpu --pipelines=zoo 2>&1 | grep -vE "step/s\]|^\s+$" | tail -40
  cp "$DATA"/08_reporting/zoo/metrics.json "$OUT/gpu_zoo_metrics.json"
  cp "$DATA"/08_reporting/zoo/accuracy.png "$OUT/gpu_zoo_accuracy.png"
fi
if [ "${SCALEOUT:-0}" = 1 ]; then
  # issue 15: N processes vs 1 (one per GPU, NCCL), the plain-process baseline, the
  # multi-process CUDA code checked on 2 ranks (gloo; they share the GPU on a 1-GPU box),
  # the too-many-processes error, and the Kedro runner under torchrun on the GPU
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  NGPU=$(python3 -c "import torch; print(torch.cuda.device_count())")
  NPROCS=1; for n in 2 4 8; do if [ "$NGPU" -ge $n ]; then NPROCS="$NPROCS $n"; fi; done
  time python3 benchmarks/scaleout.py --nprocs $NPROCS --plain --device cuda \
    --members "${SCALEOUT_MEMBERS:-32768}" --epochs 20 --steps 1000 --tag "gpu${TAG:-}"
  cp benchmarks/results/scaleout_gpu* "$OUT/"
  WEIGHTSPACE_DIST_BACKEND=gloo timeout 300 python3 -m torch.distributed.run --standalone \
    --nproc_per_node=2 benchmarks/gpu_distributed_checks.py \
    --out "$OUT/gpu_distributed_checks${TAG:-}.json" 2>&1 | tail -30 || true
  timeout 120 python3 -m torch.distributed.run --standalone --nproc_per_node=$((NGPU + 1)) \
    benchmarks/scaleout_worker.py zoo --out /tmp/none.json --members 8 --epochs 1 2>&1 \
    | grep -m1 -o "DistributedSetupError: .*" > "$OUT/too_many_processes${TAG:-}.txt" || true
  cat "$OUT/too_many_processes${TAG:-}.txt"
  rm -rf data/test
  time WEIGHTSPACE_DIST_BACKEND=gloo timeout 400 python3 -m torch.distributed.run \
    --standalone --nproc_per_node=2 -m weightspace_kedro run --env test --pipelines d2nwg \
    --params device=cuda > "$OUT/torchrun_d2nwg_test${TAG:-}.log" 2>&1 || true
  grep -E "rank [01] of 2|Pipeline execution|Error" "$OUT/torchrun_d2nwg_test${TAG:-}.log" \
    | cut -c1-160 | head -30
  cp data/test/08_reporting/d2nwg/metrics.json "$OUT/torchrun_d2nwg_test_metrics${TAG:-}.json" \
    2>/dev/null || true
fi
if [ "${D2NWG:-0}" = 1 ]; then
  # one seed per call by default (D2NWG_SEEDS); each seed's wall time is in the result file
  time timeout "${D2NWG_LIMIT:-3000}" python3 benchmarks/d2nwg_targets.py --env gpu \
    --tag "${TAG:-}" --seeds ${D2NWG_SEEDS:-0} > "$OUT/d2nwg_gpu${TAG:-}.log" 2>&1 || true
  grep -vE "step/s\]|it/s\]|^\s+$" "$OUT/d2nwg_gpu${TAG:-}.log" | tail -60
  cp -r benchmarks/results/d2nwg_gpu* "$OUT/" 2>/dev/null || true
  for f in accuracy_hist finetune_curves latents baselines; do
    cp "$DATA/08_reporting/d2nwg/$f.png" "$OUT/d2nwg_gpu${TAG:-}_$f.png" 2>/dev/null || true
  done
fi
if [ "${FUSION:-0}" = 1 ]; then
  time python3 benchmarks/fusion_targets.py --env gpu --tag "${TAG:-}" 2>&1 \
    | grep -vE "step/s\]|^\s+$" | tail -40
  cp benchmarks/results/fusion_gpu* "$OUT/" 2>/dev/null || true
fi
if [ "${DISTILL:-0}" = 1 ]; then
  time python3 benchmarks/distill_targets.py --env gpu --tag "${TAG:-}" 2>&1 \
    | grep -vE "step/s\]|it/s\]|^\s+$" | tail -40
  cp benchmarks/results/distill_gpu* "$OUT/" 2>/dev/null || true
fi
if [ "${WF:-0}" = 1 ]; then
  # the log goes to $OUT as it is written, so a run cut short still shows where it was
  time python3 benchmarks/weightformer_targets.py --env gpu --tag "${TAG:-}" \
    > "$OUT/weightformer_gpu${TAG:-}.log" 2>&1 || true
  grep -vE "step/s\]|it/s\]|^\s+$" "$OUT/weightformer_gpu${TAG:-}.log" | tail -40
  cp benchmarks/results/weightformer_gpu* "$OUT/" 2>/dev/null || true
fi
if [ "${SW:-0}" = 1 ]; then
  # finished runs are journaled in data/; a call cut short by SW_LIMIT resumes on the next
  # call while the machine is warm
  time timeout "${SW_LIMIT:-3000}" python3 benchmarks/superweights_targets.py --env gpu \
    --tag "${TAG:-}" > "$OUT/superweights_gpu${TAG:-}.log" 2>&1 || true
  ls "$DATA"/07_model_output/superweights/runs/* 2>/dev/null | wc -l
  grep -vE "step/s\]|it/s\]|^\s+$" "$OUT/superweights_gpu${TAG:-}.log" | tail -40
  cp benchmarks/results/superweights_gpu* "$OUT/" 2>/dev/null || true
fi
