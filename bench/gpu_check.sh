#!/usr/bin/env bash
# Every GPU check of this project in one short run, for a single lent CUDA machine:
#   cuda_tests    the tests that need CUDA: the optimised model equals the naive reference (fp32, TF32 off),
#                 fused Adam (a non-finite step left out; resume and recovery into channels-last weights),
#                 a training step never syncs with the GPU, and CUDA graphs train like the plain compiled step
#   step_*        training-step benchmarks at the paper's size (batch 36, L 12, 64x64): fp32, bf16 autocast,
#                 channels-last, torch.compile (default and reduce-overhead; 1x1 and 2x2 hotels), against
#                 the naive reference where ours runs eager; TFLOP/s and the fraction of bf16 peak
#                 (step_amp_compile_ro_cudnn: the CUDA-graphs step with torch.backends.cudnn.benchmark;
#                 step_amp_compile_ro_b72: the same at batch 72, twice the paper's)
#   ops           each convolution and matrix product of the bf16 step at the paper's size, replayed alone: calls,
#                 time, TFLOP/s, and the time with channel counts padded to multiples of 8 (bench/bench_ops.py;
#                 ops_cudnn: the same with torch.backends.cudnn.benchmark)
#   loader        the training loader's throughput with 4, 8 and 12 workers, to compare with step throughput
#   host          kernel launches timed alone and beside the training loader (its workers; its pin-memory
#                 thread): what the loader costs a host-bound training loop (bench/bench_host.py)
#   train_cli     the training CLI itself on the GPU with --amp --compile for 400 steps (1x1 and 2x2 hotels),
#                 then its median step time and loader wait (bench/step_times.py)
#   train_cli_graphs     the same with --compile reduce-overhead (each step replayed as CUDA graphs)
#   train_cli_rewritten  the same on DATA_DIR rewritten into our format (python -m utils.data.files rewrite)
#   train_profile the CLI's host time per step by function, steps 61-160 only (bench/profile_cli.py)
#
#   bash bench/gpu_check.sh DATA_DIR [OUT_DIR]          # every part
#   PARTS="train_cli step_amp_compile" bash bench/gpu_check.sh DATA_DIR [OUT_DIR]
#
# DATA_DIR holds maze episodes (e.g. ../shared/mazes/train). Logs go to OUT_DIR (default gpu_check_out/),
# one file per kind of part (the device machine returns at most 8); summary.txt, printed last, keeps each
# part's exit status, time and JSON line. Each part has its own time limit so one slow part (torch.compile)
# cannot take the others with it.
set -u
DATA=${1:?usage: bash bench/gpu_check.sh DATA_DIR [OUT_DIR]}
OUT_DIR=${2:-gpu_check_out}
PARTS=${PARTS:-"cuda_tests step_fp32 step_amp step_amp_cl step_amp_2x2 loader host step_amp_compile step_amp_compile_2x2 step_amp_compile_ro step_amp_compile_ro_cudnn step_amp_compile_ro_b72 ops ops_cudnn train_cli train_cli_graphs train_profile train_cli_rewritten"}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
STEP="$PY -m bench.bench_step --batch_size 36 --layers 12 --img_size 64 --device cuda --steps 10"
# The training CLI at the benchmark's size, as train_cli and train_profile run it (data, steps and --compile apart).
TRAIN="--test_data_dir data_samples/test --layers 12 --batch_size 36 --workers 12 --amp --test_grids 1 2
       --log_interval 100000 --save_interval 100000"

part() {  # part NAME SECONDS COMMAND...: run with a limit, append to OUT_DIR/<NAME up to its first _>.log
    local name=$1 limit=$2; shift 2
    local log="$OUT_DIR/${name%%_*}.log"  # step_* share step.log: the machine returns at most 8 files
    local start=$SECONDS
    local before=0; [ -f "$log" ] && before=$(wc -l <"$log")
    echo "== $name: $*" >>"$log"
    timeout -k 30 "$limit" "$@" >>"$log" 2>&1
    local rc=$?
    echo "== $name: rc $rc, $((SECONDS - start)) s" | tee -a "$OUT_DIR/summary.txt"
    # This part's own JSON line only: parts that print none (train_cli) share a log with parts that do.
    [ $rc -eq 0 ] && tail -n +$((before + 1)) "$log" | grep '^{' | tail -1 >>"$OUT_DIR/summary.txt"
}

