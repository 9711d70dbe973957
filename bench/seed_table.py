"""Several seeds of an experiment side by side: a Markdown table per measure (a row per hotel size, a column per
model and seed) and the experiment's targets checked seed by seed.

    python -m bench.seed_table results/memory results/memory_seed1 results/memory_seed2 [--label "seed 0" ...]
    python -m bench.seed_table results/retrieval/seed0 results/retrieval/seed1 results/retrieval/seed2

Each folder is an ``OUT`` of ``bench/memory_experiment.sh`` (its ``metrics.csv``) or of
``bench/retrieval_experiment.sh`` (its ``retrieval.csv``); rows whose model starts with ``GEN`` or ``GQN`` are
read. The targets are the experiments' own, fixed before any result was seen:

- memory: GEN's context gain >= 1.0 dB on 1x1 and >= 0.8 dB on 3x3, 4x4 and 5x5, each with its lower bound
  above 0.5; GQN's gain on 5x5 at most half its gain on 1x1; GEN's lower bound above GQN's upper bound on 3x3,
  4x4 and 5x5.
- retrieval: both models' top-1 accuracy on 1x1 at least 10x chance; GEN's on 5x5 within 5 points of its 1x1;
  GQN's on 5x5 at least 15 points below its 1x1; GEN's lower bound above GQN's upper bound on 3x3, 4x4 and 5x5.
"""
import argparse
import csv
from pathlib import Path
from typing import Callable, Dict, NamedTuple, Optional, Tuple

MODELS = ("GEN", "GQN")
LARGE = (3, 4, 5)  # hotel sizes never seen in training

Rows = Dict[Tuple[str, int], Dict[str, float]]  # (model, grid) -> the row's numeric columns


class Measure(NamedTuple):
    title: str
    columns: Tuple[str, str, str]  # the value and its 95% interval's lower and upper bounds
    cell: str  # the format of one number


class Experiment(NamedTuple):
    csv: str
    script: str
    measures: Tuple[Measure, ...]  # one table each
    targets: Callable[[Callable], dict]  # get(model, grid, column) -> {target: True / False}


def number(text) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_rows(folder) -> Tuple[Experiment, Rows]:
    """The experiment whose CSV ``folder`` holds and its GEN and GQN rows; ValueError if either is missing."""
    folder = Path(folder)
    experiment = next((e for e in EXPERIMENTS if (folder / e.csv).is_file()), None)
    if experiment is None:
        raise ValueError(f"{folder}: no {' or '.join(e.csv for e in EXPERIMENTS)} (an OUT of "
                         f"{' or '.join(e.script for e in EXPERIMENTS)})")
    path = folder / experiment.csv
    rows = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            model = next((m for m in MODELS if row["model"].startswith(m)), None)
            if model is not None:
                rows[model, int(row["grid"])] = {key: number(value) for key, value in row.items()}
    missing = [m for m in MODELS if not any(key[0] == m for key in rows)]
    if missing:
        raise ValueError(f"{path}: no {' or '.join(missing)} rows")
    return experiment, rows


def targets(experiment: Experiment, rows: Rows) -> dict:
    """Each target of the experiment -> True / False, or None when a grid it needs was not evaluated."""
    class NotEvaluated(Exception):
        pass

    def get(model, grid, column):
        if (model, grid) not in rows:
            raise NotEvaluated
        return rows[model, grid][column]

    checks = {}
    for name, test in experiment.targets(get).items():
        try:
            checks[name] = bool(test())
        except NotEvaluated:
            checks[name] = None
    return checks


def memory_targets(get) -> dict:
    def gain(model, grid):
        return get(model, grid, "context_gain_db")

    def lo(model, grid):
        return get(model, grid, "context_gain_lo")

    return {
        "GEN >= 1.0 dB on 1x1 (lower bound > 0.5)": lambda: gain("GEN", 1) >= 1.0 and lo("GEN", 1) > 0.5,
        "GEN >= 0.8 dB on 3x3-5x5 (lower bounds > 0.5)":
            lambda: all([gain("GEN", k) >= 0.8 and lo("GEN", k) > 0.5 for k in LARGE]),
        "GQN's 5x5 gain <= half its 1x1 gain": lambda: gain("GQN", 5) <= gain("GQN", 1) / 2,
        "GEN's lower bound > GQN's upper bound on 3x3-5x5":
            lambda: all([lo("GEN", k) > get("GQN", k, "context_gain_hi") for k in LARGE]),
    }


