"""The GEN composer (Alet, Jeewajee et al., ICML 2019): views are written into graph nodes laid on the
ground plane, nodes exchange messages along the lattice edges, and each query reads the nodes around
its own position. Geometry lives in ``models/structure.py``; this module holds what is learned.
"""
import torch
from torch import nn

from models.gqn import POSE_DIM, Pool, normalized, pose_copies
from models.structure import GridStructure

POSITION_DIM = 2  # a node's state starts with its world (x, y)


class MLP(nn.Module):
    """Two linear layers with a ReLU between (names ``fc0``, ``fc1`` as in the original)."""

    def __init__(self, inputs: int, hidden: int, outputs: int):
        super().__init__()
        self.fc0 = nn.Linear(inputs, hidden)
        self.fc1 = nn.Linear(hidden, outputs)

    def forward(self, x):
        return self.fc1(torch.relu(self.fc0(x)))


class GraphComposer(nn.Module):
    """Context views -> one vector per query, through a k x k lattice of memory nodes.

    ``memory_norm`` (the default) layer-normalises the node memories wherever they are read: by the edge and
    node networks in every message round, and by the queries. The residual sum itself stays unnormalised,
    so what the views wrote reaches the read-out through an identity path. Without it (the original
    implementation) each round feeds the raw memory back into the networks, a 9-fold product that Adam
    inflates to ~1e11 within 20 steps, saturating the DRAW cores so that no gradient reaches the composer.
    Normalisation has no parameters: checkpoints of either kind hold the same tensors.
    """

    def __init__(self, embedding: int = 254, hidden: int = 512, message_steps: int = 9, copies: int = 8,
                 max_grid: int = 5, memory_norm: bool = True):
        super().__init__()
        self.memory_norm = memory_norm
        state = POSITION_DIM + embedding
        self.embedder = Pool(embedding)
        self.edge_module = MLP(2 * state, hidden, state)  # [source, sink] -> message
        self.node_module = MLP(2 * state, hidden, embedding)  # [summed messages, state] -> update
        self.message_steps = message_steps
        self.copies = copies
        self.output_dim = state + copies * POSE_DIM
        # Geometry of every grid size the world can hold, built once (index buffers, no parameters).
        self.structures = nn.ModuleDict({str(k): GridStructure(k) for k in range(1, max_grid + 1)})

    def structure(self, grid: int) -> GridStructure:
        if str(grid) not in self.structures:
            raise ValueError(f"grid {grid} x {grid} is larger than this model's world ({len(self.structures)} x "
                             f"{len(self.structures)} mazes at most)")
        return self.structures[str(grid)]

    def forward(self, context_frames, context_poses, query_poses, origin, grid: int):
        """context_frames (N, V, 3, S, S), context_poses (N, V, 7), query_poses (N, Q, 7) in world
        coordinates; origin (N, 2) the lower-left corner of each hotel -> r (N, Q, output_dim)."""
        n, v = context_poses.shape[:2]
        structure = self.structure(grid)
        embeddings = self.embedder(context_frames.flatten(0, 1), context_poses.flatten(0, 1)).view(n, v, -1)
        write = structure.bilinear_weights(context_poses[..., :POSITION_DIM], origin)  # (N, V, nodes)
        memory = write.transpose(1, 2) @ embeddings  # (N, nodes, embedding): views summed per node
        positions = structure.node_positions(origin)  # (N, nodes, 2)
        source, sink = structure.source, structure.sink
        for _ in range(self.message_steps):
            state = torch.cat([positions, normalized(memory, self.memory_norm)], dim=-1)  # (N, nodes, state)
            messages = self.edge_module(torch.cat([state[:, source], state[:, sink]], dim=-1))  # (N, E, state)
            # In the messages' dtype: under bf16 autocast they are bf16 while positions keep state fp32.
            incoming = messages.new_zeros(state.shape).index_add_(1, sink, messages)  # (N, nodes, state)
            memory = memory + self.node_module(torch.cat([incoming, state], dim=-1))
        state = torch.cat([positions, normalized(memory, self.memory_norm)], dim=-1)
        read = structure.bilinear_weights(query_poses[..., :POSITION_DIM], origin)  # (N, Q, nodes)
        # The original's layout: the pose copies first, then the read state. Original checkpoints' upsample_r
        # weights expect it channel by channel.
        return torch.cat([pose_copies(query_poses, self.copies), read @ state], dim=-1)  # (N, Q, output_dim)