train_cli() {  # train_cli NAME DATA [FLAG...]: 400 steps of the CLI, then its median step time and loader wait
    local name=$1 data=$2; shift 2
    local logs="${TMPDIR:-/tmp}/gpu_check_logs"  # checkpoints (~0.7 GB at L 12) stay out of OUT_DIR
    rm -rf "$logs"
    part "$name" 200 $PY train_scene_rendering.py --train_data_dir "$data" $TRAIN "$@" --steps 400 --root_log_dir "$logs"
    tail -c 800 "$OUT_DIR/train.log" | tr '\r' '\n' | tail -3 >>"$OUT_DIR/summary.txt"
    part train_times 30 $PY -m bench.step_times "$logs/GEN/runs" --skip 40 --batch_size 36
}

run_part() {
    case $1 in
    cuda_tests)
        part cuda_tests 150 $PY -m pytest -q -p no:cacheprovider tests/test_equivalence.py tests/test_optimizer.py \
            tests/test_train.py -k "cuda or gpu" -rs
        tail -1 "$OUT_DIR/cuda.log" >>"$OUT_DIR/summary.txt" ;;
    step_fp32) part step_fp32 75 $STEP --grid 1 ;;
    step_amp) part step_amp 75 $STEP --grid 1 --amp --profile 25 ;;
    step_amp_cl) part step_amp_cl 60 $STEP --grid 1 --amp --channels_last ;;
    step_amp_2x2) part step_amp_2x2 45 $STEP --grid 2 --amp --channels_last --no-naive ;;
    ops) part ops 150 $PY -m bench.bench_ops --device cuda --amp --channels_last --pad 8 --rows 45 ;;
    ops_cudnn) part ops_cudnn 150 $PY -m bench.bench_ops --device cuda --amp --channels_last --pad 8 --rows 45 \
        --cudnn_benchmark ;;
    loader)
        for workers in 4 8 12; do
            part loader 45 $PY -m bench.bench_loader --data_dir "$DATA" --workers $workers --batch_size 36 \
                --steps 40 --pin_memory
        done ;;
    host)  # does the loader slow the host's launches, and is it its workers or its pin-memory thread?
        part host 90 $PY -m bench.bench_host --data_dir "$DATA" --workers 12 --batch_size 36 --device cuda
        grep -E '^ *(alone|main_pin|pin_thread):' "$OUT_DIR/host.log" | tail -4 >>"$OUT_DIR/summary.txt" ;;
    step_amp_compile) part step_amp_compile 120 $STEP --grid 1 --amp --channels_last --compile --no-naive --profile 25 ;;
    step_amp_compile_2x2) part step_amp_compile_2x2 120 $STEP --grid 2 --amp --channels_last --compile --no-naive ;;
    step_amp_compile_ro) part step_amp_compile_ro 120 $STEP --grid 1 --amp --channels_last --compile reduce-overhead \
        --no-naive ;;
    step_amp_compile_ro_cudnn) part step_amp_compile_ro_cudnn 120 $STEP --grid 1 --amp --channels_last \
        --compile reduce-overhead --no-naive --cudnn_benchmark ;;  # does cuDNN's autotuning pay? (then: training)
    step_amp_compile_ro_b72) part step_amp_compile_ro_b72 120 $STEP --grid 1 --amp --channels_last \
        --compile reduce-overhead --no-naive --batch_size 72 ;;  # does a larger batch fill the chip better?
    train_cli) train_cli train_cli "$DATA" --compile ;;
    train_cli_graphs) train_cli train_cli_graphs "$DATA" --compile reduce-overhead ;;
    train_profile)
        local logs="${TMPDIR:-/tmp}/gpu_check_profile"
        rm -rf "$logs"
        part train_profile 240 $PY -m bench.profile_cli --skip 60 --steps 100 --rows 30 -- --train_data_dir "$DATA" \
            $TRAIN --compile --steps 170 --root_log_dir "$logs"
        grep "^profiled" "$OUT_DIR/train.log" | tail -1 >>"$OUT_DIR/summary.txt" ;;
    train_cli_rewritten)  # the same episodes in our format: does the file format change the step?
        local ours="${TMPDIR:-/tmp}/gpu_check_rewritten"
        part rewrite 120 $PY -m utils.data.episodes rewrite "$DATA" "$ours" --no_progress
        train_cli train_cli_rewritten "$ours" --compile ;;
    *) echo "unknown part $1" >>"$OUT_DIR/summary.txt" ;;
    esac
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

for name in $PARTS; do
    run_part "$name"
done
cat "$OUT_DIR/summary.txt"
