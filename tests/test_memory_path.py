"""The memory path stays alive in training: r bounded, gradient reaching the composer, generated views that
depend on the context. The original composer (``memory_norm=False``) fails each of these within ~10 Adam
steps, and the baseline without its per-view standardisation learns to ignore its context (docs/training.md,
"Diagnostics"); the tests run both sides so that they fail if either changes."""
import pytest
import torch

from models.scene import ModelConfig, SceneModel
from utils.training.diagnostics import composer_grad_norm, memory_diagnostics, other_mazes_views
from utils.data.hotel import HotelSteps
from tests.conftest import REPO_ROOT

STEPS = 15
GRAD_FRACTION = 0.01  # the composer's gradient at the last step, at least this fraction of its first
R_BOUND = 100.0  # r's memory channels: |r| at most this


def train(baseline: bool, memory_norm: bool, view_norm: bool = True, initial: dict = None):
    """15 Adam steps of a tiny configuration (16 px, 2 layers, pixel sigma 0.7, lr 5e-4) on the built-in
    mazes; returns the composer's gradient norm per step and the final diagnostics on a held-out batch
    (``initial``, a dict: filled with the diagnostics before the first step). ``view_norm=False`` takes the
    baseline's per-view standardisation out, leaving only the layer norm of its sum."""
    torch.manual_seed(0)
    data = HotelSteps(REPO_ROOT / "data_samples" / "train", img_size=16, batch_size=4, grids=[1], context_views=16,
                      seed=3)
    model = SceneModel(ModelConfig(img_size=16, layers=2, baseline=baseline, memory_norm=memory_norm))
    if not view_norm:
        model.composer.view_norm = None
    held_out = data[10 ** 6].model_inputs("cpu")
    if initial is not None:
        initial.update(memory_diagnostics(model.eval(), held_out, seed=0))
        model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    grads = []
    for step in range(STEPS):
        torch.manual_seed(step)
        loss = model(*data[step].model_inputs("cpu"), sigma=0.7).loss.mean()
        optimizer.zero_grad()
        loss.backward()
        grads.append(composer_grad_norm(model).item())
        optimizer.step()
    return grads, memory_diagnostics(model.eval(), held_out, seed=0)


@pytest.mark.parametrize("baseline", [False, True], ids=["gen", "gqn"])
def test_memory_path_stays_alive_with_memory_norm(baseline):
    grads, diag = train(baseline, memory_norm=True)
    assert grads[-1] >= GRAD_FRACTION * grads[0], grads
    assert diag["r_memory_abs_max"] < R_BOUND, diag
    assert diag["context_sensitivity"] > 0, diag  # another maze's views give another image


@pytest.mark.parametrize("view_norm", [True, False], ids=["standardised views", "layer norm of the sum only"])
def test_baseline_renderer_learns_to_read_its_summed_memory(view_norm):
    """GQN's renderer reads the summed views only if each view is standardised before the sum: with the layer
    norm of the sum alone, its generated views depend less on the context after 15 steps than before the
    first (it learns the mean view of a pose instead); with it, hundreds of times more (docs/training.md)."""
    initial = {}
    _, diag = train(baseline=True, memory_norm=True, view_norm=view_norm, initial=initial)
    growth = diag["context_sensitivity"] / initial["context_sensitivity"]
    assert (growth > 10) == view_norm, (initial, diag)


def test_original_composer_memory_explodes_and_dies():
    """What the diagnostics exist to catch: the original GEN composer's r explodes and its gradient vanishes."""
    grads, diag = train(baseline=False, memory_norm=False)
    assert diag["r_memory_abs_max"] > 1e4 * R_BOUND, diag
    assert grads[-1] < GRAD_FRACTION * grads[0], grads
    assert diag["context_sensitivity"] == 0, diag  # the saturated cores give the same image for any context


def test_other_mazes_views_moves_whole_mazes_and_keeps_every_other_tensor():
    hotels, grid, views = 3, 2, 5
    frames = torch.arange(hotels * grid * grid * views, dtype=torch.float32).view(hotels, grid * grid * views, 1, 1, 1)
    swapped = other_mazes_views(frames, grid)
    assert swapped.shape == frames.shape
    maze_of = lambda f: (f.flatten() // views).long()  # noqa: E731 - the maze each view came from
    assert torch.equal(maze_of(swapped), (maze_of(frames) - 1) % (hotels * grid * grid))
    assert (maze_of(swapped) != maze_of(frames)).all()
