#!/usr/bin/env bash
# The README's GPU figures, in one go on a CUDA machine (about 6 minutes on one H200):
#   bash benchmarks/cuda_figures.sh [OUT_DIR]
# 1. training samples/s of the spec's model (768/4/12, batch 48, 16-96 frames) without / with --bucket,
#    in float32, --amp bf16, and --amp bf16 --compile (benchmarks/train_step.py);
# 2. `vidcls train` end to end on CUDA with --amp bf16 --bucket, then with --amp fp16 (gradient scaler),
#    then 2 members with --parallel-members 2 (both on the one GPU): each must finish with a summary.
# Every step's output goes to OUT_DIR/<step>.log; the exit status is that of the first failure.
set -u -o pipefail
OUT=${1:-${OUT:-runs/cuda-figures}}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd)/src PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
step() {  # step NAME COMMAND...: run, log, remember the first failure
    local name=$1; shift
    echo "== $name: $*"
    if ! "$@" >"$OUT/$name.log" 2>&1; then status=1; echo "   FAILED (see $OUT/$name.log)"; fi
    tail -n 4 "$OUT/$name.log"
}
# SMOKE=1: the same steps on the CPU at toy sizes, without fp16 and compile (CUDA-only or slow there); make
# test runs it this way (tests/test_benchmarks.py) so a renamed option cannot break this script unseen.
if [ "${SMOKE:-0}" = 1 ]; then
    DEV=cpu; BENCH=(benchmarks/train_step.py --smoke --device cpu); SYNTH=(--videos 60 --dim 8)
    TINY=(--epochs 1 --hidden-dim 16 --layers 1 --heads 2 --workers 0)
else
    DEV=cuda; BENCH=(benchmarks/train_step.py --device cuda --videos 960 --epochs 2 --workers 4)
    SYNTH=(--videos 600 --dim 1280); TINY=(--epochs 6 --workers 2)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

step step_fp32 $PY "${BENCH[@]}"
step step_bf16 $PY "${BENCH[@]}" --amp bf16
[ "$DEV" = cuda ] && step step_bf16_compile $PY "${BENCH[@]}" --amp bf16 --compile

WORK=$(mktemp -d)  # features and runs stay out of OUT_DIR: only the logs are kept
DATA="$WORK/data"
$PY -m vidcls synth "$DATA" "${SYNTH[@]}" >/dev/null
TRAIN=(-m vidcls train "$DATA" --device "$DEV" "${TINY[@]}" --min-steps 1 --no-plots)
step train_bf16 $PY "${TRAIN[@]}" "$WORK/run_bf16" --amp bf16 --bucket
[ "$DEV" = cuda ] && step train_fp16 $PY "${TRAIN[@]}" "$WORK/run_fp16" --amp fp16
step train_parallel $PY "${TRAIN[@]}" "$WORK/run_parallel" --members 2 --parallel-members 2
rm -rf "$WORK"
exit $status
