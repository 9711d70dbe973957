"""The second experiment of the GEN paper, "GEN v/s GQN embedders": instead of rendering the view at a
query pose, pick it out of a pool of candidate images.

The composer (the renderer's, GEN or the GQN baseline) gives a vector per query; a query head maps it
into a comparison space and a convolutional encoder maps every candidate image there too. A candidate's
score is minus its squared distance to the query, times a learned scale exp(s); the loss is the cross-
entropy against the true candidate. The candidates of a batch are every query view and every context
view in it, so the distractors are the query maze's own other views and every view of the other mazes.

``embedding_norm`` (off by default) standardises every channel of the candidate embeddings over their pool
(the pool's own statistics, at training and evaluation alike; no parameters) and scales them by
1 / sqrt(channels), so that two candidates lie about 2 apart (squared) whatever the encoder's weights. It
answers a collapse of the original's comparison: while nothing yet predicts the true view, the cheapest way to
lower the loss is to pull every candidate embedding together (equal scores cost ln K, distinct random ones
more); measured on a CPU run, squared distances between candidates fall from ~3e-3 at initialisation to ~8e-5,
with most channels dead behind the final ReLU. Standardised candidates cannot collapse, and a GEN leaves chance
sooner with them, but over 3000 CPU steps it ended no more accurate than with the original's comparison (one
seed lower, one level; docs/training.md), so the original's stays the default.
"""
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from models.gen import MLP, GraphComposer
from models.gqn import IMAGE_CHANNELS, SummedComposer
from models.scene import IMAGE_SIZES

ORIGINAL_IMAGE_SIZE = 64  # the size the original encoder was built for: two stride-2 stages
ORIGINAL_HALVINGS = 2
MIN_FEATURE_MAP = 8  # below this the 3 x 3 convolutions see mostly zero padding


def encoder_halvings(img_size: int) -> int:
    """How many of the encoder's two stride-2 stages stay stride 2 at ``img_size``.

    At 64 px (the original) and 32 px both do: final maps of 16 x 16 and 8 x 8. At 16 px both would leave
    4 x 4, where 12 of the 16 positions touch the padding of every 3 x 3 layer that follows, so the second
    stage keeps the map at 8 x 8 instead."""
    halvings = ORIGINAL_HALVINGS
    while halvings > 0 and img_size >> halvings < MIN_FEATURE_MAP:
        halvings -= 1
    return halvings


