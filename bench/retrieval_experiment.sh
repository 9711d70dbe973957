#!/usr/bin/env bash
# GEN vs GQN embedders (the GEN paper's second experiment) at CPU scale: how well does each model pick a query's
# view out of a fixed pool, on hotels of 1x1 .. 5x5 unseen mazes? Generates procedural mazes from SEED (2000
# training, 300 test), trains a GEN and a GQN embed-and-classifier side by side with the same flags, seed and
# budget (configs/retrieval_experiment.args, one CPU thread each, no loader workers), then scores both with
# evaluate_retrieval.py on QUERIES (>= 400) queries per grid size, each among the views of 4 mazes (its own
# and 3 other test mazes: 4 x (8 + 1) = 36 candidates, chance 1/36, at every grid size).
#
#   OUT=results/retrieval/seed0 SEED=0 STEPS=3000 bash bench/retrieval_experiment.sh
#   DATA=DIR ... bash bench/retrieval_experiment.sh    # use DIR/train and DIR/test instead of generating
#
# Budget (2-core CPU, <= 120 minutes): 16 px images, 8 context views, 8 mazes a step on 1x1 and 2x2 hotels (72
# candidates a step). Measured on 2-core VMs (2026-12-04 and 05, results/retrieval/): 3000 steps took 47-73 minutes
# for the GEN and 37-60 for the GQN side by side, one per core, and the evaluation (2 models x 5 grid sizes x 400
# queries x 36 candidates) 6.5-9 minutes; with the mazes' generation, 60-90 minutes in all. Constant lr 5e-4 (the paper
# anneals over 1.6M steps, far beyond this budget). STEPS scales the training linearly; QUERIES the evaluation.
#
# Writes OUT/retrieval.csv (model, grid, queries, candidates, chance, accuracy, accuracy_lo, accuracy_hi, and the maze
# accuracy: maze_chance, maze_accuracy, maze_accuracy_lo, maze_accuracy_hi),
# OUT/retrieval.md and OUT/retrieval.png. Re-running resumes both trainings (--saved_model auto); a run
# stopped early (SIGTERM) is evaluated at its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${SEED:-0}
OUT=${OUT:-results/retrieval/seed$SEED}
STEPS=${STEPS:-3000}
QUERIES=${QUERIES:-400}
DATA=${DATA:-$OUT/mazes}
RUNS=$OUT/runs
mkdir -p "$OUT"
source bench/side_by_side.sh
make_data 2000
train_side_by_side train_embed_classify.py configs/retrieval_experiment.args
python3 evaluate_retrieval.py --saved_model "$(latest GEN)" --saved_model "$(latest GQN)" --test_data_dir "$DATA/test" \
    --grids 1 2 3 4 5 --queries "$QUERIES" --seed "$SEED" --out "$OUT" >"$OUT/evaluate.log" 2>&1
cat "$OUT/retrieval.md"
