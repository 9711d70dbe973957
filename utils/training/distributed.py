"""Where training runs: CPU, one GPU, DataParallel over ``--device_ids``, or one process per device
under ``torchrun`` - one code path for all of them.

``setup`` picks the devices (and joins the process group when ``RANK`` is set), ``wrap`` puts the model
in the matching wrapper, ``reduce_sum`` adds a small tensor over processes. Rank 0 alone logs and saves.

Under torchrun every rank draws its own batches as a pure function of ``(seed, step, rank)``
(``utils/data/hotel.plan_step``): this per-rank plan replaces a DistributedSampler (independent draws
per rank instead of a partition of a fixed epoch - training here has no epochs), and it is why a
checkpoint needs no per-rank state and resumes under any world size.
"""
import datetime
import inspect
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn


class DeviceError(ValueError):
    """A device request this machine cannot satisfy; the message says which and how to fix it."""


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    device_ids: tuple = ()  # more than one: DataParallel over these GPUs (single process)
    rank: int = 0
    world: int = 1
    distributed: bool = False  # launched by torchrun: DistributedDataParallel, one process per device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def splits(self) -> int:
        """How many replicas share one process's batch (DataParallel splits it along hotels)."""
        return max(len(self.device_ids), 1)

    def describe(self) -> str:
        if self.distributed:
            return f"rank {self.rank} of {self.world} on {self.device}"
        if len(self.device_ids) > 1:
            return f"DataParallel over cuda:{', cuda:'.join(map(str, self.device_ids))}"
        return str(self.device)


def _check_gpus(ids: Sequence[int]) -> None:
    if not torch.cuda.is_available():
        raise DeviceError(f"--device_ids {' '.join(map(str, ids))} asks for CUDA but no CUDA device is "
                          f"available here; omit --device_ids (or pass it with no ids) to train on CPU")
    count = torch.cuda.device_count()
    missing = [i for i in ids if not 0 <= i < count]
    if missing:
        raise DeviceError(f"--device_ids names GPU {missing[0]} but only {count} GPU(s) are visible "
                          f"(ids 0..{count - 1}); check CUDA_VISIBLE_DEVICES")
    if len(set(ids)) != len(ids):
        raise DeviceError(f"--device_ids lists a GPU twice: {' '.join(map(str, ids))}")


def setup(device_ids: Optional[Sequence[int]]) -> Runtime:
    """Devices for this process. ``device_ids``: None = all visible GPUs (or CPU), [] = CPU."""
    if "RANK" in os.environ:
        return _setup_distributed(device_ids)
    if device_ids is None:
        device_ids = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    if not device_ids:
        return Runtime(torch.device("cpu"))
    _check_gpus(device_ids)
    return Runtime(torch.device("cuda", device_ids[0]), tuple(device_ids) if len(device_ids) > 1 else ())


def _setup_distributed(device_ids: Optional[Sequence[int]]) -> Runtime:
    """One process per device, launched by torchrun (which sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_*).

    On GPUs, local rank i uses ``device_ids[i]`` (default: GPU i) and NCCL; with no GPU, or with
    ``--device_ids`` given empty, every rank runs on CPU with gloo.
    """
    rank, world = int(os.environ["RANK"]), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() if device_ids is None else bool(device_ids)
    if use_cuda:
        ids = list(device_ids) if device_ids else list(range(torch.cuda.device_count()))
        _check_gpus(ids)
        if local_rank >= len(ids):
            raise DeviceError(f"local rank {local_rank} has no GPU: {len(ids)} listed/visible; start at most "
                              f"{len(ids)} processes per node (torchrun --nproc_per_node)")
        device = torch.device("cuda", ids[local_rank])
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=rank, world_size=world)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(minutes=30))
    return Runtime(device, (), rank, world, True)


# The buffers are constant graph indices, built identically everywhere, and the baseline's running view
# statistics, which training never reads (it standardises with each process's batch statistics; evaluation
# and checkpoints use rank 0's): no need to sync them at every forward (forward_sync_buffers=False still
# broadcasts them once at the start, which is harmless). torch 2.13 renamed the option; the old name warns
# from then on.
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


def wrap(model: nn.Module, runtime: Runtime) -> nn.Module:
    """The model as this runtime trains it; ``models.scene.unwrap`` gives the bare model back."""
    if runtime.distributed:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        # With one DRAW layer the canvas stays zero, so its convolution is skipped and its weight gets no
        # gradient: DDP must then look for unused parameters (a graph walk per step, so only then).
        unused = getattr(getattr(model, "config", None), "layers", None) == 1
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused,
                                                   **_NO_BUFFER_SYNC)
    if len(runtime.device_ids) > 1:
        return nn.DataParallel(model, device_ids=list(runtime.device_ids))
    return model


def reduce_sum(tensor: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (a no-op in a single process)."""
    if runtime.distributed:
        dist.all_reduce(tensor)
    return tensor


def same_everywhere(value: int, runtime: Runtime) -> bool:
    """Whether every process holds the same ``value`` (True in a single process)."""
    if not runtime.distributed:
        return True
    bounds = torch.tensor([value, -value], device=runtime.device)
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX)  # (max, -min)
    return int(bounds[0]) == -int(bounds[1])


def gather_objects(value, runtime: Runtime) -> list:
    """``[value of rank 0, value of rank 1, ...]``: picklable values from every process."""
    if not runtime.distributed:
        return [value]
    values = [None] * runtime.world
    dist.all_gather_object(values, value)
    return values


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def shutdown(runtime: Optional[Runtime]) -> None:
    if runtime is not None and runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()
