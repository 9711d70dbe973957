"""The training optimizer: a non-finite step is left out on the device, and old checkpoints still load."""
import copy

import torch

from utils import optimizer


def _params(device, seed=0):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(30, 20, device=device)), torch.nn.Parameter(torch.randn(7, device=device))]


def _step(opt, params, grads, nonfinite=0.0):
    for p, g in zip(params, grads):
        p.grad = g.clone()
    optimizer.step_unless(opt, torch.full((), nonfinite, device=params[0].device))


def test_a_flagged_step_changes_neither_weights_nor_moments(device):
    params = _params(device)
    opt = optimizer.adam(params, lr=1e-2)
    for seed in range(3):
        torch.manual_seed(seed)
        _step(opt, params, [torch.randn_like(p) for p in params])
    weights = [p.detach().clone() for p in params]
    moments = {i: {k: v.clone() for k, v in s.items()} for i, s in opt.state_dict()["state"].items()}

    _step(opt, params, [torch.full_like(p, float("nan")) for p in params], nonfinite=1.0)
    assert all(torch.equal(a, p.detach()) for a, p in zip(weights, params))
    after = opt.state_dict()["state"]
    assert all(torch.equal(moments[i][k], after[i][k]) for i in moments for k in moments[i])
    assert not hasattr(opt, "found_inf"), "the flag does not outlive its step"

    # An unflagged step still moves the weights.
    _step(opt, params, [torch.ones_like(p) for p in params])
    assert not torch.equal(weights[0], params[0].detach())


def test_a_plain_adam_state_loads_into_the_fused_optimizer_and_continues_the_same_run(device):
    """Checkpoints written before the fused optimizer hold a plain Adam's state."""
    grads = [[torch.randn(30, 20), torch.randn(7)] for _ in range(4)]
    plain_params = _params(device)
    plain = torch.optim.Adam(plain_params, lr=1e-2)
    for g in grads[:2]:
        for p, gg in zip(plain_params, g):
            p.grad = gg.to(device)
        plain.step()
    saved = copy.deepcopy(plain.state_dict())  # as from a file: no tensor shared with `plain`

    params = [torch.nn.Parameter(p.detach().clone()) for p in plain_params]
    fused = optimizer.adam(params, lr=1e-2)
    optimizer.load_adam_state(fused, saved)
    assert all(group["fused"] for group in fused.param_groups)
    for g in grads[2:]:
        for p, gg in zip(plain_params, g):
            p.grad = gg.to(device)
        plain.step()
        _step(fused, params, [gg.to(device) for gg in g])
    for a, b in zip(plain_params, params):  # the same update to float rounding
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
    assert int(fused.state_dict()["state"][0]["step"]) == 4
