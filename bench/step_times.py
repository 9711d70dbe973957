"""How fast a training run went, from its TensorBoard events (no tensorboard install needed).

    python -m bench.step_times logs/GEN/runs [--skip 40]

Prints one JSON line: the median and fastest ``time_per_step`` after the first ``--skip`` steps (which
hold torch.compile's compilation and the workers' start), the medians of ``time_data_wait`` (the host
waiting for the loader) and ``time_device_wait`` (the host waiting for the GPU: near 0 when the host sets
the pace), the median step less its loader wait, and samples/s at the run's batch size if given; then
the same per hotel size k under ``by_grid`` (each k is its own compiled graph and its own kind of batch);
and on a GPU the run's peak of GPU memory held by the process (``gpu_memory_peak_gb``).
"""
import argparse
import json
import re
import statistics
from pathlib import Path

from utils.command import number
from utils.training.summaries import read_events


WAITS = ("time_data_wait", "time_device_wait")  # parts of a step: waiting for the loader, for the GPU


def summary(steps, waits: dict, batch_size=None) -> dict:
    """Medians of ``steps`` ([(step, seconds)]) and of their waits ({name: {step: seconds}})."""
    median = statistics.median(seconds for _, seconds in steps)
    result = {"steps": len(steps), "time_per_step_median": round(median, 5),
              "time_per_step_min": round(min(seconds for _, seconds in steps), 5)}
    for name, values in waits.items():
        known = [values[step] for step, _ in steps if step in values]
        if known:
            result[f"{name}_median"] = round(statistics.median(known), 5)
    loading = waits.get("time_data_wait", {})
    if loading:  # the step without its wait for the loader: what the host and GPU take (with --workers 0 too)
        result["time_per_step_less_data_wait_median"] = round(
            statistics.median(seconds - loading[step] for step, seconds in steps if step in loading), 5)
    if batch_size:
        result["samples_per_s"] = round(batch_size / median, 1)
    return result


def step_grids(scalars: dict) -> dict:
    """step -> hotel size k, from the per-size training losses (logged for every finite step)."""
    grids = {}
    for tag, points in scalars.items():
        match = re.fullmatch(r"train/loss_(\d+)x\1", tag)
        if match:
            grids.update((step, int(match.group(1))) for step, _ in points)
    return grids


def step_times(runs_dir, skip: int = 40, batch_size=None) -> dict:
    scalars, _ = read_events(runs_dir)
    if "time_per_step" not in scalars:
        raise ValueError(f"{runs_dir} holds no time_per_step events (a training run's runs/ folder?)")
    steps = [(step, seconds) for step, seconds in scalars["time_per_step"] if step > skip]
    if not steps:
        raise ValueError(f"{runs_dir} has no steps after --skip {skip}")
    waits = {name: dict(scalars[name]) for name in WAITS if name in scalars}
    result = summary(steps, waits, batch_size)
    grids = step_grids(scalars)
    by_grid = {k: summary([s for s in steps if grids.get(s[0]) == k], waits, batch_size)
               for k in sorted({grids[step] for step, _ in steps if step in grids})}
    if by_grid:
        result["by_grid"] = {f"{k}x{k}": value for k, value in by_grid.items()}
    if "gpu_memory_peak_gb" in scalars:
        result["gpu_memory_peak_gb"] = round(max(value for _, value in scalars["gpu_memory_peak_gb"]), 2)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.step_times", description=__doc__.split("\n")[0])
    p.add_argument("runs_dir", type=Path, help="a run's TensorBoard folder, e.g. logs/GEN/runs")
    p.add_argument("--skip", type=number(int, 0, low_ok=True), default=40,
                   help="leave out the first steps (compilation, start-up)")
    p.add_argument("--batch_size", type=number(int, 0), default=None, help="the run's --batch_size, for samples/s")
    args = p.parse_args(argv)
    try:
        print(json.dumps(step_times(args.runs_dir, args.skip, args.batch_size)))
    except ValueError as error:
        p.error(str(error))


if __name__ == "__main__":
    main()
