"""What GQN (Eslami et al., 2018) defines: the "Pool" representation network, the ConvLSTM cell, the
inference and generation cores of the DRAW renderer, and the baseline composer that sums all views
into one representation.

Parameter names and shapes follow the original GEN implementation (itself built on the torch-gqn
port), so its checkpoints load as they are: see ``tests/reference/original_state_dict.txt``.

Shapes: S = image size, s = S // SCALE = the cores' state size (16 for 64 x 64 images).
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

POSE_DIM = 7  # [x, y, z, cos yaw, sin yaw, cos pitch, sin pitch]
IMAGE_CHANNELS = 3
SCALE = 4  # image size / ConvLSTM state size


class Pool(nn.Module):
    """GQN's "Pool" representation network: one view + its pose -> one vector (B, out_channels).

    Two residual blocks; the pose is broadcast over the s x s feature map before the second.
    """

    def __init__(self, out_channels: int = 254):
        super().__init__()
        self.conv1 = nn.Conv2d(IMAGE_CHANNELS, 256, kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(256, 256, kernel_size=2, stride=2)
        self.conv3 = nn.Conv2d(256, 128, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(128, 256, kernel_size=2, stride=2)
        self.conv5 = nn.Conv2d(256 + POSE_DIM, 256, kernel_size=3, padding=1)
        self.conv6 = nn.Conv2d(256 + POSE_DIM, 128, kernel_size=3, padding=1)
        self.conv7 = nn.Conv2d(128, 256, kernel_size=3, padding=1)
        self.conv8 = nn.Conv2d(256, out_channels, kernel_size=1)

    def forward(self, frames: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        assert frames.dim() == 4 and poses.shape == (frames.shape[0], POSE_DIM), (
            f"Pool expects frames (B, 3, S, S) and poses (B, 7), got {tuple(frames.shape)}, {tuple(poses.shape)}")
        skip = F.relu(self.conv1(frames))  # (B, 256, S/2, S/2)
        skip_out = F.relu(self.conv2(skip))  # (B, 256, s, s)
        features = F.relu(self.conv4(F.relu(self.conv3(skip)))) + skip_out  # (B, 256, s, s)
        pose_map = poses[:, :, None, None].expand(-1, -1, *features.shape[-2:])
        skip = torch.cat([features, pose_map], dim=1)  # (B, 263, s, s)
        features = F.relu(self.conv7(F.relu(self.conv6(skip)))) + F.relu(self.conv5(skip))
        return F.relu(self.conv8(features)).mean(dim=(2, 3))  # (B, out_channels)


def normalized(memory: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    """Layer normalisation without parameters over the last (embedding) dimension: zero mean, unit variance
    per vector, so a memory read by the DRAW cores stays O(1) however many views were summed into it."""
    return F.layer_norm(memory, memory.shape[-1:]) if enabled else memory


def pose_copies(poses: torch.Tensor, copies: int) -> torch.Tensor:
    """Tile the 7-D pose ``copies`` times along the last dimension (the original gave it weight so)."""
    return poses.repeat(*([1] * (poses.dim() - 1)), copies)


class SummedComposer(nn.Module):
    """The GQN baseline: every context view of every maze summed into one vector.

    r = [query x, y | pose copies | summed embedding], the original baseline's layout (its x, y mirror
    the GEN's read state, which starts with the position it was read at); ``origin`` and ``grid`` are
    not used: one sum holds the whole hotel.

    ``memory_norm`` (the default) standardises every view's embedding per channel (batch statistics in
    training, running ones in evaluation: ``view_norm``, buffers only) before summing, and layer-normalises
    the sum. Without the layer norm (the original) the sum grows with the number of views and, under
    Adam, by orders of magnitude in the first steps. Without the per-view standardisation most of each
    channel's sum is shared by every maze (the Pool network's outputs are ReLUs, all positive), and the
    renderer learns to ignore r before the Pool network learns to set the mazes apart
    (docs/training.md, Diagnostics).
    """

    def __init__(self, embedding: int = 254, copies: int = 32, memory_norm: bool = True):
        super().__init__()
        self.memory_norm = memory_norm
        self.embedder = Pool(embedding)
        self.view_norm = nn.BatchNorm1d(embedding, affine=False) if memory_norm else None
        self.copies = copies
        self.output_dim = 2 + copies * POSE_DIM + embedding

    def forward(self, context_frames, context_poses, query_poses, origin, grid: int):
        n, v = context_poses.shape[:2]
        embeddings = self.embedder(context_frames.flatten(0, 1), context_poses.flatten(0, 1))
        if self.view_norm is not None:
            embeddings = self.view_norm(embeddings)
        summed = normalized(embeddings.view(n, v, -1).sum(dim=1), self.memory_norm)
        summed = summed[:, None, :].expand(-1, query_poses.shape[1], -1)  # (N, Q, embedding)
        return torch.cat([query_poses[..., :2], pose_copies(query_poses, self.copies), summed], dim=-1)


class Conv2dLSTMCell(nn.Module):
    """ConvLSTM cell whose input is ``[hidden, static, dynamic]`` concatenated along channels.

    "Static" channels do not change across the DRAW layers. A convolution is linear in its input
    channels, so ``prepare`` convolves them once per forward (all four gates as one convolution) and
    ``step`` convolves only the hidden and dynamic channels. The four gate convolutions keep their
    original names so checkpoints load.
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 5):
        super().__init__()
        self.hidden = hidden
        self.padding = kernel_size // 2
        total = in_channels + hidden
        self.forget = nn.Conv2d(total, hidden, kernel_size, padding=self.padding)
        self.input = nn.Conv2d(total, hidden, kernel_size, padding=self.padding)
        self.output = nn.Conv2d(total, hidden, kernel_size, padding=self.padding)
        self.state = nn.Conv2d(total, hidden, kernel_size, padding=self.padding)

    def prepare(self, static: torch.Tensor):
        """Gate pre-activations of the static channels (B, 4 hidden, s, s), and the dynamic weight."""
        gates = (self.forget, self.input, self.output, self.state)
        weight = torch.cat([gate.weight for gate in gates])  # (4 hidden, total, k, k)
        bias = torch.cat([gate.bias for gate in gates])
        end = self.hidden + static.shape[1]
        static_gates = F.conv2d(static, weight[:, self.hidden:end], bias, padding=self.padding)
        dynamic_weight = torch.cat([weight[:, :self.hidden], weight[:, end:]], dim=1)
        return static_gates, dynamic_weight

    def step(self, prepared, dynamic: Optional[torch.Tensor], cell: Optional[torch.Tensor],
             hidden: Optional[torch.Tensor]):
        """``cell`` and ``hidden`` None stand for the zero state of the first DRAW layer (``dynamic``
        None: zero too). A convolution of zeros is exactly zero, so those channels are skipped."""
        static_gates, dynamic_weight = prepared
        if hidden is not None:
            inputs = torch.cat([hidden, dynamic], dim=1)
            gates = static_gates + F.conv2d(inputs, dynamic_weight, padding=self.padding)
        elif dynamic is not None:
            gates = static_gates + F.conv2d(dynamic, dynamic_weight[:, self.hidden:], padding=self.padding)
        else:
            gates = static_gates
        forget, input_, output, state = gates.chunk(4, dim=1)
        update = torch.sigmoid(input_) * torch.tanh(state)
        cell = update if cell is None else torch.sigmoid(forget) * cell + update
        hidden = torch.sigmoid(output) * torch.tanh(cell)
        return cell, hidden


