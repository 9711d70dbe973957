"""The GEN's geometry: where the graph nodes sit, which nodes are joined, and how a point is spread over
the nodes around it. No learning happens here.

World coordinates (see ``utils/data/hotel.py`` for how camera poses get there): every maze owns a square
cell of side ``CELL`` = 2. A k x k hotel has its lower-left corner at ``origin`` (per hotel, shifted
at random inside the world during training); maze (i, j) occupies
``[origin_x + 2 i, origin_x + 2 i + 2] x [origin_y + 2 j, origin_y + 2 j + 2]``.

Nodes form a regular lattice with ``NODES_PER_CELL`` = 4 intervals per cell, so a k x k hotel has
``4 (k - 1) + 5`` = ``4 k + 1`` nodes per side (5 x 5 for one maze) and neighbouring mazes share
the nodes on their common border.
"""
import torch
from torch import nn

CELL = 2.0
NODES_PER_CELL = 4
SPACING = CELL / NODES_PER_CELL


def nodes_per_side(grid: int) -> int:
    """4 (k - 1) + 5 nodes along one side of a k x k hotel."""
    return NODES_PER_CELL * grid + 1


def lattice_edges(side: int) -> torch.Tensor:
    """Directed edges (2, E) between 4-neighbours of a side x side lattice, both directions.

    Node ``n = row * side + col`` sits at ``(col, row) * SPACING`` from the origin.
    """
    index = torch.arange(side * side).view(side, side)
    right = torch.stack([index[:, :-1].reshape(-1), index[:, 1:].reshape(-1)])
    up = torch.stack([index[:-1, :].reshape(-1), index[1:, :].reshape(-1)])
    one_way = torch.cat([right, up], dim=1)
    return torch.cat([one_way, one_way.flip(0)], dim=1)


class GridStructure(nn.Module):
    """Node offsets, edges and bilinear weights of the k x k hotel graph.

    Everything is a non-persistent buffer, computed once at construction, so it follows the model
    across devices but never enters a checkpoint.
    """

    def __init__(self, grid: int):
        super().__init__()
        self.grid = grid
        self.side = nodes_per_side(grid)
        ticks = torch.arange(self.side, dtype=torch.float32) * SPACING
        rows, cols = torch.meshgrid(ticks, ticks, indexing="ij")
        self.register_buffer("node_offsets", torch.stack([cols, rows], -1).view(-1, 2), persistent=False)
        edges = lattice_edges(self.side)
        self.register_buffer("source", edges[0].contiguous(), persistent=False)
        self.register_buffer("sink", edges[1].contiguous(), persistent=False)

    @property
    def num_nodes(self) -> int:
        return self.side * self.side

    def node_positions(self, origin: torch.Tensor) -> torch.Tensor:
        """World positions of the nodes for hotels whose lower-left corner is ``origin`` (N, 2)."""
        return origin[:, None, :] + self.node_offsets  # (N, nodes, 2)

    def bilinear_weights(self, points: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
        """Dense weights (N, P, nodes) spreading each point over the 4 nodes of its lattice square.

        For a point at fractional lattice coordinates (u, v) inside the square with corners
        (u0, v0) .. (u0 + 1, v0 + 1), the corner (u0 + a, v0 + b) gets weight
        ``(a ? fu : 1 - fu) * (b ? fv : 1 - fv)`` with ``fu = u - u0``: the weights are non-negative,
        sum to 1, and reproduce the point as the weighted mean of the corner positions. Points
        outside the hotel are clamped onto its border.

        points: (N, P, 2) world x, y; origin: (N, 2).
        """
        assert points.dim() == 3 and points.shape[-1] == 2, f"points must be (N, P, 2), got {tuple(points.shape)}"
        last = self.side - 1
        lattice = ((points - origin[:, None, :]) / SPACING).clamp(0, last)  # (N, P, 2)
        corner = lattice.floor().clamp(max=last - 1)
        frac = lattice - corner  # (N, P, 2) in [0, 1]
        corner = corner.long()
        weights = points.new_zeros(*points.shape[:2], self.num_nodes)
        for dx in (0, 1):
            for dy in (0, 1):
                wx = frac[..., 0] if dx else 1 - frac[..., 0]
                wy = frac[..., 1] if dy else 1 - frac[..., 1]
                node = (corner[..., 1] + dy) * self.side + corner[..., 0] + dx  # (N, P)
                weights.scatter_add_(2, node.unsqueeze(-1), (wx * wy).unsqueeze(-1))
        return weights
