# Sourced by bench/memory_experiment.sh and bench/retrieval_experiment.sh: what both experiments do before
# they score their models. Expects OUT, SEED, STEPS, DATA and RUNS to be set.

# The procedural mazes of SEED ($1 training, 300 test) in DATA, unless DATA/train exists.
make_data() {
    if [ ! -d "$DATA/train" ]; then
        python3 -m utils.data.make_mazes --out "$DATA" --train "$1" --test 300 --seed "$SEED" --workers 2 \
            --contact-sheet ''
    fi
}

# A GEN and a GQN trained side by side by SCRIPT with the flags of CONFIG, the same seed and budget, one CPU
# thread each, into RUNS/GEN and RUNS/GQN (logs in OUT/GEN.log, OUT/GQN.log). Re-running resumes them
# (--saved_model auto); SIGTERM or Ctrl-C stops both, and each saves a checkpoint.
train_side_by_side() {
    local script=$1 config=$2
    local common=(@"$config" --train_data_dir "$DATA/train" --test_data_dir "$DATA/test" --steps "$STEPS"
                  --seed "$SEED" --workers 0 --root_log_dir "$RUNS" --saved_model auto)
    OMP_NUM_THREADS=1 python3 "$script" "${common[@]}" --log_dir GEN >"$OUT/GEN.log" 2>&1 &
    local gen=$!
    OMP_NUM_THREADS=1 python3 "$script" "${common[@]}" --log_dir GQN --baseline >"$OUT/GQN.log" 2>&1 &
    local gqn=$!
    trap "kill -TERM $gen $gqn 2>/dev/null" TERM INT
    wait $gen || true
    wait $gqn || true
    trap - TERM INT
}

# The newest checkpoint of run RUNS/$1 (its last one, or the one a stopped run saved).
latest() { ls -t "$RUNS/$1/models/"checkpoint-*.pt | head -1; }
