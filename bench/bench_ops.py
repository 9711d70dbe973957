"""Where a training step's arithmetic goes, and how fast each of its heavy operations runs on its own.

    python -m bench.bench_ops --batch_size 36 --layers 12 --img_size 64 --grid 1 --device cuda --amp \
        --channels_last [--pad 8] [--cudnn_benchmark] [--rows 30]

One eager forward + backward of the scene model (as in ``bench_step.py``) is recorded at the aten level:
every call of an operation that ``torch.utils.flop_counter`` counts (convolutions and their backward,
matrix products) with its shapes, strides, dtype and arguments. Each distinct call is then replayed on
its own with fresh random tensors and timed, so the table says, per operation, how many calls a step
makes, how long they take and the TFLOP/s they reach: which convolutions keep the step below the GPU's
peak. ``--pad P`` also times each convolution with its channel counts rounded up to a multiple of P, as
zero-padded weights would run it (cuDNN pads channel counts that are not multiples of 8 itself, in
extra kernels). Each plain convolution is also timed as the matrix products of its implicit GEMM (column
"GEMM ms/call"): what cuBLAS makes of the same arithmetic. The table comes first, slowest first; the
last line printed is one JSON object.

The replayed times leave out everything else a step does (element-wise work, Adam, launches), so their
sum is a lower bound of the step's GPU time. A compiled step leaves convolutions and matrix products to
the same cuDNN and cuBLAS calls, but may feed them other memory layouts.
"""
import argparse
import json
import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from bench.bench_step import Stepper, add_model_args, bf16_peak_tflops, sync, synthetic_batch
from models.scene import ModelConfig, SceneModel

CONVOLUTIONS = (torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default)


class TensorSpec(tuple):
    """(shape, stride, dtype) of a recorded tensor argument."""

    def __new__(cls, tensor: torch.Tensor):
        return super().__new__(cls, (tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype))

    def channels_last(self) -> bool:
        shape, stride, _ = self
        return len(shape) == 4 and stride == tuple(torch.empty(shape, device="meta").to(
            memory_format=torch.channels_last).stride())

    def make(self, device) -> torch.Tensor:
        shape, stride, dtype = self
        return torch.empty_strided(shape, stride, dtype=dtype, device=device).normal_()

    def with_dim(self, dim: int, size: int) -> "TensorSpec":
        """The same tensor with dimension ``dim`` resized, laid out in the same memory format."""
        shape = list(self[0])
        shape[dim] = size
        fmt = torch.channels_last if self.channels_last() else torch.contiguous_format
        return TensorSpec(torch.empty(shape, dtype=self[2], device="meta", memory_format=fmt))


def _freeze(value):
    if isinstance(value, torch.Tensor):
        return TensorSpec(value)
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_freeze(v) for v in value))
    return value


def _thaw(value, device):
    if isinstance(value, TensorSpec):
        return value.make(device)
    if isinstance(value, tuple) and value and value[0] == "list":
        return [_thaw(v, device) for v in value[1]]
    return value


class Recorder(TorchDispatchMode):
    """Counts each distinct call (op, frozen arguments) of the operations that carry FLOPs."""

    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._overloadpacket in flop_registry:
            assert not kwargs, f"{func}: keyword arguments are not recorded"
            self.calls[(func, tuple(_freeze(a) for a in args))] += 1
        return func(*args, **(kwargs or {}))


def record_step(stepper: Stepper, model) -> Counter:
    with Recorder() as recorder:
        stepper.loss(model).backward()
    stepper.optimizer.zero_grad(set_to_none=True)
    return recorder.calls


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded(func, args: tuple, multiple: int):
    """A convolution's arguments with its input and output channel counts rounded up to ``multiple``;
    None when there is nothing to pad (or it is grouped, or not a convolution)."""
    if func not in CONVOLUTIONS:
        return None
    args = list(args)
    backward = func is torch.ops.aten.convolution_backward.default
    x, w = (1, 2) if backward else (0, 1)  # positions of input and weight
    transposed, groups = args[x + 6], args[x + 8]
    # The weight is (C_out, C_in, ...) for a convolution and (C_in, C_out, ...) for a transposed one.
    c_in, c_out = (0, 1) if transposed else (1, 0)
    channels_in, channels_out = args[w][0][c_in], args[w][0][c_out]
    new_in, new_out = _round_up(channels_in, multiple), _round_up(channels_out, multiple)
    if groups != 1 or (new_in, new_out) == (channels_in, channels_out):
        return None
    args[x] = args[x].with_dim(1, new_in)
    args[w] = args[w].with_dim(c_in, new_in).with_dim(c_out, new_out)
    if backward:
        args[0] = args[0].with_dim(1, new_out)  # grad_output
        if args[3] is not None:
            args[3] = ("list", (new_out,))  # bias_sizes
    elif args[2] is not None:
        args[2] = args[2].with_dim(0, new_out)  # bias
    return func, tuple(args)