def upsample_vector(vector: torch.Tensor, deconv: nn.ConvTranspose2d) -> torch.Tensor:
    """A transposed convolution with kernel = stride = s applied to a 1 x 1 input is a matrix product:
    (B, C_in) @ (C_in, C_out s s). Doing it as one is much cheaper than the convolution."""
    out_channels, height, width = deconv.weight.shape[1:]
    return (vector @ deconv.weight.flatten(1)).view(-1, out_channels, height, width)


@dataclass(frozen=True)
class CoreConfig:
    img_size: int = 64
    r_dim: int = 312  # composer output per query
    r_channels: int = 256  # r after upsampling to the state grid
    hidden: int = 128
    latent: int = 3

    @property
    def state_size(self) -> int:
        return self.img_size // SCALE


class InferenceCore(nn.Module):
    """Posterior core: input [h_e | x, v, r (static) | h_g, u (dynamic)]."""

    def __init__(self, cfg: CoreConfig):
        super().__init__()
        s = cfg.state_size
        self.downsample_x = nn.Conv2d(IMAGE_CHANNELS, IMAGE_CHANNELS, SCALE, stride=SCALE, bias=False)
        self.upsample_v = nn.ConvTranspose2d(POSE_DIM, POSE_DIM, s, stride=s, bias=False)
        self.upsample_r = nn.ConvTranspose2d(cfg.r_dim, cfg.r_channels, s, stride=s, bias=False)
        self.downsample_u = nn.Conv2d(cfg.hidden, cfg.hidden, SCALE, stride=SCALE, bias=False)
        inputs = IMAGE_CHANNELS + POSE_DIM + cfg.r_channels + 2 * cfg.hidden
        self.core = Conv2dLSTMCell(inputs, cfg.hidden)

    def prepare(self, x: torch.Tensor, v: torch.Tensor, r: torch.Tensor):
        static = torch.cat([self.downsample_x(x), upsample_vector(v, self.upsample_v),
                            upsample_vector(r, self.upsample_r)], dim=1)  # (B, 266, s, s)
        return self.core.prepare(static)

    def step(self, prepared, cell, hidden, h_g, u_state):
        """``u_state`` = ``downsample_u`` of the canvas (see ``canvas_to_state``). All of ``cell, hidden,
        h_g, u_state`` None: the first layer's zero state."""
        dynamic = None if h_g is None else torch.cat([h_g, u_state], dim=1)
        return self.core.step(prepared, dynamic, cell, hidden)


