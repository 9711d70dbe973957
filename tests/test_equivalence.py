"""The optimised model computes what the naive reference (``bench/naive.py``) computes: identical
weights and seed give the same ELBO terms, the same gradients and the same generated images, up to
float rounding (the optimised model sums its convolutions in a different order)."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.bench_step import synthetic_batch
from bench.naive import NaiveSceneModel
from models.scene import ModelConfig, SceneModel

SIGMA = 0.7
RTOL = 1e-4
# The composer's gradients come through layer normalisation (--memory_norm), whose backward subtracts the
# incoming gradient's mean and its projection on the normalised memory: most of it cancels, and the rest
# carries the renderer's rounding relative to a smaller result (5e-4 measured on an H200, TF32 off).
COMPOSER_GRAD_RTOL = 2e-3


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
IDS = [f"{'baseline' if b else 'gen'}-grid{g}-L{layers}" for b, g, layers in CASES]


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
        assert close(our_grads[name], grad, COMPOSER_GRAD_RTOL if name.startswith("composer.") else RTOL), name


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


# bf16 autocast against the same forward in fp32 (same weights, batch and noise). bf16 keeps 8 bits of mantissa
# (a relative rounding of 2^-9 = 2e-3 per operation), but the loss is a sum over every pixel of fp32 terms:
# measured on the CPU, 4e-5 of the loss and 5e-3 of the KL (which is small, 0.02-0.05 nats, and computed
# from bf16 means and log-variances). The tolerances leave 20x and 10x of room; a KL computed in bf16 (the
# difference of nearly equal terms) is off by more than 100% and changes sign.
BF16_LOSS_RTOL = 1e-3
BF16_KL_RTOL = 5e-2


class OpDtypes(TorchDispatchMode):
    """The output dtypes of the convolutions and matrix products run under it."""
    OPS = {"aten.convolution", "aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm"}

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if str(func.overloadpacket) in self.OPS:
            self.dtypes.add(out.dtype)
        return out


@pytest.mark.parametrize("baseline", (False, True), ids=("gen", "baseline"))
def test_bf16_autocast_forward_matches_fp32(baseline, device):
    """--amp in bench_step / training: the forward under bf16 autocast runs its convolutions and matrix
    products in bf16 and gives the fp32 forward's loss and KL within the tolerances above. (The GEN's
    message sum must follow the messages' dtype, or the bf16 forward fails outright.)"""
    optimised, _ = pair(baseline=baseline, layers=2, device=device)
    batch = synthetic_batch(2, 1, 16, context_views=3, device=device, seed=3)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(11)  # the same DRAW noise
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16), \
                OpDtypes() as ops:
            losses = optimised(*batch, SIGMA)
        assert ops.dtypes == {dtype}, ops.dtypes  # every convolution and matrix product, in this dtype
        results[dtype] = losses
    low, ref = results[torch.bfloat16], results[torch.float32]
    assert torch.isfinite(low.loss).all() and low.loss.dtype == torch.float32
    assert not torch.equal(low.loss, ref.loss), "bf16 changed nothing: did autocast run?"
    assert torch.allclose(low.loss, ref.loss, rtol=BF16_LOSS_RTOL, atol=0), (low.loss, ref.loss)
    assert (low.kl >= 0).all() and torch.allclose(low.kl.float(), ref.kl, rtol=BF16_KL_RTOL, atol=0), (low.kl, ref.kl)
