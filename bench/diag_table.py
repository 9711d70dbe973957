"""Markdown table of runs' memory-path diagnostics (diag/* in TensorBoard) at a few steps.

    python -m bench.diag_table ROOT_LOG_DIR RUN [RUN ...] [--steps 1 10 20 ...]
"""
import argparse
import math

from utils.training.summaries import read_events

STEPS = (1, 10, 20, 60, 100, 200, 500, 1000, 2000, 5000, 10000)


def at(curve, step):
    """The value logged at ``step``, or at the last step logged before it (None if there is none)."""
    before = [value for s, value in curve if s <= step]
    return before[-1] if before else None


def fmt(value) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3g}"


def table(root: str, runs, steps) -> str:
    lines = ["| run | step | r memory mean / max | context sensitivity | composer grad norm |", "|---|---:|---|---:|---:|"]
    for run in runs:
        scalars, _ = read_events(f"{root}/{run}/runs")
        last = max((s for s, _ in scalars.get("diag/composer_grad_norm", [])), default=0)
        for step in [s for s in steps if s <= last] + ([last] if last not in steps else []):
            # r and the sensitivity are logged every --log_interval steps (0 included), the gradient every step.
            r_mean, r_max, sens = (at(scalars.get(f"diag/{tag}", []), step) for tag in
                                   ("r_memory_abs_mean", "r_memory_abs_max", "context_sensitivity"))
            grad = at(scalars.get("diag/composer_grad_norm", []), step)
            lines.append(f"| {run} | {step} | {fmt(r_mean)} / {fmt(r_max)} | {fmt(sens)} | {fmt(grad)} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="the runs' --root_log_dir")
    p.add_argument("runs", nargs="+", help="run folders (--log_dir) under it")
    p.add_argument("--steps", type=int, nargs="+", default=list(STEPS), help="steps to show (and each run's last)")
    args = p.parse_args(argv)
    print(table(args.root, args.runs, args.steps))


if __name__ == "__main__":
    main()
