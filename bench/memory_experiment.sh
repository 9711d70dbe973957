#!/usr/bin/env bash
# GEN vs GQN: does each model use what its context views say about each maze, on hotels of 1x1 .. 5x5
# unseen mazes? Generates procedural mazes from SEED (300 training, 300 test), trains a GEN and a GQN
# baseline side by side with the same flags, seed and budget (configs/memory_experiment.args, one CPU
# thread each), then scores both with evaluate.py on 400 queries per grid size: the context gain with its
# paired 95% interval is the answer (docs/evaluation.md).
#
#   OUT=results/memory SEED=0 STEPS=3000 bash bench/memory_experiment.sh
#   DATA=DIR ... bash bench/memory_experiment.sh     # use DIR/train and DIR/test instead of generating
#
# Writes OUT/metrics.csv, OUT/metrics.md, OUT/metrics.png, OUT/curves.png and OUT/tour.gif (the GEN on a 3x3 hotel
# of test mazes). Re-running resumes both
# trainings (--saved_model auto), so a larger STEPS continues a finished run. A run stopped early (SIGTERM) is
# evaluated at its last checkpoint. About 70 minutes on a 2-core AVX-512 CPU (GEN 1.21 s a step beside the GQN,
# evaluation 6 minutes), about 95 on a slower 2-core CPU (1.75 s a step).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/memory}
SEED=${SEED:-0}
STEPS=${STEPS:-3000}
QUERIES=${QUERIES:-400}
DATA=${DATA:-$OUT/mazes}
RUNS=$OUT/runs
mkdir -p "$OUT"
source bench/side_by_side.sh
make_data 300
train_side_by_side train_scene_rendering.py configs/memory_experiment.args
python3 evaluate.py --saved_model "$(latest GEN)" --saved_model "$(latest GQN)" --test_data_dir "$DATA/test" \
    --grids 1 2 3 4 5 --queries "$QUERIES" --seed "$SEED" --out "$OUT" >"$OUT/evaluate.log" 2>&1
python3 -m bench.plot_curves "$RUNS/GEN/runs" "$RUNS/GQN/runs" --label GEN --label GQN --out "$OUT/curves.png"
python3 -m bench.diag_table "$RUNS" GEN GQN --steps 1 100 500 1000 1500 2000 3000 >"$OUT/diagnostics.md"
python3 make_gif.py --saved_model "$(latest GEN)" --data_dir "$DATA/test" --grid 3 --out "$OUT/tour.gif" \
    --seed "$SEED" --frames_per_turn 12 >/dev/null
cat "$OUT/metrics.md"
