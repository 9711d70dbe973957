"""The training optimizer: Adam that skips a non-finite step on the device, without a host sync.

A step whose loss or gradient norm is not finite must leave the weights and Adam's moments untouched.
Deciding that on the host would cost a GPU->CPU sync every step (the GPU drains while the host waits).
PyTorch's fused Adam takes the decision on the device: given ``found_inf`` (the mechanism
``torch.amp.GradScaler`` uses) it leaves a flagged step out entirely. It computes the same update as
the default Adam to float rounding, in fewer passes over the weights.
"""
import torch


def adam(params, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, fused=True)


def step_unless(optimizer: torch.optim.Adam, nonfinite: torch.Tensor) -> None:
    """``optimizer.step()``, left out on the device where ``nonfinite`` (a 0-d float tensor) is not 0."""
    optimizer.found_inf = nonfinite
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf


def load_adam_state(optimizer: torch.optim.Adam, state: dict) -> None:
    """Load a saved Adam state (also one saved by the plain, unfused Adam of older checkpoints) so that the
    optimizer stays fused: ``load_state_dict`` takes the saved groups' options, and only a fused group
    has its step counters moved onto the parameters' device, where the fused kernel needs them."""
    groups = [{**group, "fused": True, "foreach": None} for group in state["param_groups"]]
    optimizer.load_state_dict({**state, "param_groups": groups})
    # Checkpoints store plain (contiguous) tensors, while a GPU run keeps channels-last weights: the fused
    # kernel needs each moment in its parameter's layout (on CUDA it refuses a mismatch, on the CPU it
    # would silently compute a wrong update).
    for param, moments in optimizer.state.items():
        for key, value in moments.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                moments[key] = torch.empty_like(param).copy_(value)
