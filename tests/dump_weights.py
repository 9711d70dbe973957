"""torchrun's script in the DistributedDataParallel tests: ``train_scene_rendering.py`` whose every rank, once
trained, saves its final weights to ``$DUMP_DIR/rank{R}.pt`` for the test to compare."""
import os
import sys
from pathlib import Path

import torch

import train_scene_rendering
from utils.training import loop

FIT = loop.Trainer.fit


def fit_and_dump(trainer, stop):
    code = FIT(trainer, stop)
    weights = {key: value.detach().cpu() for key, value in trainer.model.state_dict().items()}
    torch.save(weights, Path(os.environ["DUMP_DIR"]) / f"rank{trainer.runtime.rank}.pt")
    return code


if __name__ == "__main__":
    loop.Trainer.fit = fit_and_dump
    sys.exit(train_scene_rendering.main())
