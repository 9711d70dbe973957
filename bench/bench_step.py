"""Time full training steps (forward, backward, Adam) of the scene model on synthetic batches of the
real shapes, against the naive reference in ``bench/naive.py``.

    python -m bench.bench_step --batch_size 4 --layers 8 --img_size 64 --grid 1 [--baseline]
        [--device cpu|cuda] [--steps N] [--amp] [--compile [MODE]] [--channels_last] [--cudnn_benchmark]
        [--no-naive] [--profile ROWS]

``batch_size`` mazes make ``batch_size // grid^2`` hotels of ``grid^2`` mazes, each maze with
``--context_views`` context views and one query, poses inside its cell of the hotel. After warm-up the
optimised and the naive step alternate (A B B A ...) so both see the same machine load; medians are
reported. The last line printed is one JSON object.

Notes: ``--amp`` (bf16 autocast) applies to both models, ``--compile`` and ``--channels_last`` only to
ours (the naive reference always runs eager, in the default NCHW layout). On CPU ``peak_mem_mb`` is the
process's peak RSS after our model's warm-up, taken before the naive model exists; on CUDA it is
``max_memory_allocated`` over our steps.
FLOPs (CUDA, or ``--flops`` on CPU) are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one
eager forward + backward of our model, and so are the aten ops it dispatches (``aten_ops_fwd_bwd``: what
an eager step launches, apart from Adam's few fused kernels).
"""
import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.naive import NaiveSceneModel
from models.gqn import POSE_DIM
from models.scene import SceneModel, ModelConfig
from models.structure import CELL
from utils.training import optimizer

# Dense bf16 tensor-core peak, TFLOP/s, by a substring of torch.cuda.get_device_name (first match wins).
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))
# The CPU speed target: median step at most this fraction of the naive one, at this config.
CPU_TARGET_RATIO = 0.5
CPU_TARGET_CONFIG = dict(batch_size=4, layers=8, img_size=64, grid=1, amp=False)
SIGMA = 0.7  # pixel standard deviation; any constant will do for timing
WORLD_MAZES = 5


