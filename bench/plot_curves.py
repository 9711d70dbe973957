"""Plot training curves from TensorBoard event files (no tensorboard install needed).

    python -m bench.plot_curves logs/real/GEN/runs --out results/real_data_curve.png [--label GEN] ...

Draws ``train/loss`` (moving average) and every ``test/loss_{k}x{k}`` of each run, and prints the
first and last test losses as one JSON line, the figures the README quotes.
"""
import argparse
import json
from pathlib import Path

import matplotlib

from utils.command import number
from utils.training.summaries import read_events


def moving_average(values, window):
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.plot_curves", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="TensorBoard directories (RUN/runs)")
    parser.add_argument("--label", action="append", help="one label per run (default: the run folder name)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--window", type=number(int, 0), default=25, help="moving-average window of the training loss")
    args = parser.parse_args(argv)
    labels = args.label or [Path(run).resolve().parent.name for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error("give one --label per run")
    matplotlib.use("Agg")  # no display needed; set before pyplot is imported
    import matplotlib.pyplot as plt

    figure, (train_axis, test_axis) = plt.subplots(1, 2, figsize=(11, 4))
    summary = {}
    for run, label in zip(args.runs, labels):
        scalars, _ = read_events(run)
        if "train/loss" not in scalars:
            parser.error(f"{run}: no train/loss events (is it a run's runs/ folder?)")
        steps, losses = zip(*scalars["train/loss"])
        train_axis.plot(steps, moving_average(list(losses), args.window), label=label)
        for tag in sorted(t for t in scalars if t.startswith("test/loss_")):
            test_steps, test_losses = zip(*scalars[tag])
            test_axis.plot(test_steps, test_losses, marker="o", label=f"{label} {tag[len('test/loss_'):]}")
            summary[f"{label} {tag}"] = {"first": [test_steps[0], test_losses[0]],
                                         "last": [test_steps[-1], test_losses[-1]]}
    train_axis.set(title=f"train -ELBO (moving average of {args.window})", xlabel="step", ylabel="nats per image")
    test_axis.set(title="test -ELBO per grid size", xlabel="step", ylabel="nats per image")
    for axis in (train_axis, test_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    try:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(args.out, dpi=100)
    except OSError as error:
        parser.error(f"cannot write --out {args.out}: {error.strerror or error}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
