"""Train a GEN (or with ``--baseline`` the GQN baseline) to embed and classify: pick each query's view of k x k
hotels of mazes out of every view of its batch (the GEN paper's "GEN v/s GQN embedders").

    python train_embed_classify.py --steps 200                       # CPU, one GPU, or all visible GPUs
    python train_embed_classify.py --device_ids 0 1 2 3              # DataParallel in one process
    torchrun --nproc_per_node 4 train_embed_classify.py ...          # DistributedDataParallel

The model is models/embed_classify.py's; everything else is the renderer's training loop
(utils/training/loop.py): the same data and device flags, checkpoints, ``--saved_model PATH|auto``, exact
resume, SIGTERM / Ctrl-C (save and exit 0), recovery from non-finite steps and TensorBoard. Its checkpoints
say they hold an embed-and-classify model: train_scene_rendering.py and evaluate.py refuse them, and this
script refuses a renderer's.
"""
import argparse
import sys

from utils.training import cli, loop, schedules
from utils.training.classify import ClassifyTask

PROG = ClassifyTask.prog
LOG_DIRS = ("GEN-classify", "GQN-classify")


def _model_flags(model):
    cli.add_baseline(model, "the GQN baseline's composer (summed representation) instead of GEN's")
    cli.add_memory_norm(model)
    model.add_argument("--embedding_norm", action=argparse.BooleanOptionalAction, default=False,
                       help="standardise each channel of the candidate embeddings over their pool (the pool's own "
                            "statistics, no trained parameters), so that they cannot collapse to one point; off: the "
                            "original's comparison, as accurate or more over 3000 CPU steps (docs/training.md)")


def build_parser():
    return cli.build_parser(PROG, __doc__.split("\n\n")[0], _model_flags, lr=schedules.CLASSIFY_LR,
                            lr_final=schedules.CLASSIFY_LR_FINAL, batch_size=36, log_dirs=LOG_DIRS)


def parse_args(argv=None):
    return cli.parse_args(build_parser(), argv, LOG_DIRS)


def main(argv=None) -> int:
    return loop.run(PROG, parse_args(argv), ClassifyTask)


if __name__ == "__main__":
    sys.exit(main())
