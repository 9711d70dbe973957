"""The memory experiment's context gains over several seeds: one Markdown table (a row per hotel size, a column
per model and seed) and the issue's targets checked seed by seed.

    python -m bench.seed_table results/memory results/memory_seed1 results/memory_seed2 [--label "seed 0" ...]

Each folder is an ``OUT`` of ``bench/memory_experiment.sh`` (its ``metrics.csv``); rows whose model starts
with ``GEN`` or ``GQN`` are read. Targets (fixed before any result was seen): GEN's gain >= 1.0 dB on 1x1
and >= 0.8 dB on 3x3, 4x4 and 5x5, each with its lower bound above 0.5; GQN's gain on 5x5 at most half its
gain on 1x1; GEN's lower bound above GQN's upper bound on 3x3, 4x4 and 5x5.
"""
import argparse
import csv
from pathlib import Path

MODELS = ("GEN", "GQN")
LARGE = (3, 4, 5)  # hotel sizes never seen in training


def read_gains(folder) -> dict:
    """{(model, grid): (gain, lo, hi)} from ``folder/metrics.csv``; ValueError if a model is missing."""
    path = Path(folder) / "metrics.csv"
    if not path.is_file():
        raise ValueError(f"{path}: no such file (run bench/memory_experiment.sh with OUT={folder})")
    gains = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            model = next((m for m in MODELS if row["model"].startswith(m)), None)
            if model is not None:
                gains[model, int(row["grid"])] = tuple(float(row[k]) for k in
                                                       ("context_gain_db", "context_gain_lo", "context_gain_hi"))
    missing = [m for m in MODELS if not any(key[0] == m for key in gains)]
    if missing:
        raise ValueError(f"{path}: no {' or '.join(missing)} rows")
    return gains


def targets(gains) -> dict:
    """Each target of the experiment -> True / False (None when a grid it needs was not evaluated)."""
    def get(model, grid):
        return gains.get((model, grid))

    def check(needed, test):
        return None if any(x is None for x in needed) else test(*needed)

    gen_large = [get("GEN", k) for k in LARGE]
    gqn_large = [get("GQN", k) for k in LARGE]
    return {
        "GEN >= 1.0 dB on 1x1 (lower bound > 0.5)": check([get("GEN", 1)], lambda g: g[0] >= 1.0 and g[1] > 0.5),
        "GEN >= 0.8 dB on 3x3-5x5 (lower bounds > 0.5)":
            check(gen_large, lambda *g: all(x[0] >= 0.8 and x[1] > 0.5 for x in g)),
        "GQN's 5x5 gain <= half its 1x1 gain": check([get("GQN", 1), get("GQN", 5)], lambda a, b: b[0] <= a[0] / 2),
        "GEN's lower bound > GQN's upper bound on 3x3-5x5":
            check(gen_large + gqn_large,
                  lambda *g: all(gen[1] > gqn[2] for gen, gqn in zip(g[:len(LARGE)], g[len(LARGE):]))),
    }


def table(columns) -> str:
    """columns: [(label, gains)] -> Markdown, a row per grid, GEN's columns then GQN's."""
    grids = sorted({grid for _, gains in columns for _, grid in gains})
    heads = [(m, label, gains) for m in MODELS for label, gains in columns]
    lines = ["| grid | " + " | ".join(f"{m}, {label}" for m, label, _ in heads) + " |",
             "|---:|" + "---:|" * len(heads)]
    for grid in grids:
        cells = []
        for model, _, gains in heads:
            g = gains.get((model, grid))
            cells.append("-" if g is None else f"{g[0]:+.2f} [{g[1]:+.2f}, {g[2]:+.2f}]")
        lines.append(f"| {grid}x{grid} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.seed_table", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="OUT folders of bench/memory_experiment.sh")
    p.add_argument("--label", action="append", help="one per folder (default: the folder's name)")
    args = p.parse_args(argv)
    labels = args.label or [Path(f).name for f in args.folders]
    if len(labels) != len(args.folders):
        p.error(f"{len(labels)} --label for {len(args.folders)} folders")
    try:
        columns = [(label, read_gains(folder)) for label, folder in zip(labels, args.folders)]
    except ValueError as e:
        p.exit(2, f"python -m bench.seed_table: error: {e}\n")
    print("Context gain (dB), 95% interval:\n")
    print(table(columns))
    print("\n| target | " + " | ".join(label for label, _ in columns) + " |")
    print("|---|" + "---|" * len(columns))
    checks = [targets(gains) for _, gains in columns]
    names = {"True": "met", "False": "missed", "None": "not evaluated"}
    for name in checks[0]:
        print(f"| {name} | " + " | ".join(names[str(c[name])] for c in checks) + " |")


if __name__ == "__main__":
    main()