def as_gemms(func, args: tuple):
    """The matrix products a plain (not transposed, ungrouped) convolution amounts to, as implicit-GEMM
    kernels see it: M = batch x output pixels, N = output channels, K = input channels x kernel area. The
    backward has one product per gradient asked for (input: M x N by N x K; weight: N x M by M x K). Timing
    them says what cuBLAS reaches on the convolution's arithmetic, without the im2col traffic. None for
    other operations."""
    if func not in CONVOLUTIONS:
        return None
    backward = func is torch.ops.aten.convolution_backward.default
    x, w = (1, 2) if backward else (0, 1)
    if args[x + 6] or args[x + 8] != 1:  # transposed or grouped
        return None
    (batch, _, *size), weight = args[x][0], args[w][0]
    stride, padding, dilation = (args[x + i][1] for i in (3, 4, 5))
    pixels = 1
    for n, k, s, p, d in zip(size, weight[2:], stride, padding, dilation):
        pixels *= (n + 2 * p - d * (k - 1) - 1) // s + 1
    m, n, k = batch * pixels, weight[0], weight[1] * weight[2] * weight[3]
    dtype = args[x][2]

    def mm(rows, inner, cols):
        return torch.ops.aten.mm.default, (TensorSpec(torch.empty(rows, inner, dtype=dtype, device="meta")),
                                          TensorSpec(torch.empty(inner, cols, dtype=dtype, device="meta")))
    if not backward:
        return [mm(m, k, n)]
    wanted = args[-1][1]
    return [mm(m, n, k)] * wanted[0] + [mm(n, m, k)] * wanted[1]


def flops_of(func, args: tuple, device) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        func(*(_thaw(a, device) for a in args))
    return counter.get_total_flops()


def time_call(func, args: tuple, device, reps: int) -> float:
    """Seconds per call of func on fresh random tensors, after two warm-up calls."""
    real = [_thaw(a, device) for a in args]
    for _ in range(2):
        func(*real)
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        func(*real)
    sync(device)
    return (time.perf_counter() - start) / reps


