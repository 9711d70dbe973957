#!/usr/bin/env bash
# A short CPU training run on the real DeepMind Lab mazes in $GEN_REAL_MAZES/train (or SRC=DIR): 25 episodes to train
# on, 6 held out for the test losses; pixel sigma held fixed so the test loss measures learning alone.
# Writes results/real_data_curve.png and prints the first/last test losses (the README's figures).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${SRC:-${GEN_REAL_MAZES:-}/train}
STEPS=${STEPS:-300}
RUNS=${RUNS:-logs/real}
[ -d "$SRC" ] || { echo "real_data_curve.sh: no $SRC (the real episodes); set GEN_REAL_MAZES=DIR or SRC=DIR/train" >&2; exit 2; }
split=$(mktemp -d)
mkdir -p "$split/train" "$split/test"
i=0
for f in $(ls "$SRC"/*.pt | sort -V); do
    if [ $i -lt 25 ]; then ln -s "$(realpath "$f")" "$split/train/"; else ln -s "$(realpath "$f")" "$split/test/"; fi
    i=$((i + 1))
done
python3 train_scene_rendering.py --train_data_dir "$split/train" --test_data_dir "$split/test" \
    --img_size 32 --layers 4 --batch_size 4 --train_grids 1 2 --test_grids 1 2 --steps "$STEPS" \
    --sigma 0.7 --sigma_final 0.7 --log_interval 50 --save_interval 100 --workers 1 \
    --root_log_dir "$RUNS" --saved_model auto --seed 0
python3 -m bench.plot_curves "$RUNS/GEN/runs" --label "GEN, real mazes" --out results/real_data_curve.png
rm -r "$split"
