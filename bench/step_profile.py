"""Where one training step of the scene model goes: time and FLOPs of the Pool network, the GEN's message
passing (or GQN's sum) and the DRAW cores, each as forward + backward, beside the whole step (with Adam).

    python -m bench.step_profile                      # the memory experiment's configuration (CPU scale)
    python -m bench.step_profile --baseline --img_size 64 --layers 8 --context_views 8 --device cuda

Each part runs alone on the inputs it sees in a real step (synthetic batches of the real shapes, as
``bench.bench_step``): the Pool on every context view, the composer's remainder on fixed embeddings, the
renderer on a fixed r; medians of ``--steps`` timed repetitions after warm-up. ``other`` is the step minus
the parts: the optimizer, losses and glue. FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``
on one forward + backward. Prints a Markdown table, then one JSON object.
"""
import argparse
import json
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.bench_step import Stepper, sync, synthetic_batch
from models.scene import ModelConfig, SceneModel
from utils.command import number, torch_device

SIGMA = 0.7


def timed(run, device, steps: int, warmup: int = 2) -> float:
    """Median seconds of ``run()`` (forward + backward of one part)."""
    times = []
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def counted(run) -> float:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def parts(model: SceneModel, batch):
    """{part: a function running its forward + backward on the inputs a step gives it}."""
    context_frames, context_poses, query_frames, query_poses, origin, grid = batch
    composer = model.composer
    frames, poses = context_frames.flatten(0, 1), context_poses.flatten(0, 1)
    n, v = context_poses.shape[:2]
    with torch.no_grad():
        embeddings = composer.embedder(frames, poses).view(n, v, -1)
        r = model.represent(context_frames, context_poses, query_poses, origin, grid)
    x, q = query_frames.flatten(0, 1), query_poses.flatten(0, 1)
    memory_name = "GQN sum" if model.config.baseline else "message passing"

    def pool():
        composer.embedder(frames, poses).sum().backward()

    def memory():  # the composer on fixed embeddings: its own networks and reads, not the Pool
        fixed = embeddings.detach().requires_grad_()
        real = composer.embedder.forward
        composer.embedder.forward = lambda f, p: fixed.flatten(0, 1)
        try:
            composer(context_frames, context_poses, query_poses, origin, grid).sum().backward()
        finally:
            composer.embedder.forward = real

    def draw():
        model.elbo(x, q, r.detach().requires_grad_(), SIGMA).loss.mean().backward()

    return {"Pool network": pool, memory_name: memory, "DRAW cores": draw}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.step_profile", description=__doc__.split("\n\n")[0])
    positive = number(int, 0)
    p.add_argument("--img_size", type=int, default=16, choices=(16, 32, 64))
    p.add_argument("--layers", type=positive, default=2)
    p.add_argument("--batch_size", type=positive, default=8, help="mazes per step")
    p.add_argument("--grid", type=positive, default=1, help="k: hotels of k x k mazes")
    p.add_argument("--context_views", type=positive, default=32)
    p.add_argument("--baseline", action="store_true", help="the GQN baseline")
    p.add_argument("--steps", type=positive, default=10, help="timed repetitions per part")
    p.add_argument("--device", type=torch_device, default="cpu")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = args.device
    torch.manual_seed(0)
    model = SceneModel(ModelConfig(img_size=args.img_size, layers=args.layers, baseline=args.baseline)).to(device)
    batch = synthetic_batch(args.batch_size, args.grid, args.img_size, args.context_views, device)
    stepper = Stepper(model, batch, device, amp=False)
    step_s = timed(stepper.step, device, args.steps)
    step_flops = counted(lambda: stepper.loss().backward())
    rows = {name: (timed(run, device, args.steps), counted(run)) for name, run in parts(model, batch).items()}
    rows["other (Adam, losses, glue)"] = (step_s - sum(t for t, _ in rows.values()), None)
    print("| part | ms | share of the step | GFLOP | GFLOP/s |\n|---|---:|---:|---:|---:|")
    for name, (seconds, flops) in rows.items():
        gflop = f"{flops / 1e9:.1f}" if flops is not None else ""
        rate = f"{flops / seconds / 1e9:.1f}" if flops is not None and seconds > 0 else ""
        print(f"| {name} | {seconds * 1e3:.0f} | {seconds / step_s:.0%} | {gflop} | {rate} |")
    print(f"| whole step | {step_s * 1e3:.0f} | 100% | {step_flops / 1e9:.1f} | {step_flops / step_s / 1e9:.1f} |")
    result = {"config": {k: str(v) for k, v in vars(args).items()}, "threads": torch.get_num_threads(),
              "step_ms": step_s * 1e3, "step_gflop": step_flops / 1e9,
              "parts": {name: {"ms": s * 1e3, "gflop": None if f is None else f / 1e9} for name, (s, f) in rows.items()}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
