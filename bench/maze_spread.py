"""How much of GQN's summed memory tells mazes apart, at initialisation: the across-maze standard deviation of
r's memory channels over their RMS, with the layer norm of the sum only and with --memory_norm's per-view
standardisation before it (docs/training.md, Diagnostics).

    python -m bench.maze_spread DATA_DIR [--mazes 16] [--views 32] [--img_size 16] [--seed 0]
"""
import argparse

import torch

from models.scene import ModelConfig, SceneModel
from utils.data.hotel import HotelSteps


def maze_spread(model, inputs) -> float:
    """Across-maze std / RMS of r's memory channels on one batch of 1x1 hotels (one query per maze)."""
    with torch.no_grad():
        r = model.represent(*inputs)[:, -model.config.embedding:]
    return (r.std(0).pow(2).mean() / r.pow(2).mean()).sqrt().item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir")
    p.add_argument("--mazes", type=int, default=16)
    p.add_argument("--views", type=int, default=32)
    p.add_argument("--img_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    batch = HotelSteps(args.data_dir, args.img_size, args.mazes, [1], args.views, args.seed)[0]
    context_frames, context_poses, _, query_poses, origin, grid = batch.model_inputs(torch.device("cpu"))
    inputs = (context_frames, context_poses, query_poses, origin, grid)
    for label, view_norm in (("layer norm of the sum only", False), ("--memory_norm (views standardised)", True)):
        torch.manual_seed(args.seed)
        model = SceneModel(ModelConfig(img_size=args.img_size, layers=2, baseline=True)).train()
        if not view_norm:
            model.composer.view_norm = None
        print(f"{label}: across-maze std / RMS of r's memory = {maze_spread(model, inputs):.3f}")


if __name__ == "__main__":
    main()