class GenerationCore(nn.Module):
    """Generator core: input [h_g | v, r (static) | z (dynamic)]; ``upsample_h`` lifts its states onto the canvas."""

    def __init__(self, cfg: CoreConfig):
        super().__init__()
        s = cfg.state_size
        self.upsample_v = nn.ConvTranspose2d(POSE_DIM, POSE_DIM, s, stride=s, bias=False)
        self.upsample_r = nn.ConvTranspose2d(cfg.r_dim, cfg.r_channels, s, stride=s, bias=False)
        self.core = Conv2dLSTMCell(POSE_DIM + cfg.r_channels + cfg.latent, cfg.hidden)
        self.upsample_h = nn.ConvTranspose2d(cfg.hidden, cfg.hidden, SCALE, stride=SCALE, bias=False)

    def prepare(self, v: torch.Tensor, r: torch.Tensor):
        static = torch.cat([upsample_vector(v, self.upsample_v), upsample_vector(r, self.upsample_r)], dim=1)
        return self.core.prepare(static)  # static: (B, 263, s, s)

    def step(self, prepared, cell, hidden, z):
        return self.core.step(prepared, z, cell, hidden)


def canvas_to_state(downsample: nn.Conv2d, upsample: nn.ConvTranspose2d) -> torch.Tensor:
    """The 1 x 1 convolution weight (C, C, 1, 1) equal to ``downsample(upsample(h))``.

    Both are bias-free with kernel = stride, so each state pixel owns one patch of the canvas and the
    round trip mixes channels only: W[o, i] = sum over (c, kh, kw) of down[o, c, kh, kw] up[i, c, kh, kw].
    """
    for layer in (downsample, upsample):
        assert layer.bias is None and layer.kernel_size == layer.stride, "needs bias-free, kernel = stride"
    return torch.einsum("ockl,ickl->oi", downsample.weight, upsample.weight)[:, :, None, None]
