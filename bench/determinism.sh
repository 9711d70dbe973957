#!/usr/bin/env bash
# Is a CPU training run bitwise reproducible, and what changes its bits? Trains the memory experiment's GEN
# (configs/memory_experiment.args) for STEPS steps on DATA/train seven times and prints the largest weight
# difference of each later run from the first: the same command again, two copies side by side (as
# bench/memory_experiment.sh runs its two models), with 2 threads instead of 1, with oneDNN's convolution
# kernels held to AVX2 (what a CPU without AVX-512 runs), and with ATen's own kernels held to AVX2.
#
#   DATA=data_samples STEPS=40 bash bench/determinism.sh      # about 5 minutes on a 2-core CPU
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data_samples}
STEPS=${STEPS:-40}
RUNS=$(mktemp -d)
trap 'rm -rf "$RUNS"' EXIT

train() {  # NAME THREADS [ENV=VALUE ...]
    local name=$1 threads=$2
    shift 2
    env OMP_NUM_THREADS="$threads" "$@" python3 train_scene_rendering.py @configs/memory_experiment.args \
        --train_data_dir "$DATA/train" --test_data_dir "$DATA/test" --test_grids 1 --steps "$STEPS" --seed 0 \
        --workers 0 --root_log_dir "$RUNS" --log_dir "$name" --log_interval 100000 --save_interval 100000 \
        >"$RUNS/$name.log" 2>&1 || { echo "determinism.sh: run $name failed:" >&2; tail -3 "$RUNS/$name.log" >&2; exit 1; }
}

train first 1
train again 1
train beside_a 1 & train beside_b 1 & wait
train two_threads 2
train onednn_avx2 1 ONEDNN_MAX_CPU_ISA=AVX2
train aten_avx2 1 ATEN_CPU_CAPABILITY=avx2
python3 - "$RUNS" "$STEPS" <<'PY'
import sys
import torch
runs, steps = sys.argv[1], sys.argv[2]
load = lambda name: torch.load(f"{runs}/{name}/models/checkpoint-final.pt", map_location="cpu",  # noqa: E731
                               weights_only=False)["model_state_dict"]
first = load("first")
print(f"largest weight difference from the first run after {steps} steps "
      f"(CPU capability {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}):")
for name in ("again", "beside_a", "beside_b", "two_threads", "onednn_avx2", "aten_avx2"):
    other = load(name)
    print(f"  {name:12s} {max((first[k].float() - other[k].float()).abs().max().item() for k in first):.3g}")
PY