def bf16_peak_tflops(device: torch.device):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def synthetic_batch(batch_size: int, grid: int, img_size: int, context_views: int, device, seed: int = 0):
    """A hotel batch of the real shapes: (N, M*C, 3, S, S), (N, M*C, 7), (N, M, 3, S, S), (N, M, 7),
    origin (N, 2); poses of maze m lie inside its cell of the hotel."""
    mazes = grid * grid
    hotels = batch_size // mazes
    if hotels < 1:
        raise ValueError(f"batch_size {batch_size} holds no {grid}x{grid} hotel")
    g = torch.Generator().manual_seed(seed)
    views = context_views + 1
    frames = torch.rand(hotels, mazes, views, 3, img_size, img_size, generator=g)
    origin = -CELL / 2 + torch.rand(hotels, 2, generator=g) * CELL * (WORLD_MAZES - grid)
    index = torch.arange(mazes)
    cells = torch.stack([index % grid, index // grid], dim=-1).float()  # (M, 2) maze (i, j)
    xy = origin[:, None, None] + CELL * (cells[None, :, None] + torch.rand(hotels, mazes, views, 2, generator=g))
    height = 0.1 * torch.rand(hotels, mazes, views, 1, generator=g)
    yaw = 2 * math.pi * torch.rand(hotels, mazes, views, 1, generator=g)
    pitch = 0.2 * (torch.rand(hotels, mazes, views, 1, generator=g) - 0.5)
    poses = torch.cat([xy, height, yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin()], dim=-1)
    assert poses.shape[-1] == POSE_DIM
    tensors = (frames[:, :, :-1].flatten(1, 2), poses[:, :, :-1].flatten(1, 2), frames[:, :, -1],
               poses[:, :, -1], origin)
    return tuple(t.to(device) for t in tensors) + (grid,)


class Stepper:
    """One model, the training script's optimizer (fused Adam), and a timed training step."""

    def __init__(self, model, batch, device, amp: bool):
        self.model, self.batch, self.device, self.amp = model, batch, device, amp
        self.optimizer = optimizer.adam(model.parameters(), lr=5e-4)

    def loss(self, model=None):
        model = model or self.model
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            losses = model(*self.batch, SIGMA)
        return losses.loss.float().mean()

    def step(self) -> float:
        sync(self.device)
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss().backward()
        self.optimizer.step()
        sync(self.device)
        return time.perf_counter() - start


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched: eager, about one kernel launch each (views aside)."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def count_work(stepper: Stepper, model):
    """FLOPs and aten ops of one eager forward + backward: (flops, ops)."""
    from torch.utils.flop_counter import FlopCounterMode
    flops, ops = FlopCounterMode(display=False), OpCounter()
    with flops, ops:
        stepper.loss(model).backward()
    stepper.optimizer.zero_grad(set_to_none=True)
    return flops.get_total_flops(), ops.ops


def profile_table(stepper: Stepper, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if stepper.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        stepper.step()
    sort = "self_cuda_time_total" if stepper.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


def add_model_args(p: argparse.ArgumentParser, batch_size: int, layers: int, device: str) -> None:
    """The model, batch and device flags (this benchmark's and bench_ops.py's), with these defaults."""
    p.add_argument("--batch_size", type=int, default=batch_size, help="mazes per step (one query each)")
    p.add_argument("--layers", type=int, default=layers, help="DRAW layers L")
    p.add_argument("--img_size", type=int, default=64, choices=(16, 32, 64))
    p.add_argument("--grid", type=int, default=1, help="k for k x k hotels")
    p.add_argument("--baseline", action="store_true", help="GQN summed composer instead of the GEN")
    p.add_argument("--context_views", type=int, default=8, help="context views per maze")
    p.add_argument("--device", choices=("cpu", "cuda"), default=device)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, batch_size=4, layers=8, device="cpu")
    p.add_argument("--steps", type=int, default=5, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per model (default 1, 3 with --compile)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (both models)")
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                   help="torch.compile our model (optionally with this mode)")
    p.add_argument("--channels_last", action="store_true",
                   help="our model's weights in channels-last (NHWC) layout, as training on a GPU uses")
    p.add_argument("--cudnn_benchmark", action="store_true",
                   help="torch.backends.cudnn.benchmark: cuDNN times its algorithms for each shape once, keeps the "
                        "fastest (both models; training does not set it)")
    p.add_argument("--no-naive", dest="naive", action="store_false", help="skip the naive reference")
    p.add_argument("--flops", action="store_true", help="count FLOPs on CPU too (always on CUDA; also the naive model's)")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="after timing, print torch.profiler tables (top ROWS by self time) of one step each")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    if args.amp and device.type != "cuda":
        print("note: --amp is meant for CUDA; running bf16 autocast on CPU", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    warmup = args.warmup if args.warmup is not None else (3 if args.compile else 1)
    load_before = os.getloadavg()

    cfg = ModelConfig(img_size=args.img_size, layers=args.layers, baseline=args.baseline)
    batch = synthetic_batch(args.batch_size, args.grid, args.img_size, args.context_views, device, args.seed)
    torch.manual_seed(args.seed)
    eager = SceneModel(cfg).to(device)
    if args.channels_last:
        eager.to(memory_format=torch.channels_last)
    model = torch.compile(eager, dynamic=False, mode=args.compile) if args.compile else eager
    ours = Stepper(model, batch, device, args.amp)
    for _ in range(warmup):
        ours.step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    peak_mem = None if device.type == "cuda" else peak_rss_mb()

    naive = None
    if args.naive:
        naive_model = NaiveSceneModel(cfg).to(device)
        naive_model.load_state_dict(eager.state_dict())
        naive = Stepper(naive_model, batch, device, args.amp)
        for _ in range(warmup):
            naive.step()

    times, naive_times = [], []
    for i in range(args.steps):
        # A B B A: neither model always runs first after the other.
        pair = (ours, naive) if i % 2 == 0 else (naive, ours)
        for stepper in pair:
            if stepper is None:
                continue
            if stepper is ours and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = stepper.step()
            if stepper is ours:
                times.append(seconds)
                if device.type == "cuda":
                    peak_mem = max(peak_mem or 0, torch.cuda.max_memory_allocated(device) / 2 ** 20)
            else:
                naive_times.append(seconds)

    median = statistics.median(times)
    result = {
        "step_s_median": round(median, 4),
        "step_s_min": round(min(times), 4),
        "samples_per_s": round(args.batch_size / median, 3),
        "peak_mem_mb": round(peak_mem, 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "config": {k: getattr(args, k) for k in ("batch_size", "layers", "img_size", "grid", "baseline",
                                                  "context_views", "steps", "amp", "compile", "channels_last",
                                                  "cudnn_benchmark")}
        | {"warmup": warmup, "threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    result["steps_s"] = [round(t, 3) for t in times]
    if naive is not None:
        result["naive_steps_s"] = [round(t, 3) for t in naive_times]
        naive_median = statistics.median(naive_times)
        result["naive_step_s_median"] = round(naive_median, 4)
        result["speedup_vs_naive"] = round(naive_median / median, 3)
        # Each of our steps over the naive step run next to it: steadier than a ratio of medians
        # when the machine's load drifts.
        result["paired_ratio_median"] = round(statistics.median(a / b for a, b in zip(times, naive_times)), 3)
    if device.type == "cuda" or args.flops:
        flops, result["aten_ops_fwd_bwd"] = count_work(ours, eager)
        result["gflop_per_step"] = round(flops / 1e9, 1)
        result["tflops"] = round(flops / median / 1e12, 3)
        if naive is not None:
            result["naive_gflop_per_step"] = round(count_work(naive, naive.model)[0] / 1e9, 1)
        peak = bf16_peak_tflops(device)
        if device.type == "cuda":
            result["fraction_of_bf16_peak"] = round(result["tflops"] / peak, 4) if peak else None
    target = CPU_TARGET_CONFIG | {"device": "cpu", "baseline": False}
    if naive is not None and all(getattr(args, k, None) == v for k, v in target.items() if k != "device") \
            and device.type == "cpu":
        ratio = median / result["naive_step_s_median"]
        result["cpu_target"] = {"ratio_vs_naive": round(ratio, 3), "limit": CPU_TARGET_RATIO,
                                "met": ratio <= CPU_TARGET_RATIO}
        print(f"CPU target (median step <= {CPU_TARGET_RATIO}x naive at batch 4, L 8, 64x64, 1x1, fp32): "
              f"{'MET' if ratio <= CPU_TARGET_RATIO else 'NOT MET'} (ratio {ratio:.3f})")
    result["load_avg"] = {"before": [round(x, 2) for x in load_before],
                          "after": [round(x, 2) for x in os.getloadavg()]}

    if args.profile:
        for name, stepper in (("ours", ours), ("naive", naive)):
            if stepper is not None:
                print(f"--- torch.profiler, one training step, {name} ---")
                print(profile_table(stepper, args.profile))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(parse_args())
