"""Training scalars averaged over windows of steps, read from TensorBoard event files: the figures the results'
READMEs quote for a run's training (its loss and accuracy near the end, or when it left chance).

    python -m bench.train_windows RUN/runs [RUN/runs ...] [--tags train/loss train/accuracy] [--windows 2700:3000 ...]

A window ``A:B`` averages the values logged at steps A < step <= B; by default, every 500 steps of the longest
run. One Markdown row per run and tag; ``-`` where the run logged nothing in a window.
"""
import argparse
from pathlib import Path

from utils.training.summaries import read_events

DEFAULT_EVERY = 500


def window(text):
    try:
        low, high = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a window A:B of steps") from None
    if not 0 <= low < high:
        raise argparse.ArgumentTypeError(f"{text!r}: a window A:B needs 0 <= A < B")
    return low, high


def mean_in(values, low, high):
    inside = [value for step, value in values if low < step <= high]
    return sum(inside) / len(inside) if inside else None


def table(runs, labels, tags, windows=None) -> str:
    scalars = [read_events(run)[0] for run in runs]
    for run, found in zip(runs, scalars):
        if not found:
            raise ValueError(f"{run}: no scalar events (is it a run's runs/ folder?)")
    if windows is None:
        last = max(step for found in scalars for values in found.values() for step, _ in values)
        windows = [(low, low + DEFAULT_EVERY) for low in range(0, last, DEFAULT_EVERY)]
    lines = ["| run | tag | " + " | ".join(f"{low}-{high}" for low, high in windows) + " |",
             "|---|---|" + "---:|" * len(windows)]
    for label, found in zip(labels, scalars):
        for tag in tags:
            means = [mean_in(found.get(tag, []), low, high) for low, high in windows]
            lines.append(f"| {label} | {tag} | " + " | ".join("-" if m is None else f"{m:.4f}" for m in means) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.train_windows", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="TensorBoard directories (RUN/runs)")
    parser.add_argument("--label", action="append", help="one label per run (default: the run folder's name)")
    parser.add_argument("--tags", nargs="+", default=["train/loss", "train/accuracy"])
    parser.add_argument("--windows", nargs="+", type=window, help=f"A:B step windows (default: every {DEFAULT_EVERY})")
    args = parser.parse_args(argv)
    labels = args.label or [Path(run).resolve().parent.name for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error("give one --label per run")
    try:
        print(table(args.runs, labels, args.tags, args.windows))
    except ValueError as error:
        parser.exit(2, f"python -m bench.train_windows: error: {error}\n")


if __name__ == "__main__":
    main()
