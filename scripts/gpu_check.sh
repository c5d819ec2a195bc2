#!/usr/bin/env bash
# The CUDA paths in one short run (about 10 minutes on one GPU), ending in a one-screen summary:
#   1. the test suite's CUDA tests (pytest -m cuda: fp16 GradScaler and bf16 training, GPU vs CPU inference,
#      SyncBatchNorm under a one-process nccl group)
#   2. the camvid recipe for 90 s each in fp16 and bf16 (needs CAMVID=DIR; the demo recipe's scenes otherwise)
#   3. a one-process torchrun (nccl) training run, then evaluate
#   4. benchmarks/max_batch.py --device cuda
#   5. export of the GPU-trained checkpoint (ONNX, verified)
# Usage: scripts/gpu_check.sh [OUT_DIR]   (default: gpu-check/; the summary is also written to OUT_DIR/summary.txt)
# Without a CUDA device it says so and exits 0, having run nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
PY=${PYTHON:-python}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to torch: nothing to check on this machine (run it where a GPU is)"
  exit 0
fi
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")' | tee "$SUMMARY"
FAILED=0

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to OUT/NAME.log, one summary line
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local verdict=ok; [ $rc -ne 0 ] && { verdict="FAILED (rc $rc, see $OUT/$name.log)"; FAILED=1; }
  printf '%-14s %4ds  %s  %s\n' "$name" $((SECONDS - t0)) "$verdict" "$(tail -n 1 "$OUT/$name.log" | cut -c1-100)" \
    | tee -a "$SUMMARY"
}

DATA=(--recipe demo)
[ -n "${CAMVID:-}" ] && DATA=(--recipe camvid --root "$CAMVID")
step pytest-cuda 240 "$PY" -m pytest -m cuda -q -p no:cacheprovider tests/test_cuda.py
step train-fp16 150 "$PY" -m fcnseg train "${DATA[@]}" --device cuda --amp fp16 --time-budget 90s --out "$OUT/fp16"
step train-bf16 150 "$PY" -m fcnseg train "${DATA[@]}" --device cuda --amp bf16 --time-budget 90s --out "$OUT/bf16"
step torchrun-nccl 180 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m fcnseg train --recipe demo \
  --device cuda --max-iters 60 --out "$OUT/ddp"
step evaluate 120 "$PY" -m fcnseg evaluate "$OUT/ddp/last.pt" --device cuda --out "$OUT/ddp-eval"
step max-batch 300 "$PY" benchmarks/max_batch.py --device cuda --configs plain,ckpt
step export 180 "$PY" -m fcnseg export "$OUT/ddp/last.pt" --out "$OUT/ddp.onnx"
[ $FAILED -eq 0 ] && echo "gpu_check: all steps passed" | tee -a "$SUMMARY" || echo "gpu_check: some steps FAILED" | tee -a "$SUMMARY"
exit $FAILED