def describe(func, args: tuple) -> str:
    """e.g. 'conv bwd 384->512 k5x5 s1 @16x16 (36) [in,w]' or 'mm 36x312 @ 312x65536'."""
    name = func._overloadpacket.__name__
    if func in CONVOLUTIONS:
        backward = func is torch.ops.aten.convolution_backward.default
        x, w = (1, 2) if backward else (0, 1)
        (batch, channels, *spatial), weight = args[x][0], args[w][0]
        transposed = args[x + 6]
        out = weight[1] if transposed else weight[0]
        kind = ("convT" if transposed else "conv") + (" bwd" if backward else "")
        stride = "x".join(map(str, args[x + 3][1]))
        text = f"{kind} {channels}->{out} k{'x'.join(map(str, weight[2:]))} s{stride} @{'x'.join(map(str, spatial))} " \
               f"({batch})"
        if backward:
            text += " [" + ",".join(n for n, wanted in zip(("in", "w", "b"), args[-1][1]) if wanted) + "]"
        return text
    shapes = [a[0] for a in args if isinstance(a, TensorSpec)]
    return f"{name} " + " @ ".join("x".join(map(str, s)) for s in shapes[-2:])


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_ops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, batch_size=36, layers=12, device="cuda")
    p.add_argument("--amp", action="store_true", help="bf16 autocast, as training with --amp")
    p.add_argument("--channels_last", action="store_true", help="weights channels-last, as training on a GPU")
    p.add_argument("--cudnn_benchmark", action="store_true", help="torch.backends.cudnn.benchmark")
    p.add_argument("--pad", type=int, default=0, metavar="P",
                   help="also time each convolution with channel counts rounded up to a multiple of P")
    p.add_argument("--reps", type=int, default=20, help="timed calls per distinct operation")
    p.add_argument("--rows", type=int, default=30, help="table rows printed (slowest first)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("batch_size", "layers", "context_views", "reps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.pad < 0:
        p.error("--pad must be 0 (off) or a positive multiple")
    return args


def main(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    batch = synthetic_batch(args.batch_size, args.grid, args.img_size, args.context_views, device, args.seed)
    torch.manual_seed(args.seed)
    model = SceneModel(ModelConfig(img_size=args.img_size, layers=args.layers, baseline=args.baseline)).to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    calls = record_step(Stepper(model, batch, device, args.amp), model)

    rows = []
    for (func, call_args), count in calls.items():
        seconds = time_call(func, call_args, device, args.reps)
        flops = flops_of(func, call_args, device)
        row = {"op": describe(func, call_args), "calls": count, "ms_per_call": seconds * 1e3,
               "ms_per_step": seconds * 1e3 * count, "gflop_per_step": flops * count / 1e9,
               "tflops": flops / seconds / 1e12}
        if gemms := as_gemms(func, call_args):
            row["gemm_ms_per_call"] = sum(time_call(*gemm, device, args.reps) for gemm in gemms) * 1e3
        if args.pad and (pad := padded(func, call_args, args.pad)):
            row["padded_ms_per_call"] = time_call(*pad, device, args.reps) * 1e3
        rows.append(row)
    rows.sort(key=lambda r: -r["ms_per_step"])

    total_ms = sum(r["ms_per_step"] for r in rows)
    total_gflop = sum(r["gflop_per_step"] for r in rows)
    columns = [("calls", "calls", "d"), ("ms/call", "ms_per_call", ".3f"), ("ms/step", "ms_per_step", ".2f"),
               ("GFLOP", "gflop_per_step", ".1f"), ("TFLOP/s", "tflops", ".1f"),
               ("GEMM ms/call", "gemm_ms_per_call", ".3f")]
    if args.pad:
        columns.append((f"pad {args.pad} ms/call", "padded_ms_per_call", ".3f"))
    print(f"{'operation':<48}" + "".join(f" {title:>14}" for title, _, _ in columns))
    for r in rows[:args.rows]:
        print(f"{r['op']:<48}" + "".join(f" {format(r[key], fmt) if key in r else '-':>14}" for _, key, fmt in columns))
    result = {"ops_ms_per_step": round(total_ms, 3), "gflop_per_step": round(total_gflop, 1),
              "tflops": round(total_gflop / total_ms, 2), "distinct_ops": len(rows),
              "calls": sum(calls.values()),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "config": {k: getattr(args, k) for k in ("batch_size", "layers", "img_size", "grid", "baseline",
                                                      "context_views", "amp", "channels_last", "cudnn_benchmark",
                                                      "pad", "reps")} | {"torch": torch.__version__}}
    plain = [r for r in rows if "gemm_ms_per_call" in r]  # the convolutions with a GEMM equivalent
    result["plain_convolutions_ms_per_step"] = round(sum(r["ms_per_step"] for r in plain), 3)
    result["as_gemms_ms_per_step"] = round(sum(r["gemm_ms_per_call"] * r["calls"] for r in plain), 3)
    peak = bf16_peak_tflops(device)
    if peak:
        result["fraction_of_bf16_peak"] = round(result["tflops"] / peak, 4)
    if args.pad:
        # The operations as they would run with every convolution padded (those with nothing to pad unchanged).
        result["padded_ops_ms_per_step"] = round(sum(r.get("padded_ms_per_call", r["ms_per_call"]) * r["calls"]
                                                     for r in rows), 3)
    print(json.dumps(result))  # the table above holds the rows
    return result | {"rows": rows}


if __name__ == "__main__":
    main(parse_args())
