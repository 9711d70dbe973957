#!/usr/bin/env bash
# The memory path's health with and without --memory_norm, for GEN and GQN: the runs behind the
# "Diagnostics" table of docs/training.md. Trains four small models side by side on procedural mazes
# (16 px, 2 DRAW layers, 32 context views per maze, batch 8, lr 5e-4, pixel sigma fixed at 0.7), then
# tabulates their diag/* curves and scores their context gain with evaluate.py. With REAL=DIR (episodes
# such as the real DeepMind Lab mazes) it adds GEN and GQN at 64 px, 8 layers, lr 8e-4, for STEPS_64 steps.
#
#   OUT=results/memory_path STEPS=2000 [REAL=DIR STEPS_64=1000] bash bench/memory_path.sh
#
# Meant for one GPU (a few minutes there); on a 2-core CPU the 16 px runs take about an hour each.
set -u
OUT=${OUT:-results/memory_path}
STEPS=${STEPS:-2000}
STEPS_64=${STEPS_64:-1000}
REAL=${REAL:-}
PY=${PYTHON:-python3}
WORKERS=${WORKERS:-2}
QUERIES=${QUERIES:-400}
DATA=$OUT/mazes
mkdir -p "$OUT"
if [ ! -d "$DATA/train" ]; then
    $PY -m utils.data.make_mazes --out "$DATA" --train 300 --test 100 --seed 0 --workers "$(nproc)" --contact-sheet '' \
        || exit 1
fi
RECIPE="--train_data_dir $DATA/train --test_data_dir $DATA/test --img_size 16 --layers 2 --batch_size 8
        --context_views 32 --lr 5e-4 --lr_final 5e-4 --sigma 0.7 --sigma_final 0.7 --test_grids 1
        --log_interval 20 --save_interval 100000 --workers $WORKERS --root_log_dir $OUT/runs --steps $STEPS"
runs=()
for norm in memory_norm no-memory_norm; do
    for model in GEN GQN; do
        name=${model}_$norm
        flags=$([ $model = GQN ] && echo --baseline)
        $PY train_scene_rendering.py $RECIPE $flags --$norm --log_dir "$name" >"$OUT/$name.log" 2>&1 &
        runs+=("$name")
    done
done
if [ -n "$REAL" ]; then
    for model in GEN GQN; do
        name=${model}_64px
        flags=$([ $model = GQN ] && echo --baseline)
        $PY train_scene_rendering.py --train_data_dir "$REAL" --test_data_dir "$REAL" --img_size 64 --layers 8 \
            --lr 8e-4 --test_grids 1 --log_interval 50 --save_interval 100000 --workers 3 \
            --root_log_dir "$OUT/runs" --steps "$STEPS_64" $flags --log_dir "$name" >"$OUT/$name.log" 2>&1 &
        runs+=("$name")
    done
fi
wait
$PY -m bench.diag_table "$OUT/runs" "${runs[@]}" >"$OUT/diagnostics.md"
checkpoints=()
for name in GEN_memory_norm GQN_memory_norm GEN_no-memory_norm GQN_no-memory_norm; do
    checkpoints+=(--saved_model "$OUT/runs/$name/models/checkpoint-final.pt")
done
$PY evaluate.py "${checkpoints[@]}" --test_data_dir "$DATA/test" --grids 1 --queries "$QUERIES" --out "$OUT/eval" \
    >"$OUT/evaluate.log" 2>&1
cat "$OUT/diagnostics.md" "$OUT/eval/metrics.md"
