"""The whole scene-rendering model: a composer (GEN or the GQN baseline) under a DRAW renderer.

Both composers share one interface, ``(context_frames, context_poses, query_poses, origin, grid) ->
r``, so ``baseline`` swaps one object and nothing else changes. Parameters are named as in the
original implementation (``composer.*``, ``inference_core.*``, ``generation_core.*``, ``eta_*``).
"""
from dataclasses import dataclass

import torch

from models.gen import GraphComposer
from models.gqn import CoreConfig, SummedComposer
from models.renderer import Losses, Renderer

IMAGE_SIZES = (16, 32, 64)


@dataclass(frozen=True)
class ModelConfig:
    img_size: int = 64
    layers: int = 8
    baseline: bool = False
    max_grid: int = 5  # largest k x k hotel the model must hold (the world's size in mazes)
    embedding: int = 254
    message_steps: int = 9
    gen_pose_copies: int = 8
    baseline_pose_copies: int = 32
    memory_norm: bool = True  # False: the original implementation's unnormalised memory (see models/gen.py)

    def __post_init__(self):
        if self.img_size not in IMAGE_SIZES:
            raise ValueError(f"img_size must be one of {IMAGE_SIZES}, got {self.img_size}")
        if self.layers < 1:
            raise ValueError(f"layers must be at least 1, got {self.layers}")


class SceneModel(Renderer):
    def __init__(self, cfg: ModelConfig):
        if cfg.baseline:
            composer = SummedComposer(cfg.embedding, cfg.baseline_pose_copies, memory_norm=cfg.memory_norm)
        else:
            composer = GraphComposer(cfg.embedding, message_steps=cfg.message_steps, copies=cfg.gen_pose_copies,
                                     max_grid=cfg.max_grid, memory_norm=cfg.memory_norm)
        super().__init__(CoreConfig(img_size=cfg.img_size, r_dim=composer.output_dim), cfg.layers)
        self.config = cfg
        self.composer = composer

    def represent(self, context_frames, context_poses, query_poses, origin, grid: int) -> torch.Tensor:
        """r for every query, flattened to (N * Q, r_dim)."""
        n, v = context_poses.shape[:2]
        size = self.config.img_size
        assert context_frames.shape == (n, v, 3, size, size), (
            f"context_frames must be ({n}, {v}, 3, {size}, {size}), got {tuple(context_frames.shape)}")
        assert origin.shape == (n, 2), f"origin must be ({n}, 2), got {tuple(origin.shape)}"
        return self.composer(context_frames, context_poses, query_poses, origin, grid).flatten(0, 1)

    def forward(self, context_frames, context_poses, query_frames, query_poses, origin, grid: int,
                sigma: float) -> Losses:
        """-ELBO terms per query image, (N * Q,) each; the one loss used by training and evaluation."""
        r = self.represent(context_frames, context_poses, query_poses, origin, grid)
        return self.elbo(query_frames.flatten(0, 1), query_poses.flatten(0, 1), r, sigma)

    def render(self, context_frames, context_poses, query_poses, origin, grid: int, query_frames=None):
        """Images (N * Q, 3, S, S): reconstructions if ``query_frames`` is given, else generations."""
        r = self.represent(context_frames, context_poses, query_poses, origin, grid)
        v = query_poses.flatten(0, 1)
        if query_frames is None:
            return self.generate(v, r)
        return self.reconstruct(query_frames.flatten(0, 1), v, r)


WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def clean_state_dict(state_dict: dict) -> dict:
    """Strip the prefixes DataParallel / DDP (``module.``) and torch.compile (``_orig_mod.``) add."""
    cleaned = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        cleaned[key] = value
    return cleaned


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The SceneModel inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model
