"""Training-loader benchmark: batches the training DataLoader delivers per second with ``--workers N``.

It builds exactly what ``train_scene_rendering.py`` iterates (``HotelSteps`` through ``step_loader``:
one whole k x k hotel batch per step, ``--workers`` processes, pinned memory with
``--pin_memory``) and times the steady state: the first ``--warmup`` batches (worker start-up, first
file reads) are not counted. Compare ``samples_per_s`` with ``bench_step.py``'s ``samples_per_s`` at
the same batch size: the loader keeps the GPU fed when it is the larger.

    python -m bench.bench_loader --data_dir DIR --workers 8 --batch_size 36 [--img_size 64] [--grids 1 2]

The last line printed is one JSON object.
"""
import argparse
import json
import os
import time

from bench.bench_data import add_data_dir
from utils.data.episodes import EpisodeError
from utils.data.hotel import HotelSteps, step_loader


def add_loader_args(p: argparse.ArgumentParser) -> None:
    """The training loader's settings (what ``training_steps`` and ``step_loader`` take)."""
    add_data_dir(p)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes, as in training")
    p.add_argument("--batch_size", type=int, default=36, help="mazes per step, as in training")
    p.add_argument("--img_size", type=int, default=64)
    p.add_argument("--context_views", type=int, default=8)
    p.add_argument("--grids", type=int, nargs="+", default=[1, 2], help="train grids k drawn per step")
    p.add_argument("--steps", type=int, default=60, help="timed batches")
    p.add_argument("--warmup", type=int, default=None, help="untimed first batches (default: 2 per worker, at least 2)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_loader", description=__doc__.split("\n")[0])
    add_loader_args(p)
    p.add_argument("--pin_memory", action="store_true", help="pinned batches, as training on a GPU uses")
    return p.parse_args(argv)


def training_steps(args) -> HotelSteps:
    """The training loader's dataset for these arguments; bad arguments exit with a one-line error."""
    if args.workers < 0 or args.steps < 1:
        raise SystemExit("error: --workers must be >= 0 and --steps >= 1")
    try:
        steps = HotelSteps(args.data_dir, args.img_size, args.batch_size, args.grids, args.context_views, seed=0)
    except EpisodeError as error:
        raise SystemExit(f"error: {error} (pass --data_dir DIR with *.pt / *.pt.gz episodes)")
    too_big = [k for k in args.grids if not 1 <= k * k <= min(args.batch_size, len(steps.paths))]
    if too_big:
        k = too_big[0]
        raise SystemExit(f"error: a {k}x{k} hotel needs {k * k} distinct mazes: more than --batch_size "
                         f"{args.batch_size} or the {len(steps.paths)} episodes in {args.data_dir}")
    return steps


def warmup_batches(args) -> int:
    """Untimed first batches: ``--warmup``, by default 2 per worker (their start-up), at least 2."""
    warmup = args.warmup if args.warmup is not None else max(2, 2 * args.workers)
    if warmup < 1:
        raise SystemExit("error: --warmup must be >= 1 (the clock starts when the last warm-up batch arrives)")
    return warmup


def main(args) -> dict:
    steps = training_steps(args)
    warmup = warmup_batches(args)
    loader = step_loader(steps, range(warmup + args.steps), args.workers, pin_memory=args.pin_memory)
    samples = 0
    for i, batch in enumerate(loader):
        if i >= warmup:  # each timed batch arrived after the clock started
            samples += batch.query_frames.shape[0] * batch.query_frames.shape[1]
        elif i == warmup - 1:
            start = time.perf_counter()
    seconds = time.perf_counter() - start
    result = {
        "samples_per_s": round(samples / seconds, 1),
        "batches_per_s": round(args.steps / seconds, 2),
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "config": {k: getattr(args, k) for k in ("batch_size", "img_size", "context_views", "grids", "steps",
                                                  "pin_memory")} | {"warmup": warmup, "episodes": len(steps.paths)},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(parse_args())
