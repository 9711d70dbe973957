"""The optimised model computes what the naive reference (``bench/naive.py``) computes: identical
weights and seed give the same ELBO terms, the same gradients and the same generated images, up to
float rounding (the optimised model sums its convolutions in a different order)."""
import pytest
import torch

from bench.bench_step import synthetic_batch
from bench.naive import NaiveSceneModel
from models.scene import ModelConfig, SceneModel

SIGMA = 0.7
RTOL = 1e-4


def close(actual, expected, rtol=RTOL):
    """Elementwise, relative to the tensor's largest magnitude (small entries of a sum of many
    products carry absolute, not relative, rounding error)."""
    scale = expected.abs().max().clamp(min=1e-12)
    return ((actual - expected).abs().max() / scale).item() <= rtol


def pair(baseline: bool, layers: int, device="cpu"):
    cfg = ModelConfig(img_size=16, layers=layers, baseline=baseline)
    torch.manual_seed(0)
    optimised = SceneModel(cfg).to(device)
    naive = NaiveSceneModel(cfg).to(device)
    naive.load_state_dict(optimised.state_dict(), strict=True)
    return optimised, naive


CASES = [(baseline, grid, layers) for baseline in (False, True) for grid, layers in ((1, 2), (2, 3))]
IDS = [f"{'baseline' if b else 'gen'}-grid{g}-L{l}" for b, g, l in CASES]


@pytest.mark.parametrize("baseline,grid,layers", CASES, ids=IDS)
def test_elbo_and_gradients_match(baseline, grid, layers, device):
    optimised, naive = pair(baseline, layers, device)
    batch = synthetic_batch(2 * grid * grid, grid, 16, context_views=3, device=device, seed=1)
    results = []
    for model in (optimised, naive):
        torch.manual_seed(123)
        losses = model(*batch, SIGMA)
        losses.loss.mean().backward()
        results.append((losses, {name: p.grad for name, p in model.named_parameters()}))
    (ours, our_grads), (ref, ref_grads) = results
    assert ours.loss.shape == (2 * grid * grid,)
    for name in ("loss", "nll", "kl"):
        assert close(getattr(ours, name), getattr(ref, name)), name
    assert our_grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        assert grad is not None and our_grads[name] is not None, name
        assert close(our_grads[name], grad), name


@pytest.mark.parametrize("baseline", (False, True), ids=("gen", "baseline"))
def test_generation_matches(baseline, device):
    optimised, naive = pair(baseline, layers=3, device=device)
    context_frames, context_poses, query_frames, query_poses, origin, grid = synthetic_batch(
        2, 1, 16, context_views=3, device=device, seed=2)
    images = []
    with torch.no_grad():
        for model in (optimised, naive):
            torch.manual_seed(7)
            images.append(model.render(context_frames, context_poses, query_poses, origin, grid))
    assert images[0].shape == (2, 3, 16, 16)
    assert close(images[0], images[1])
    # Different noise must give different images, or the comparison above proves nothing.
    torch.manual_seed(8)
    with torch.no_grad():
        other = naive.render(context_frames, context_poses, query_poses, origin, grid)
    assert not torch.allclose(other, images[1])


def test_bf16_autocast_forward_runs(device):
    """--amp in bench_step / training: the GEN's message sum must follow the messages' dtype."""
    optimised, _ = pair(baseline=False, layers=2, device=device)
    batch = synthetic_batch(2, 1, 16, context_views=3, device=device, seed=3)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        losses = optimised(*batch, SIGMA)
    assert torch.isfinite(losses.loss).all()