def retrieval_targets(get) -> dict:
    def top1(model, grid):
        return get(model, grid, "accuracy")

    return {
        "both models' top-1 >= 10x chance on 1x1":
            lambda: all([top1(m, 1) >= 10 * get(m, 1, "chance") for m in MODELS]),
        "GEN's 5x5 top-1 within 5 points of its 1x1": lambda: abs(top1("GEN", 5) - top1("GEN", 1)) <= 0.05,
        "GQN's 5x5 top-1 >= 15 points below its 1x1": lambda: top1("GQN", 1) - top1("GQN", 5) >= 0.15,
        "GEN's lower bound > GQN's upper bound on 3x3-5x5":
            lambda: all([get("GEN", k, "accuracy_lo") > get("GQN", k, "accuracy_hi") for k in LARGE]),
    }


EXPERIMENTS = (
    Experiment("metrics.csv", "bench/memory_experiment.sh",
               (Measure("Context gain (dB)", ("context_gain_db", "context_gain_lo", "context_gain_hi"), "{:+.2f}"),),
               memory_targets),
    Experiment("retrieval.csv", "bench/retrieval_experiment.sh",
               (Measure("Top-1 accuracy", ("accuracy", "accuracy_lo", "accuracy_hi"), "{:.3f}"),
                Measure("Maze accuracy (the pick is a view of the query's own maze)",
                        ("maze_accuracy", "maze_accuracy_lo", "maze_accuracy_hi"), "{:.3f}")),
               retrieval_targets),
)


def table(measure: Measure, columns) -> str:
    """columns: [(label, rows)] -> Markdown, a row per grid, GEN's columns then GQN's."""
    grids = sorted({grid for _, rows in columns for _, grid in rows})
    heads = [(m, label, rows) for m in MODELS for label, rows in columns]
    lines = ["| grid | " + " | ".join(f"{m}, {label}" for m, label, _ in heads) + " |",
             "|---:|" + "---:|" * len(heads)]
    for grid in grids:
        cells = []
        for model, _, rows in heads:
            values = [rows.get((model, grid), {}).get(column) for column in measure.columns]
            cells.append("-" if None in values else "{} [{}, {}]".format(*(measure.cell.format(v) for v in values)))
        lines.append(f"| {grid}x{grid} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.seed_table", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="OUT folders of bench/memory_experiment.sh or bench/retrieval_experiment.sh")
    p.add_argument("--label", action="append", help="one per folder (default: the folder's name)")
    args = p.parse_args(argv)
    labels = args.label or [Path(f).name for f in args.folders]
    if len(labels) != len(args.folders):
        p.error(f"{len(labels)} --label for {len(args.folders)} folders")
    try:
        found = [read_rows(folder) for folder in args.folders]
    except ValueError as e:
        p.exit(2, f"python -m bench.seed_table: error: {e}\n")
    experiment = found[0][0]
    if any(e is not experiment for e, _ in found):
        p.exit(2, "python -m bench.seed_table: error: the folders hold different experiments' results\n")
    columns = [(label, rows) for label, (_, rows) in zip(labels, found)]
    for measure in experiment.measures:
        print(f"{measure.title}, 95% interval:\n")
        print(table(measure, columns) + "\n")
    print("| target | " + " | ".join(label for label, _ in columns) + " |")
    print("|---|" + "---|" * len(columns))
    checks = [targets(experiment, rows) for _, rows in columns]
    names = {"True": "met", "False": "missed", "None": "not evaluated"}
    for name in checks[0]:
        print(f"| {name} | " + " | ".join(names[str(c[name])] for c in checks) + " |")


if __name__ == "__main__":
    main()
