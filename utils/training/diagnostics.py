"""Health of the memory path: is r bounded, do the generated views depend on the context, and does any
gradient reach the composer. A model whose memory path has died still lowers its loss (it learns the mean
view of a pose), so the loss alone cannot tell; these numbers can (docs/training.md, "Diagnostics").
"""
import torch

DEAD_WARNING = ("the memory path is dead: {what}; the renderer ignores the context views (see "
                "docs/training.md, Diagnostics; the original composer (--no-memory_norm) dies this way)")


def other_mazes_views(context_frames: torch.Tensor, grid: int) -> torch.Tensor:
    """Every maze's context frames replaced by the next maze's (in this hotel or the next hotel), poses
    untouched: (N, M * C, 3, S, S) -> the same shape. Needs at least two mazes in the batch."""
    n, views = context_frames.shape[:2]
    mazes = grid * grid
    assert n * mazes > 1, "swapping context views needs at least two mazes"
    per_maze = context_frames.reshape(n * mazes, views // mazes, *context_frames.shape[2:])
    return per_maze.roll(1, dims=0).reshape(context_frames.shape)


def composer_grad_norm(model) -> torch.Tensor:
    """The gradient norm of the composer's parameters alone (0-d tensor; exactly 0 when none reaches it)."""
    grads = [p.grad for p in model.composer.parameters() if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())


@torch.no_grad()
def memory_diagnostics(model, inputs, seed: int) -> dict:
    """{r_memory_abs_mean, r_memory_abs_max, context_sensitivity} of ``model`` (a SceneModel) on one batch
    (``HotelBatch.model_inputs``). r's memory channels are its last ``embedding`` (the node state read at
    the query for GEN, the summed views for GQN); the sensitivity is the mean absolute change of the
    generated image means, under the same DRAW noise, when every maze's context views are another maze's.
    The means are taken before clipping to [0, 1]: an untrained renderer's are all below 0, and clipped
    they would hide any change."""
    context_frames, context_poses, _, query_poses, origin, grid = inputs
    v = query_poses.flatten(0, 1)
    generated = []
    for frames in (context_frames, other_mazes_views(context_frames, grid)):
        r = model.represent(frames, context_poses, query_poses, origin, grid)
        if not generated:
            memory = r[:, -model.config.embedding:].abs()
        torch.manual_seed(seed)
        generated.append(model.draw(v, r)[0])
    return {"r_memory_abs_mean": memory.mean().item(), "r_memory_abs_max": memory.max().item(),
            "context_sensitivity": (generated[0] - generated[1]).abs().mean().item()}
