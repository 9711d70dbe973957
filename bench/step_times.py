"""How fast a training run went, from its TensorBoard events (no tensorboard install needed).

    python bench/step_times.py logs/GEN/runs [--skip 40]

Prints one JSON line: the median and fastest ``time_per_step`` after the first ``--skip`` steps (which
hold torch.compile's compilation and the workers' start), the median ``time_data_wait`` (the part of a
step spent waiting for the loader), and samples/s at the run's batch size if given.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.summaries import read_events  # noqa: E402


def step_times(runs_dir, skip: int = 40, batch_size=None) -> dict:
    scalars, _ = read_events(runs_dir)
    if "time_per_step" not in scalars:
        raise SystemExit(f"error: {runs_dir} holds no time_per_step events (a training run's runs/ folder?)")
    steps = [(step, seconds) for step, seconds in scalars["time_per_step"] if step > skip]
    if not steps:
        raise SystemExit(f"error: {runs_dir} has no steps after --skip {skip}")
    waits = dict(scalars.get("time_data_wait", []))
    median = statistics.median(seconds for _, seconds in steps)
    result = {"steps": len(steps), "time_per_step_median": round(median, 5),
              "time_per_step_min": round(min(seconds for _, seconds in steps), 5)}
    known = [waits[step] for step, _ in steps if step in waits]
    if known:
        result["time_data_wait_median"] = round(statistics.median(known), 5)
    if batch_size:
        result["samples_per_s"] = round(batch_size / median, 1)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs_dir", type=Path, help="a run's TensorBoard folder, e.g. logs/GEN/runs")
    p.add_argument("--skip", type=int, default=40, help="leave out the first steps (compilation, start-up)")
    p.add_argument("--batch_size", type=int, default=None, help="the run's --batch_size, for samples/s")
    args = p.parse_args(argv)
    print(json.dumps(step_times(args.runs_dir, args.skip, args.batch_size)))


if __name__ == "__main__":
    main()
