"""Train a GEN (or with ``--baseline`` the GQN baseline) to render k x k hotels of mazes.

    python train_scene_rendering.py --steps 200                      # CPU, one GPU, or all visible GPUs
    python train_scene_rendering.py --device_ids 0 1 2 3             # DataParallel in one process
    torchrun --nproc_per_node 4 train_scene_rendering.py ...         # DistributedDataParallel

What a step sees (episodes, views, grid, shift), its DRAW noise, the learning rate and the pixel sigma
are pure functions of (seed, step, rank), so a checkpoint needs only the step to continue the same run.
SIGTERM / Ctrl-C finish the steps already queued (one or two), save a checkpoint and exit 0; ``--saved_model auto``
picks it up again.
"""
import sys

from utils.training import schedules
from utils.command import number
from utils.training import cli, loop
from utils.training.cli import AUTO, COMPILE_MODES  # noqa: F401 - names this script always had
from utils.training.loop import (DISK_FULL, DUMP_ENV, MAX_RECOVERIES, QueuedStep, StopRequest,  # noqa: F401
                                 TrainingError, check_batch, count_episodes, default_workers, noise_seed, plain,
                                 to_cpu)
from utils.training.render import RenderTask

PROG = RenderTask.prog

# Tests only: ``_loss_hook(step, loss) -> loss`` replaces the step's loss (to inject NaN); never a CLI flag.
_loss_hook = None

# The flags that define what a run trains: its model, the batches it sees and its schedules. A resumed run keeps
# them; the others (steps, intervals, devices, speed, data folders, remedies) may change at any resume. A branch
# (a checkpoint trained on into another run folder) may change them too, except those that shape the weights.
SHAPE_FLAGS = RenderTask.shape_flags
LR_FLAGS = RenderTask.lr_flags
RUN_FLAGS = RenderTask.run_flags


def note(message: str) -> None:
    """One line on stderr that does not tear the progress bar."""
    loop.say(PROG, message)


# ----------------------------------------------------------------------------- command line

def _model_flags(model):
    cli.add_baseline(model)
    model.add_argument("--layers", type=number(int, 0), default=8, help="DRAW layers (GQN paper: 12)")
    cli.add_memory_norm(model)


def _sigma_flags(train):
    positive, rate = number(int, 0), number(float, 0)
    train.add_argument("--sigma", type=rate, default=schedules.SIGMA, help="initial pixel standard deviation")
    train.add_argument("--sigma_final", type=rate, default=schedules.SIGMA_FINAL, help="pixel sigma after --sigma_steps")
    train.add_argument("--sigma_steps", type=positive, default=schedules.SIGMA_STEPS, help="pixel-sigma annealing steps")


def build_parser():
    return cli.build_parser(PROG, __doc__.split("\n\n")[0], _model_flags, _sigma_flags)


def parse_args(argv=None):
    return cli.parse_args(build_parser(), argv)


def changed_flags(saved: dict, args) -> dict:
    """{name: "--flag now (its run: then)"} for each of ``RUN_FLAGS`` that differs from a checkpoint's saved args."""
    return loop.changed_flags(saved, args, RUN_FLAGS)


class Trainer(loop.Trainer):
    """The shared loop (utils/training/loop.py) training a renderer (utils/training/render.py)."""

    def __init__(self, args, runtime):
        super().__init__(RenderTask(args), args, runtime)

    def sigma(self, step: int) -> float:
        return self.task.sigma(step)

    def loss_hook(self, step, loss):
        return loss if _loss_hook is None else _loss_hook(step, loss)


def main(argv=None) -> int:
    return loop.run(PROG, parse_args(argv), Trainer)


if __name__ == "__main__":
    sys.exit(main())
