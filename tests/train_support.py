"""Helpers for the training-script tests: tiny command lines, a fast scratch folder, one-line errors."""
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT, SHARED_MAZES
from utils.training import loop

MAZES = SHARED_MAZES / "train"
SCRIPT = REPO_ROOT / "train_scene_rendering.py"
DUMP_SCRIPT = REPO_ROOT / "tests" / "dump_weights.py"  # SCRIPT, saving every rank's final weights


def tiny(root, *extra, steps=3, data=MAZES, test_data=None):
    """A command line for a seconds-long CPU run: 16 px, 2 layers, 2 mazes, 1x1 hotels, no workers."""
    return ["--train_data_dir", str(data), "--test_data_dir", str(test_data or data), "--img_size", "16",
            "--layers", "2", "--batch_size", "2", "--train_grids", "1", "--test_grids", "1",
            "--context_views", "2", "--workers", "0", "--device_ids", "--root_log_dir", str(root),
            "--log_dir", "run", "--steps", str(steps), "--log_interval", "1000", "--save_interval", "1000",
            *map(str, extra)]


TRAIN_STEP = loop.Trainer.train_step


def change_loss(monkeypatch, change):
    """Every training step's loss becomes ``change(step, loss)`` (step 0-based), whatever the task: the faults
    a test injects (a NaN, a signal, a slow step). ``change=None`` puts the loop's own step back."""
    def train_step(trainer, batch, stop):
        task, own_loss = trainer.task, type(trainer.task).loss
        task.loss = lambda output: change(trainer.step, own_loss(task, output))
        return TRAIN_STEP(trainer, batch, stop)

    monkeypatch.setattr(loop.Trainer, "train_step", TRAIN_STEP if change is None else train_step)


def subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def make_scratch() -> Path:
    """A temporary folder, in RAM where possible: checkpoints are ~230 MB and fsync'd on every save."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="gen-train-test-", dir=base))


@pytest.fixture
def scratch():
    path = make_scratch()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def one_thread():
    """Tests share two cores with everything else: train in-process on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_one_line_error(text: str, *needles) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    assert "Traceback" not in text
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def main_error(argv, capsys, main=None) -> str:
    """Run main(argv) in-process (default: train_scene_rendering's), expecting a user error: exit status 2 (bad
    argument) or 1 (failed run), and one line of explanation, the last on stderr (notes before it, "starting
    fresh", may be there)."""
    if main is None:
        from train_scene_rendering import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code in (1, 2), info.value.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    return assert_one_line_error(errors[0])


def link_episodes(directory: Path, count: int) -> Path:
    """``count`` real episodes linked into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for source in sorted(MAZES.glob("*.pt"))[:count]:
        (directory / source.name).symlink_to(source)
    return directory


def python() -> str:
    return sys.executable
