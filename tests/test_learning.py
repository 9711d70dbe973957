"""The model learns from real maze data: -ELBO falls when overfitting one batch of real episodes."""
import pytest
import torch

from models.scene import ModelConfig, SceneModel
from utils.data.hotel import HotelSteps
from tests.conftest import SHARED_MAZES, requires_shared


@requires_shared
@pytest.mark.parametrize("baseline", [False, True])
def test_elbo_is_finite_and_falls_when_overfitting_one_real_batch(baseline):
    torch.manual_seed(0)
    steps = HotelSteps(SHARED_MAZES / "train", img_size=16, batch_size=4, grids=[2], context_views=3, seed=0)
    batch = steps[0]
    assert batch.grid == 2 and batch.context_frames.shape == (1, 12, 3, 16, 16)
    model = SceneModel(ModelConfig(img_size=16, layers=2, baseline=baseline))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs = batch.model_inputs("cpu")
    losses = []
    for step in range(25):
        torch.manual_seed(step)
        loss = model(*inputs, sigma=0.7).loss.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < losses[0] - 50, losses
