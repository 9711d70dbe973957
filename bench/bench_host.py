"""Does the training loader slow the training process's host? A stand-in for a host-bound training loop,
timed with and without the loader running beside it.

On a GPU the eager training step is host-bound (docs/benchmarks.md): its pace is
the rate at which the host launches kernels, and that rate fell by about a quarter with a DataLoader
beside it. The stand-in loop: each iteration copies one training batch to the device
(``HotelBatch.model_inputs``) and then makes ``--ops`` one-element kernel launches (an eager bf16 step at
the paper's size dispatches about 3,300 aten ops: ``bench_step.py``'s ``aten_ops_fwd_bwd``). Setups:

  alone       no loader: the same pinned batch every iteration
  main_pin    the training loader's workers, no pin-memory thread: the main thread takes each batch and
              pins it itself (on CUDA)
  pin_thread  the training loader exactly as the CLI builds it (``step_loader``, pinned on CUDA: the
              DataLoader's pin-memory thread; without CUDA or with --workers 0 there is none, and this
              equals main_pin)
  alone       again, to see drift

Per setup, medians over ``--steps`` iterations after ``--warmup``: ``launch_ms`` (copy + launches, host
time) and ``fetch_ms`` (taking the next batch, and pinning it in main_pin). Reading:
launch_ms(main_pin) - launch_ms(alone) is what the workers cost the main thread (cores, clock, memory);
launch_ms(pin_thread) - launch_ms(main_pin) what the pin-memory thread costs it; fetch_ms(main_pin) what
pinning in the main thread would add to a step.

    python -m bench.bench_host --data_dir DIR --workers 12 --batch_size 36 [--device cuda] [--ops 3300]

The last line printed is one JSON object.
"""
import argparse
import json
import statistics
import time

import torch

from bench.bench_loader import add_loader_args, training_steps, warmup_batches
from utils.data.hotel import step_loader

SETUPS = ("alone", "main_pin", "pin_thread", "alone")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_host", description=__doc__.split("\n")[0])
    add_loader_args(p)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ops", type=int, default=3300, help="one-element kernel launches per iteration")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.ops < 1:
        p.error("--ops must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    return args


def pinned(batch):
    return type(batch)(*(t.pin_memory() if isinstance(t, torch.Tensor) else t for t in batch))


def time_setup(setup: str, steps, args, device) -> dict:
    cuda = device.type == "cuda"
    warmup = warmup_batches(args)
    batches = None
    if setup == "alone":
        fixed = steps[0]
        fixed = pinned(fixed) if cuda else fixed
    else:
        # More steps than are timed: the workers keep working (2 batches ahead each) to the last timed one.
        loader = step_loader(steps, range(warmup + args.steps + 2 * args.workers), args.workers,
                             pin_memory=cuda and setup == "pin_thread")
        batches = iter(loader)
    x = torch.zeros(1, device=device)
    launch, fetch = [], []
    for i in range(warmup + args.steps):
        start = time.perf_counter()
        if batches is None:
            batch = fixed
        else:
            batch = next(batches)
            if cuda and setup == "main_pin":
                batch = pinned(batch)
        fetched = time.perf_counter()
        batch.model_inputs(device)
        for _ in range(args.ops):
            x.add_(1)
        done = time.perf_counter()
        if cuda:
            torch.cuda.synchronize(device)  # the launches are tiny: the GPU is idle again before the next
        if i >= warmup:
            fetch.append(fetched - start)
            launch.append(done - fetched)
    return {"setup": setup, "launch_ms": round(1e3 * statistics.median(launch), 2),
            "fetch_ms": round(1e3 * statistics.median(fetch), 2)}


def main(args) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = training_steps(args)
    results = [time_setup(setup, steps, args, device) for setup in SETUPS]
    for row in results:
        print(f"{row['setup']:>10}: launches {row['launch_ms']:8.2f} ms, fetch {row['fetch_ms']:8.2f} ms")
    result = {
        "setups": results,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config": {k: getattr(args, k) for k in ("workers", "batch_size", "img_size", "context_views", "grids",
                                                  "steps", "ops")} | {"threads": torch.get_num_threads()},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(parse_args())
