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

from utils.command import number
from utils.training import cli, loop, schedules
from utils.training.render import RenderTask

PROG = RenderTask.prog


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


def main(argv=None) -> int:
    return loop.run(PROG, parse_args(argv), RenderTask)


if __name__ == "__main__":
    sys.exit(main())
