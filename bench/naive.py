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
- the GEN's edge index tensors and node positions are rebuilt from Python lists at every forward.
(The original also decoded all 300 frames of an episode to use 9; ``bench/bench_data.py`` measures
that part. This file is only the model.)
"""
import torch
import torch.nn.functional as F
from torch import nn

from models.gen import MLP, POSITION_DIM
from models.gqn import IMAGE_CHANNELS, POSE_DIM, SCALE, CoreConfig, Pool, SummedComposer, pose_copies
from models.renderer import Losses, gaussian_kl, gaussian_nll
from models.scene import ModelConfig
from models.structure import NODES_PER_CELL, SPACING


class NaiveConv2dLSTMCell(nn.Module):
    """ConvLSTM cell over ``[hidden, input]``: four gate convolutions of the whole input, every step."""

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 5):
        super().__init__()
        total = in_channels + hidden
        padding = kernel_size // 2
        self.forget = nn.Conv2d(total, hidden, kernel_size, padding=padding)
        self.input = nn.Conv2d(total, hidden, kernel_size, padding=padding)
        self.output = nn.Conv2d(total, hidden, kernel_size, padding=padding)
        self.state = nn.Conv2d(total, hidden, kernel_size, padding=padding)

    def forward(self, inputs, cell, hidden):
        inputs = torch.cat([hidden, inputs], dim=1)
        forget = torch.sigmoid(self.forget(inputs))
        input_ = torch.sigmoid(self.input(inputs))
        output = torch.sigmoid(self.output(inputs))
        state = torch.tanh(self.state(inputs))
        cell = forget * cell + input_ * state
        hidden = output * torch.tanh(cell)
        return cell, hidden


class NaiveInferenceCore(nn.Module):
    def __init__(self, cfg: CoreConfig):
        super().__init__()
        s = cfg.state_size
        self.downsample_x = nn.Conv2d(IMAGE_CHANNELS, IMAGE_CHANNELS, SCALE, stride=SCALE, bias=False)
        self.upsample_v = nn.ConvTranspose2d(POSE_DIM, POSE_DIM, s, stride=s, bias=False)
        self.upsample_r = nn.ConvTranspose2d(cfg.r_dim, cfg.r_channels, s, stride=s, bias=False)
        self.downsample_u = nn.Conv2d(cfg.hidden, cfg.hidden, SCALE, stride=SCALE, bias=False)
        self.core = NaiveConv2dLSTMCell(IMAGE_CHANNELS + POSE_DIM + cfg.r_channels + 2 * cfg.hidden, cfg.hidden)

    def forward(self, x, v, r, c_e, h_e, h_g, u):
        x = self.downsample_x(x)  # (B, 3, s, s)
        v = self.upsample_v(v[:, :, None, None])  # (B, 7, s, s)
        r = self.upsample_r(r[:, :, None, None])  # (B, 256, s, s)
        u = self.downsample_u(u)  # (B, 128, s, s)
        return self.core(torch.cat([x, v, r, h_g, u], dim=1), c_e, h_e)


class NaiveGenerationCore(nn.Module):
    def __init__(self, cfg: CoreConfig):
        super().__init__()
        s = cfg.state_size
        self.upsample_v = nn.ConvTranspose2d(POSE_DIM, POSE_DIM, s, stride=s, bias=False)
        self.upsample_r = nn.ConvTranspose2d(cfg.r_dim, cfg.r_channels, s, stride=s, bias=False)
        self.core = NaiveConv2dLSTMCell(POSE_DIM + cfg.r_channels + cfg.latent, cfg.hidden)
        self.upsample_h = nn.ConvTranspose2d(cfg.hidden, cfg.hidden, SCALE, stride=SCALE, bias=False)

    def forward(self, v, r, c_g, h_g, u, z):
        v = self.upsample_v(v[:, :, None, None])
        r = self.upsample_r(r[:, :, None, None])
        c_g, h_g = self.core(torch.cat([v, r, z], dim=1), c_g, h_g)
        return c_g, h_g, u + self.upsample_h(h_g)


def naive_edges(side: int, device) -> torch.Tensor:
    """(2, E) 4-neighbour edges of a side x side lattice from Python lists, in the optimised order
    (all right-pointing, all up-pointing, then the same reversed), so ``index_add_`` sums alike."""
    pairs = [(row * side + col, row * side + col + 1) for row in range(side) for col in range(side - 1)]
    pairs += [(row * side + col, (row + 1) * side + col) for row in range(side - 1) for col in range(side)]
    pairs += [(sink, source) for source, sink in pairs]
    return torch.tensor(pairs, device=device).t()


def naive_node_offsets(side: int, device) -> torch.Tensor:
    return torch.tensor([[col * SPACING, row * SPACING] for row in range(side) for col in range(side)],
                        device=device)


def naive_bilinear_weights(points, origin, side: int):
    """Same maths as ``GridStructure.bilinear_weights``: each point spread over its square's 4 nodes."""
    last = side - 1
    lattice = ((points - origin[:, None, :]) / SPACING).clamp(0, last)
    corner = lattice.floor().clamp(max=last - 1)
    frac = lattice - corner
    corner = corner.long()
    weights = points.new_zeros(*points.shape[:2], side * side)
    for dx in (0, 1):
        for dy in (0, 1):
            wx = frac[..., 0] if dx else 1 - frac[..., 0]
            wy = frac[..., 1] if dy else 1 - frac[..., 1]
            node = (corner[..., 1] + dy) * side + corner[..., 0] + dx
            weights.scatter_add_(2, node.unsqueeze(-1), (wx * wy).unsqueeze(-1))
    return weights


