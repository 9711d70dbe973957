"""The naive reference: the same architecture as ``models.scene.SceneModel``, written the textbook way
of the original implementation. It lives only in ``bench/`` and exists to be measured against.

Same parameter names and shapes as the optimised model, so
``naive.load_state_dict(optimised.state_dict())`` works (strict), and the same random numbers in the
same order (one ``randn_like`` per DRAW layer for z), so with identical weights and seed both compute
the same ELBO up to float rounding (``tests/test_equivalence.py``).

What it does the slow way, on purpose (each is what the optimised model avoids):
- every ConvLSTM step runs four separate 5 x 5 gate convolutions over the full concatenated input
  ``[hidden, x, v, r, ...]``, although x, v and r do not change across the DRAW layers;
- both cores upsample r (312 -> 256 x 16 x 16) and the query pose with ``nn.ConvTranspose2d`` on a
  (B, C, 1, 1) tensor at every layer, and the inference core downsamples x at every layer;
- the GEN's graph geometry (node positions, edge index tensors) is rebuilt at every forward.
(The original also decoded all 300 frames of an episode to use 9; ``bench/bench_data.py`` measures
that part. This file is only the model.)
"""
import torch
from torch import nn

from models.gen import GraphComposer
from models.gqn import (IMAGE_CHANNELS, Conv2dLSTMCell, CoreConfig, GenerationCore, InferenceCore,
                        SummedComposer)
from models.renderer import Losses, gaussian_kl, gaussian_nll
from models.scene import ModelConfig
from models.structure import GridStructure


def naive_lstm_step(cell_module: Conv2dLSTMCell, inputs, cell, hidden):
    """One ConvLSTM step over ``[hidden, inputs]``: four gate convolutions of the whole input."""
    inputs = torch.cat([hidden, inputs], dim=1)
    forget = torch.sigmoid(cell_module.forget(inputs))
    input_ = torch.sigmoid(cell_module.input(inputs))
    output = torch.sigmoid(cell_module.output(inputs))
    state = torch.tanh(cell_module.state(inputs))
    cell = forget * cell + input_ * state
    return cell, output * torch.tanh(cell)


class NaiveInferenceCore(InferenceCore):
    """The optimised core's parameters, used per layer the textbook way."""

    def forward(self, x, v, r, c_e, h_e, h_g, u):
        x = self.downsample_x(x)  # (B, 3, s, s)
        v = self.upsample_v(v[:, :, None, None])  # (B, 7, s, s)
        r = self.upsample_r(r[:, :, None, None])  # (B, 256, s, s)
        u = self.downsample_u(u)  # (B, 128, s, s)
        return naive_lstm_step(self.core, torch.cat([x, v, r, h_g, u], dim=1), c_e, h_e)


class NaiveGenerationCore(GenerationCore):
    def forward(self, v, r, c_g, h_g, u, z):
        v = self.upsample_v(v[:, :, None, None])
        r = self.upsample_r(r[:, :, None, None])
        c_g, h_g = naive_lstm_step(self.core, torch.cat([v, r, z], dim=1), c_g, h_g)
        return c_g, h_g, u + self.upsample_h(h_g)


class NaiveGraphComposer(GraphComposer):
    """The GEN composer with its graph geometry (node positions, edge indices) rebuilt at every forward."""

    def structure(self, grid: int) -> GridStructure:
        super().structure(grid)  # the same world-size check
        return GridStructure(grid).to(self.edge_module.fc0.weight.device)


class NaiveSceneModel(nn.Module):
    """``SceneModel``'s forward and render, with the DRAW loop written out per layer."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.baseline:
            composer = SummedComposer(cfg.embedding, cfg.baseline_pose_copies, memory_norm=cfg.memory_norm)
        else:
            composer = NaiveGraphComposer(cfg.embedding, message_steps=cfg.message_steps,
                                          copies=cfg.gen_pose_copies, max_grid=cfg.max_grid,
                                          memory_norm=cfg.memory_norm)
        core = CoreConfig(img_size=cfg.img_size, r_dim=composer.output_dim)
        self.config, self.cfg, self.layers = cfg, core, cfg.layers
        self.inference_core = NaiveInferenceCore(core)
        self.generation_core = NaiveGenerationCore(core)
        self.eta_pi = nn.Conv2d(core.hidden, 2 * core.latent, 5, padding=2)
        self.eta_e = nn.Conv2d(core.hidden, 2 * core.latent, 5, padding=2)
        self.eta_g = nn.Conv2d(core.hidden, IMAGE_CHANNELS, 1)
        self.composer = composer

    def draw(self, v, r, x=None):
        cfg = self.cfg
        batch, s, size = v.shape[0], cfg.state_size, cfg.img_size
        c_g = v.new_zeros(batch, cfg.hidden, s, s)
        h_g = v.new_zeros(batch, cfg.hidden, s, s)
        c_e = v.new_zeros(batch, cfg.hidden, s, s)
        h_e = v.new_zeros(batch, cfg.hidden, s, s)
        u = v.new_zeros(batch, cfg.hidden, size, size)
        kl = v.new_zeros(batch) if x is not None else None
        for _ in range(self.layers):
            prior_mu, prior_logvar = self.eta_pi(h_g).chunk(2, dim=1)
            if x is not None:
                c_e, h_e = self.inference_core(x, v, r, c_e, h_e, h_g, u)
                mu, logvar = self.eta_e(h_e).chunk(2, dim=1)
                kl = kl + gaussian_kl(mu, logvar, prior_mu, prior_logvar).flatten(1).sum(1)
            else:
                mu, logvar = prior_mu, prior_logvar
            z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
            c_g, h_g, u = self.generation_core(v, r, c_g, h_g, u, z)
        return self.eta_g(u), kl

    def represent(self, context_frames, context_poses, query_poses, origin, grid: int):
        return self.composer(context_frames, context_poses, query_poses, origin, grid).flatten(0, 1)

    def forward(self, context_frames, context_poses, query_frames, query_poses, origin, grid: int,
                sigma: float) -> Losses:
        r = self.represent(context_frames, context_poses, query_poses, origin, grid)
        x = query_frames.flatten(0, 1)
        mean, kl = self.draw(query_poses.flatten(0, 1), r, x)
        nll = gaussian_nll(x, mean, sigma)
        return Losses(nll + kl, nll, kl)

    def render(self, context_frames, context_poses, query_poses, origin, grid: int, query_frames=None):
        r = self.represent(context_frames, context_poses, query_poses, origin, grid)
        v = query_poses.flatten(0, 1)
        x = None if query_frames is None else query_frames.flatten(0, 1)
        return self.draw(v, r, x)[0].clamp(0, 1)