class CandidateEncoder(nn.Module):
    """One candidate image (B, 3, S, S) -> (B, out_channels): GQN's Pool without the pose.

    Eight convolutions in two residual blocks, then an average over the final map (the original's
    ``AvgPool2d(16)`` at 64 px). A stage that ``encoder_halvings`` turns off uses 1 x 1 stride-1
    convolutions in place of 2 x 2 stride-2 ones: a 2 x 2 stride-1 kernel would shave a row and a column
    off and shift the map by half a pixel, while 1 x 1 keeps every map aligned with its skip."""

    def __init__(self, img_size: int = ORIGINAL_IMAGE_SIZE, out_channels: int = 254, wide: int = 256,
                 narrow: int = 128):
        super().__init__()
        halvings = encoder_halvings(img_size)
        # Stage 1 (conv1) and stage 2 (conv2 and conv4, which must downsample alike: their sum is the skip).
        first = 2 if halvings >= 1 else 1
        second = 2 if halvings >= 2 else 1
        self.feature_size = img_size // (first * second)
        self.conv1 = nn.Conv2d(IMAGE_CHANNELS, wide, kernel_size=first, stride=first)
        self.conv2 = nn.Conv2d(wide, wide, kernel_size=second, stride=second)
        self.conv3 = nn.Conv2d(wide, narrow, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(narrow, wide, kernel_size=second, stride=second)
        self.conv5 = nn.Conv2d(wide, wide, kernel_size=3, padding=1)
        self.conv6 = nn.Conv2d(wide, narrow, kernel_size=3, padding=1)
        self.conv7 = nn.Conv2d(narrow, wide, kernel_size=3, padding=1)
        self.conv8 = nn.Conv2d(wide, out_channels, kernel_size=1)

    def feature_map(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, out_channels, F, F), F = ``feature_size``."""
        skip_in = F.relu(self.conv1(frames))  # (B, wide, S / first)
        skip_out = F.relu(self.conv2(skip_in))  # (B, wide, F)
        features = F.relu(self.conv4(F.relu(self.conv3(skip_in)))) + skip_out
        skip_out = F.relu(self.conv5(features))
        features = F.relu(self.conv7(F.relu(self.conv6(features)))) + skip_out
        return F.relu(self.conv8(features))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.feature_map(frames).mean(dim=(2, 3))


class DeepHead(nn.Module):
    """The baseline's query head: ``layers`` linear layers with ReLUs between (``fc0`` ... as in the original)."""

    def __init__(self, inputs: int, hidden: int, outputs: int, layers: int = 4):
        super().__init__()
        widths = [inputs] + [hidden] * (layers - 1) + [outputs]
        for i in range(layers):
            self.add_module(f"fc{i}", nn.Linear(widths[i], widths[i + 1]))
        self.layers = layers

    def forward(self, x):
        for i in range(self.layers):
            x = getattr(self, f"fc{i}")(x)
            if i < self.layers - 1:
                x = torch.relu(x)
        return x


RELATIVE_EPS = 1e-6  # a channel varying this little against the pool's mean channel variance counts as constant


def standardised(pool: torch.Tensor) -> torch.Tensor:
    """A pool of candidate embeddings (K, D), or one pool per query (B, P, D), with every channel standardised
    over its pool and scaled by 1 / sqrt(D): a candidate's expected squared norm is 1, less the channels that
    are constant over the pool. The epsilon is relative, so the result does not depend on the encoder's scale."""
    centred = pool - pool.mean(dim=-2, keepdim=True)
    variance = centred.pow(2).mean(dim=-2, keepdim=True)
    floor = RELATIVE_EPS * variance.mean(dim=-1, keepdim=True) + torch.finfo(pool.dtype).tiny
    return centred * ((variance + floor) * pool.shape[-1]).rsqrt()


def score(query_embeddings: torch.Tensor, candidate_embeddings: torch.Tensor, log_scale) -> torch.Tensor:
    """-exp(log_scale) * squared Euclidean distance between each query and each candidate.

    ``query_embeddings`` (B, D); ``candidate_embeddings`` (K, D), one pool shared by every query -> (B, K),
    or (B, P, D), a pool per query -> (B, P). Computed as |q|^2 + |c|^2 - 2 q.c (a matrix product, not a
    (B, K, D) difference), always in float32: under bf16 autocast the two large norms would cancel to noise.
    """
    device_type = query_embeddings.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        q = query_embeddings.float()
        c = candidate_embeddings.float()
        q_norms = q.pow(2).sum(-1, keepdim=True)  # (B, 1)
        if c.dim() == 2:
            cross = q @ c.T  # (B, K)
            c_norms = c.pow(2).sum(-1)[None, :]  # (1, K)
        else:
            cross = torch.einsum("bd,bpd->bp", q, c)  # (B, P)
            c_norms = c.pow(2).sum(-1)  # (B, P)
        distances = q_norms + c_norms - 2 * cross
        scale = torch.exp(torch.as_tensor(log_scale, dtype=torch.float32, device=q.device))
        return -distances * scale


class Verdict(NamedTuple):
    loss: torch.Tensor  # (B,) cross-entropy of each query
    correct: torch.Tensor  # (B,) 1.0 where the top-scoring candidate is the true one, else 0.0
    picked: torch.Tensor  # (B,) index of the top-scoring candidate


def judge(scores: torch.Tensor, answers: torch.Tensor) -> Verdict:
    """Scores (B, K) and the true candidate of each query (B,) -> loss, top-1 correctness, pick."""
    picked = scores.argmax(dim=1)
    return Verdict(F.cross_entropy(scores, answers, reduction="none"), (picked == answers).float(), picked)


def candidates(context_frames: torch.Tensor, query_frames: torch.Tensor):
    """Every view of a batch as one pool: context (N, V, 3, S, S) and query frames (N, Q, 3, S, S) ->
    images (N Q + N V, 3, S, S) and each query's true candidate (N Q,) (long).

    The queries come first, in query order (as in the original), so query i's answer is candidate i."""
    queries = query_frames.flatten(0, 1)
    images = torch.cat([queries, context_frames.flatten(0, 1).to(queries.dtype)])
    return images, torch.arange(queries.shape[0], device=queries.device)


class Classification(NamedTuple):
    loss: torch.Tensor  # (N Q,)
    accuracy: torch.Tensor  # (N Q,) 0/1 float
    scores: torch.Tensor  # (N Q, K)
    picked: torch.Tensor  # (N Q,) index into the pool of ``candidates``
    candidates: int  # K = N (Q + V)


@dataclass(frozen=True)
class EmbedClassifierConfig:
    img_size: int = 64
    baseline: bool = False  # True: GQN's summed composer; False: the GEN
    embedding: int = 254  # the composer's per-view embedding
    max_grid: int = 5  # largest k x k hotel the GEN must hold
    message_steps: int = 9
    gen_pose_copies: int = 8
    baseline_pose_copies: int = 32
    comparison: int = 254  # the space queries and candidates are compared in
    gen_head_hidden: int = 256
    baseline_head_hidden: int = 512
    baseline_head_layers: int = 4
    # The composers' memory normalisation; None leaves each composer's own default.
    memory_norm: Optional[bool] = None
    embedding_norm: bool = False  # True: standardise the candidate embeddings over their pool (the module's docstring)

    def __post_init__(self):
        if self.img_size not in IMAGE_SIZES:
            raise ValueError(f"img_size must be one of {IMAGE_SIZES}, got {self.img_size}")


class EmbedClassifier(nn.Module):
    def __init__(self, cfg: EmbedClassifierConfig = EmbedClassifierConfig()):
        super().__init__()
        self.config = cfg
        options = {} if cfg.memory_norm is None else {"memory_norm": cfg.memory_norm}
        if cfg.baseline:
            self.composer = SummedComposer(cfg.embedding, cfg.baseline_pose_copies, **options)
            self.post_embedding_processor = DeepHead(self.composer.output_dim, cfg.baseline_head_hidden,
                                                     cfg.comparison, cfg.baseline_head_layers)
        else:
            self.composer = GraphComposer(cfg.embedding, message_steps=cfg.message_steps,
                                          copies=cfg.gen_pose_copies, max_grid=cfg.max_grid, **options)
            self.post_embedding_processor = MLP(self.composer.output_dim, cfg.gen_head_hidden, cfg.comparison)
        self.candidates_encoder = CandidateEncoder(cfg.img_size, cfg.comparison)
        # s of the scale exp(s); shape (1,) as in the original's checkpoints. exp(0) = 1 to start.
        self.scalar = nn.Parameter(torch.zeros(1))

    def embed_queries(self, context_frames, context_poses, query_poses, origin, grid: int) -> torch.Tensor:
        """(N Q, comparison): the composer's r for each query, through the query head."""
        r = self.composer(context_frames, context_poses, query_poses, origin, grid)  # (N, Q, output_dim)
        return self.post_embedding_processor(r.flatten(0, 1))

    def embed_candidates(self, images: torch.Tensor) -> torch.Tensor:
        """(K, 3, S, S) -> (K, comparison)."""
        size = self.config.img_size
        assert images.shape[1:] == (IMAGE_CHANNELS, size, size), (
            f"candidates must be (K, 3, {size}, {size}), got {tuple(images.shape)}")
        return self.candidates_encoder(images)

    def forward(self, context_frames, context_poses, query_frames, query_poses, origin,
                grid: int) -> Classification:
        """Classify each query view among every view of the batch (``candidates``)."""
        pool, answers = candidates(context_frames, query_frames)
        queries = self.embed_queries(context_frames, context_poses, query_poses, origin, grid)
        scores = self.compare(queries, self.embed_candidates(pool))
        verdict = judge(scores, answers)
        return Classification(verdict.loss, verdict.correct, scores, verdict.picked, pool.shape[0])

    def score_pool(self, context_frames, context_poses, query_poses, origin, grid: int,
                   pool: torch.Tensor) -> torch.Tensor:
        """Scores (N Q, P) of each query against its own fixed pool (N Q, P, 3, S, S) of candidates, for an
        evaluation whose pools do not depend on the batch (``judge`` them with the true indices)."""
        queries = self.embed_queries(context_frames, context_poses, query_poses, origin, grid)
        assert pool.dim() == 5 and pool.shape[0] == queries.shape[0], (
            f"pool must be ({queries.shape[0]}, P, 3, S, S), one pool per query, got {tuple(pool.shape)}")
        embedded = self.embed_candidates(pool.flatten(0, 1)).view(*pool.shape[:2], -1)  # (N Q, P, comparison)
        return self.compare(queries, embedded)

    def compare(self, queries: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        """``score`` of query embeddings against a pool of candidate embeddings, standardised over the pool
        with ``embedding_norm``."""
        return score(queries, standardised(pool.float()) if self.config.embedding_norm else pool, self.scalar)

