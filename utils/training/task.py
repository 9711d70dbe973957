"""A task: what a training script trains, as the shared loop (``utils/training/loop.py``) needs to know it.

The loop owns the data (``HotelSteps`` batches, the same for every task), the devices, the optimizer and its
learning-rate schedule, checkpoints, resuming, signals, recoveries and the step-independent scalars
(``train/loss``, ``train/loss_{k}x{k}``, ``grad_norm``, ``lr``, timings). A task owns its model and what is
particular to it: the loss of a batch, per-step metrics, the test evaluation and their summaries.

Per-step metrics are 0-d device tensors: the loop stacks them with its own, sums them over the ranks and
reads them one step late (no host sync per step), then hands the sums back to ``log_step``.
"""
from typing import Dict, Tuple

import torch

LR_FLAGS = ("lr", "lr_final", "lr_steps")  # the learning-rate schedule's flags, every task's


class Task:
    name = ""  # recorded in checkpoints ("task"); a checkpoint of another task is refused
    prog = ""  # the training script, which starts each message
    # The flags that define what a run trains (``loop.changed_flags``): a resumed run keeps them. Those of
    # ``shape_flags`` shape the weights: no run may change them.
    shape_flags: Tuple[str, ...] = ("baseline", "img_size")
    run_flags: Tuple[str, ...] = ()
    # Switches the original implementation did not have: an original checkpoint trains on with them off.
    original_off: Tuple[str, ...] = ("memory_norm",)
    lr_flags: Tuple[str, ...] = LR_FLAGS
    metric_names: Tuple[str, ...] = ()  # the keys of ``step_metrics``, in order

    def __init__(self, args):
        self.args = args

    def describe(self) -> str:
        """What is trained, for the first line of a run ("GEN", "GQN baseline", ...)."""
        raise NotImplementedError

    def build_model(self) -> torch.nn.Module:
        """The model, on the CPU, from ``self.args`` (the loop has seeded torch)."""
        raise NotImplementedError

    def trainable(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training step calls with ``batch.model_inputs`` (and ``step_inputs``), before the
        loop wraps it for the devices; its outputs must be tensors for DataParallel to gather them."""
        return model

    def schedules(self, step: int) -> Dict[str, float]:
        """The task's own schedule values at ``step`` (beside the learning rate), logged every step."""
        return {}

    def step_inputs(self, schedule: Dict[str, float], device, compiled: bool) -> tuple:
        """Arguments the training step passes after the batch's (from ``schedules(step)``)."""
        return ()

    def loss(self, output) -> torch.Tensor:
        """The batch's mean loss (0-d float32) from the training step's output."""
        raise NotImplementedError

    def step_metrics(self, output, model: torch.nn.Module, is_main: bool) -> Dict[str, torch.Tensor]:
        """``metric_names`` -> detached 0-d tensors, after the backward pass (gradients are there)."""
        return {}

    def log_step(self, writer, step: int, grid: int, metrics: Dict[str, float], world: int, finite: bool):
        """TensorBoard scalars of one step: ``metrics`` summed over the ``world`` ranks."""

    def after_step(self, trainer, metrics: Dict[str, float], finite: bool):
        """Checks on each step's outcome (in step order, identical on every rank)."""

    def progress(self, loss: float) -> str:
        """The progress bar's loss (the mean over the ranks)."""
        return f"{loss:.1f}"

    def evaluate(self, trainer, writer, train_batch):
        """Test metrics and images (rank 0, model in eval mode, no gradients; ``trainer.test_batches``: one
        fixed ``HotelBatch`` per --test_grids size; ``train_batch``: the last step's, or None at step 0)."""

    def checkpoint_extras(self, step: int) -> dict:
        """Entries a checkpoint holds beside the loop's."""
        return {}
