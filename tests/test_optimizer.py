"""The training optimizer: a non-finite step is left out on the device, and old checkpoints still load."""
import copy

import torch

from utils.training import optimizer


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


def test_moments_saved_in_plain_layout_load_into_channels_last_weights(device):
    """On a GPU the weights are channels-last, checkpoints hold contiguous tensors: after loading, each
    moment takes its weight's layout and the run goes on exactly as with the default Adam."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3).to(device)
    grads = [torch.randn_like(conv.weight) for _ in range(4)]
    plain = torch.optim.Adam([conv.weight], lr=1e-2)
    for g in grads[:2]:
        conv.weight.grad = g.clone()
        plain.step()
    saved = {"state": {0: {k: v.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
                           for k, v in plain.state_dict()["state"][0].items()}},
             "param_groups": copy.deepcopy(plain.state_dict()["param_groups"])}
    weight = torch.nn.Parameter(conv.weight.detach().clone().to(memory_format=torch.channels_last))
    assert not weight.is_contiguous()
    fused = optimizer.adam([weight], lr=1e-2)
    optimizer.load_adam_state(fused, saved)
    for g in grads[2:]:
        conv.weight.grad = g.clone()
        plain.step()
        _step(fused, [weight], [g.contiguous(memory_format=torch.channels_last)])
    torch.testing.assert_close(weight.detach(), conv.weight.detach(), rtol=1e-5, atol=1e-6)
