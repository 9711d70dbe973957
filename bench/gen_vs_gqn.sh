#!/usr/bin/env bash
# GEN vs GQN trained with the same CPU-sized budget on the built-in samples, evaluated per grid size on
# identical test hotels, plus the tour animation: the earlier experiments of docs/evaluation.md (they were made
# with --no-memory_norm, the original composer; today's default trains with --memory_norm).
#   bash bench/gen_vs_gqn.sh            # STEPS=1200 by default; both runs share the CPU, one thread each
# Re-running resumes both trainings (--saved_model auto) and redoes evaluation and the GIF.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-1200}
RUNS=${RUNS:-logs/compare}
RESULTS=${RESULTS:-results/compare}
common=(--train_data_dir data_samples/train --test_data_dir data_samples/test --img_size 16 --layers 4
        --batch_size 8 --train_grids 1 2 --test_grids 1 2 3 4 5 --steps "$STEPS" --sigma_steps 1000
        --log_interval 200 --save_interval 400 --workers 1 --root_log_dir "$RUNS" --saved_model auto --seed 0)
mkdir -p "$(dirname "$RUNS")"
OMP_NUM_THREADS=1 python3 train_scene_rendering.py "${common[@]}" > "$RUNS-GEN.log" 2>&1 &
gen=$!
OMP_NUM_THREADS=1 python3 train_scene_rendering.py "${common[@]}" --baseline > "$RUNS-GQN.log" 2>&1 &
gqn=$!
wait $gen
wait $gqn
python3 evaluate.py --saved_model "$RUNS/GEN/models/checkpoint-final.pt" \
    --saved_model "$RUNS/GQN/models/checkpoint-final.pt" --test_data_dir data_samples/test \
    --grids 1 2 3 4 5 --out "$RESULTS" --episodes 16 --seed 0
python3 make_gif.py --saved_model "$RUNS/GEN/models/checkpoint-final.pt" --data_dir data_samples/test \
    --grid 3 --out "$RESULTS/tour.gif" --seed 0 --frames_per_turn 12
