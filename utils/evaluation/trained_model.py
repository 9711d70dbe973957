"""A trained renderer read back from its checkpoint, with the settings it was trained with: what
evaluate.py scores and make_gif.py animates."""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

from models.scene import SceneModel
from utils.checkpoint import CheckpointError, model_from_checkpoint
from utils.data.hotel import WORLD_MAZES

DEFAULT_SIGMA = 0.7  # the pixel sigma at the end of the original schedule, for checkpoints without one


@dataclass
class Candidate:
    label: str
    model: SceneModel
    img_size: int
    context_views: int
    raw_poses: bool
    max_grid: int
    sigma: float
    steps: object = None  # training steps of the checkpoint ("epoch"), if saved
    train_grids: tuple = ()  # grid sizes it was trained on, if saved


class EvaluationError(ValueError):
    """Inputs an evaluation cannot score: a one-line message for the command line."""


def check_grids(grids: Sequence[int], n_episodes: Optional[int], models: Sequence, directory) -> None:
    """Every k x k hotel of ``grids`` fits the world, ``n_episodes`` distinct episodes of ``directory`` (None:
    not counted yet) and the world of every model (anything with a ``label`` and a ``max_grid``)."""
    for grid in grids:
        if grid < 1:
            raise EvaluationError(f"grid sizes must be at least 1, got {grid}")
        if grid > WORLD_MAZES:
            raise EvaluationError(f"grid {grid}x{grid} is too big for the world ({WORLD_MAZES}x{WORLD_MAZES} mazes)")
        if n_episodes is not None and grid * grid > n_episodes:
            raise EvaluationError(f"grid {grid}x{grid} needs {grid * grid} distinct episodes but {directory} "
                                  f"holds {n_episodes}")
        for model in models:
            if grid > model.max_grid:
                raise EvaluationError(f"grid {grid}x{grid} is larger than {model.label}'s world "
                                      f"({model.max_grid}x{model.max_grid} mazes)")


def run_name(path) -> str:
    """The checkpoint's file name, with its run folder for the training script's RUN/models/NAME.pt."""
    path = Path(path)
    return f"{path.parent.parent.name}/{path.name}" if path.parent.name == "models" else path.name


def load_candidate(path, device, sigma=None) -> Candidate:
    try:
        model, checkpoint = model_from_checkpoint(path, device)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as error:  # saved args that do not describe a model
        raise CheckpointError(f"{path}: its saved args do not describe a model ({type(error).__name__}: "
                              f"{error})") from None
    args = checkpoint.get("args") or {}
    kind = "GQN" if args.get("baseline", False) else "GEN"
    return Candidate(label=f"{kind} ({run_name(path)})", model=model, img_size=model.config.img_size,
                     context_views=int(args.get("context_views", 8)), raw_poses=bool(args.get("raw_poses", False)),
                     max_grid=model.config.max_grid,
                     sigma=float(sigma if sigma is not None else checkpoint.get("sigma", DEFAULT_SIGMA)),
                     steps=checkpoint.get("epoch"), train_grids=tuple(args.get("train_grids") or ()))


def unique_labels(models: Sequence) -> None:
    """Number repeated ``label``s in place (``GEN (x.pt)``, ``GEN (x.pt) #2``): every report column its own."""
    seen: Dict[str, int] = {}
    for model in models:
        seen[model.label] = seen.get(model.label, 0) + 1
        if seen[model.label] > 1:
            model.label = f"{model.label} #{seen[model.label]}"