class NaiveGraphComposer(nn.Module):
    def __init__(self, embedding: int = 254, hidden: int = 512, message_steps: int = 9, copies: int = 8,
                 max_grid: int = 5):
        super().__init__()
        state = POSITION_DIM + embedding
        self.embedder = Pool(embedding)
        self.edge_module = MLP(2 * state, hidden, state)
        self.node_module = MLP(2 * state, hidden, embedding)
        self.message_steps = message_steps
        self.copies = copies
        self.max_grid = max_grid
        self.output_dim = state + copies * POSE_DIM

    def forward(self, context_frames, context_poses, query_poses, origin, grid: int):
        if grid > self.max_grid:
            raise ValueError(f"grid {grid} is larger than this model's world ({self.max_grid})")
        n, v = context_poses.shape[:2]
        side = NODES_PER_CELL * grid + 1
        edges = naive_edges(side, origin.device)  # rebuilt at every forward
        source, sink = edges[0], edges[1]
        positions = origin[:, None, :] + naive_node_offsets(side, origin.device)
        embeddings = self.embedder(context_frames.flatten(0, 1), context_poses.flatten(0, 1)).view(n, v, -1)
        write = naive_bilinear_weights(context_poses[..., :POSITION_DIM], origin, side)
        memory = write.transpose(1, 2) @ embeddings
        for _ in range(self.message_steps):
            state = torch.cat([positions, memory], dim=-1)
            messages = self.edge_module(torch.cat([state[:, source], state[:, sink]], dim=-1))
            incoming = messages.new_zeros(state.shape).index_add_(1, sink, messages)
            memory = memory + self.node_module(torch.cat([incoming, state], dim=-1))
        state = torch.cat([positions, memory], dim=-1)
        read = naive_bilinear_weights(query_poses[..., :POSITION_DIM], origin, side)
        return torch.cat([read @ state, pose_copies(query_poses, self.copies)], dim=-1)


class NaiveSceneModel(nn.Module):
    """``SceneModel``'s forward and render, with the DRAW loop written out per layer."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.baseline:
            composer = SummedComposer(cfg.embedding, cfg.baseline_pose_copies)
        else:
            composer = NaiveGraphComposer(cfg.embedding, message_steps=cfg.message_steps,
                                          copies=cfg.gen_pose_copies, max_grid=cfg.max_grid)
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
