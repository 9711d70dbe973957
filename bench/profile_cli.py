"""Where the training CLI's host time goes once it runs steadily: cProfile over a window of steps.

    python -m bench.profile_cli --skip 40 --steps 100 -- <train_scene_rendering.py arguments>

Runs the training script in this process (``runpy``) and profiles only steps skip+1 .. skip+steps (torch.compile's
compilation and the workers' start stay out), then prints the host time per step and the functions with
the most time of their own. With a GPU, time in ``Event.synchronize`` is the host waiting for the GPU
(the GPU sets the pace); the rest is host work, which the GPU waits for when it adds up to more than the
GPU's step. cProfile slows Python code down, so read the shares, not the absolute times.
"""
import argparse
import cProfile
import pstats
import runpy
import sys
from pathlib import Path

from utils.training import loop

SCRIPT = Path(__file__).resolve().parents[1] / "train_scene_rendering.py"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.profile_cli", description=__doc__.split("\n")[0])
    p.add_argument("--skip", type=int, default=40, help="steps before the profiled window")
    p.add_argument("--steps", type=int, default=100, help="steps profiled")
    p.add_argument("--rows", type=int, default=25, help="functions printed")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the training script's arguments")
    args = p.parse_args(argv)
    if args.train_args[:1] == ["--"]:
        args.train_args = args.train_args[1:]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    profiler = cProfile.Profile()
    queue = loop.Trainer.train_step
    started = 0

    def profiled(trainer, batch, stop):
        nonlocal started
        started += 1
        if started == args.skip + 1:
            profiler.enable()
        elif started == args.skip + args.steps + 1:
            profiler.disable()
        return queue(trainer, batch, stop)

    loop.Trainer.train_step = profiled
    argv, sys.argv = sys.argv, [str(SCRIPT), *args.train_args]
    try:  # the script as python runs it (not imported: bench depends on the library, not on entry scripts)
        runpy.run_path(str(SCRIPT), run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        profiler.disable()
        loop.Trainer.train_step = queue
        sys.argv = argv
    steps = min(max(started - args.skip, 0), args.steps)
    if steps == 0:
        raise SystemExit(f"error: the run took {started} steps, none after --skip {args.skip}")
    stats = pstats.Stats(profiler)
    print(f"profiled {steps} steps after the first {args.skip}: {stats.total_tt / steps * 1e3:.1f} ms of host "
          f"time per step under cProfile")
    stats.sort_stats("tottime").print_stats(args.rows)
    return code


if __name__ == "__main__":
    sys.exit(main())
