#!/usr/bin/env bash
# Every GPU check of this project in one short run, for a single lent CUDA machine:
#   1. the optimised model equals the naive reference on CUDA (fp32, TF32 off): tests/test_equivalence.py
#   2. training-step benchmarks at the paper's size (batch 36, L 12, 64x64, 1x1): fp32 eager, bf16 autocast,
#      bf16 + torch.compile, each against the naive reference where it runs eager; TFLOP/s and fraction of peak
#   3. the training loader's throughput with several worker counts, to compare with step throughput
#   4. the training CLI itself on the GPU with --amp --compile for a few dozen steps
#
#   bash bench/gpu_check.sh DATA_DIR [OUT_DIR]
#
# DATA_DIR holds maze episodes (e.g. ../shared/mazes/train). Logs and JSON lines go to OUT_DIR (default
# gpu_check_out/); the summary is printed last. Each part has its own time limit so one slow part
# (torch.compile) cannot take the others with it.
set -u
DATA=${1:?usage: bash bench/gpu_check.sh DATA_DIR [OUT_DIR]}
OUT_DIR=${2:-gpu_check_out}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SIZE="--batch_size 36 --layers 12 --img_size 64 --grid 1"

part() {  # part NAME SECONDS COMMAND...: run with a limit, log to OUT_DIR/NAME.log, keep its JSON lines
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout -k 30 "$limit" "$@" >>"$OUT_DIR/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc, $((SECONDS - start)) s" | tee -a "$OUT_DIR/summary.txt"
    grep '^{' "$OUT_DIR/$name.log" | tail -1 >>"$OUT_DIR/summary.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  nproc
  $PY - <<'PY'
import sys, torch
print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0))
a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
for _ in range(3):
    a @ b
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(10):
    a @ b
end.record()
torch.cuda.synchronize()
print(f"measured bf16 matmul ceiling: {10 * 2 * 8192 ** 3 / (start.elapsed_time(end) / 1e3) / 1e12:.0f} TFLOP/s")
PY
} >"$OUT_DIR/summary.txt" 2>&1

part equivalence 90 $PY -m pytest -q -p no:cacheprovider tests/test_equivalence.py -rs
tail -2 "$OUT_DIR/equivalence.log" >>"$OUT_DIR/summary.txt"
part step_fp32 75 $PY bench/bench_step.py $SIZE --device cuda --steps 10
part step_amp 75 $PY bench/bench_step.py $SIZE --device cuda --steps 10 --amp --profile 25
part step_amp_2x2 45 $PY bench/bench_step.py --batch_size 36 --layers 12 --img_size 64 --grid 2 --device cuda \
    --steps 10 --amp --no-naive
for workers in 4 8 12; do  # one log (the machine returns few files); the summary keeps each JSON line
    part loader 45 $PY bench/bench_loader.py --data_dir "$DATA" --workers $workers --batch_size 36 --steps 40 \
        --pin_memory
done
part step_amp_compile 180 $PY bench/bench_step.py $SIZE --device cuda --steps 10 --amp --compile --no-naive
# Checkpoints (~0.7 GB at L 12) go to a scratch folder, not OUT_DIR.
part train_cli 150 $PY train_scene_rendering.py --train_data_dir "$DATA" --test_data_dir data_samples/test \
    --layers 12 --batch_size 36 --steps 40 --workers 8 --amp --compile --test_grids 1 2 --log_interval 1000 \
    --save_interval 1000 --root_log_dir "${TMPDIR:-/tmp}/gpu_check_logs"
tail -c 800 "$OUT_DIR/train_cli.log" | tr '\r' '\n' | tail -5 >>"$OUT_DIR/summary.txt"
cat "$OUT_DIR/summary.txt"
