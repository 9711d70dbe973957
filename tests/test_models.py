"""The model: GEN geometry, both composers, the DRAW renderer, and the original parameter layout."""
import math
import re

import pytest
import torch

from models.gen import GraphComposer
from models.gqn import SummedComposer
from models.renderer import gaussian_kl
from models.scene import ModelConfig, SceneModel, clean_state_dict, unwrap
from models.structure import CELL, SPACING, GridStructure, nodes_per_side
from utils.data.hotel import POSE_EXTENT, maze_cells, maze_to_world
from tests.conftest import REPO_ROOT

TINY = dict(img_size=16, layers=2)


@pytest.mark.parametrize("grid", [1, 2, 3, 5])
def test_lattice_has_4k_plus_1_nodes_per_side_and_nearest_neighbour_edges(grid):
    structure = GridStructure(grid)
    side = 4 * (grid - 1) + 5
    assert nodes_per_side(grid) == side and structure.num_nodes == side * side
    pairs = set(zip(structure.source.tolist(), structure.sink.tolist()))
    assert len(pairs) == len(structure.source) == 2 * 2 * side * (side - 1)
    assert all((b, a) in pairs for a, b in pairs), "edges must be bidirectional"
    offsets = structure.node_offsets
    lengths = (offsets[structure.source] - offsets[structure.sink]).norm(dim=1)
    assert torch.allclose(lengths, torch.full_like(lengths, SPACING))
    assert torch.allclose(offsets.max(0).values, torch.full((2,), CELL * grid))


def test_bilinear_weights_sum_to_one_and_reproduce_the_point():
    structure = GridStructure(3)
    origin = torch.tensor([[-1.0, -1.0], [2.5, 0.3]])
    points = origin[:, None, :] + torch.rand(2, 50, 2) * CELL * 3
    weights = structure.bilinear_weights(points, origin)
    assert (weights >= 0).all()
    assert ((weights > 0).sum(-1) <= 4).all()
    assert torch.allclose(weights.sum(-1), torch.ones(2, 50))
    assert torch.allclose(weights @ structure.node_positions(origin), points, atol=1e-5)


def test_a_point_on_a_node_puts_all_its_weight_there():
    structure = GridStructure(2)
    origin = torch.tensor([[0.5, -1.0]])
    positions = structure.node_positions(origin)  # (1, nodes, 2)
    weights = structure.bilinear_weights(positions, origin)[0]
    assert torch.allclose(weights, torch.eye(structure.num_nodes), atol=1e-6)


def test_pose_extent_stretches_onto_the_maze_cell():
    low, high = POSE_EXTENT
    corners = torch.tensor([[low, low], [high, high]])
    origin = torch.tensor([3.0, -1.0])
    world = maze_to_world(corners, torch.tensor([1.0, 0.0]), origin)
    assert torch.allclose(world, torch.tensor([[5.0, -1.0], [7.0, 1.0]]))
    raw = maze_to_world(torch.zeros(2), torch.tensor([1.0, 0.0]), origin, raw=True)
    assert torch.allclose(raw, torch.tensor([6.0, 0.0]))  # the original: pose 0 at the cell centre


def random_hotel(grid, hotels=2, views=3, size=16):
    mazes = grid * grid
    origin = torch.rand(hotels, 2) * 2 - 1
    cells = maze_cells(grid).repeat_interleave(views, 0)  # (M * V, 2)
    local = torch.empty(hotels, mazes * views, 2).uniform_(*POSE_EXTENT)
    xy = maze_to_world(local, cells, origin[:, None, :])
    yaw = torch.rand(hotels, mazes * views, 1) * 6.28
    poses = torch.cat([xy, torch.zeros_like(yaw), yaw.cos(), yaw.sin(), torch.ones_like(yaw), torch.zeros_like(yaw)], -1)
    frames = torch.rand(hotels, mazes * views, 3, size, size)
    return frames, poses, origin


@pytest.mark.parametrize("grid", [1, 2, 3])
@pytest.mark.parametrize("composer_class, width", [(GraphComposer, 312), (SummedComposer, 480)])
def test_composers_give_one_vector_per_query(grid, composer_class, width):
    composer = composer_class()
    frames, poses, origin = random_hotel(grid)
    queries = poses[:, ::3]  # (N, M, 7)
    with torch.no_grad():
        r = composer(frames, poses, queries, origin, grid)
    assert r.shape == (2, grid * grid, width) and composer.output_dim == width
    assert torch.isfinite(r).all()


def query_at_maze_centre(maze, grid, origin):
    centre = maze_to_world(torch.full((2,), sum(POSE_EXTENT) / 2), maze_cells(grid)[maze], origin[0])
    return torch.cat([centre, torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0])])[None, None]  # (1, 1, 7)


def test_a_gen_query_reads_its_own_maze_while_gqn_mixes_all_mazes():
    # Corner mazes of a 3x3 hotel are 16 lattice hops apart, more than the 9 message-passing steps:
    # what is written into maze 8 cannot reach a query at the centre of maze 0 - but reaches maze 8's.
    torch.manual_seed(0)
    grid, views = 3, 2
    frames, poses, origin = random_hotel(grid, hotels=1, views=views)
    changed = frames.clone()
    changed[:, 8 * views:] = torch.rand_like(changed[:, 8 * views:])
    queries = torch.cat([query_at_maze_centre(0, grid, origin), query_at_maze_centre(8, grid, origin)], 1)
    for composer, own_maze_only in ((GraphComposer(), True), (SummedComposer(), False)):
        with torch.no_grad():
            before = composer(frames, poses, queries, origin, grid)
            after = composer(changed, poses, queries, origin, grid)
        assert torch.equal(before[0, 0], after[0, 0]) == own_maze_only
        assert not torch.equal(before[0, 1], after[0, 1])


def test_every_query_reads_only_nodes_of_its_own_maze_cell():
    grid = 2
    structure = GridStructure(grid)
    frames, poses, origin = random_hotel(grid, hotels=1, views=20)
    weights = structure.bilinear_weights(poses[..., :2], origin)[0]  # (M * V, nodes)
    node_cell = ((structure.node_offsets.unsqueeze(0) - CELL * maze_cells(grid).unsqueeze(1)) / CELL)  # (M, nodes, 2)
    in_cell = ((node_cell >= -1e-6) & (node_cell <= 1 + 1e-6)).all(-1).float()  # (M, nodes)
    own = in_cell.repeat_interleave(20, 0)
    assert torch.allclose((weights * own).sum(-1), torch.ones(len(weights)))


@pytest.mark.parametrize("baseline", [False, True])
def test_renderer_losses_are_finite_and_images_in_range(baseline):
    torch.manual_seed(0)
    model = SceneModel(ModelConfig(baseline=baseline, **TINY))
    frames, poses, origin = random_hotel(2)
    query_frames, query_poses = frames[:, ::3], poses[:, ::3]
    losses = model(frames, poses, query_frames, query_poses, origin, 2, sigma=2.0)
    assert losses.loss.shape == (8,) and torch.isfinite(losses.loss).all()
    assert torch.allclose(losses.loss, losses.nll + losses.kl) and (losses.kl >= 0).all()
    losses.loss.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        for images in (model.render(frames, poses, query_poses, origin, 2),
                       model.render(frames, poses, query_poses, origin, 2, query_frames)):
            assert images.shape == (8, 3, 16, 16) and images.min() >= 0 and images.max() <= 1


def test_gaussian_kl_is_zero_for_equal_and_positive_for_different_distributions():
    mu, logvar = torch.randn(10), torch.randn(10)
    assert torch.allclose(gaussian_kl(mu, logvar, mu, logvar), torch.zeros(10), atol=1e-6)
    assert (gaussian_kl(mu + 1, logvar, mu, logvar) > 0).all()
    # against torch.distributions on one case
    q, p = torch.distributions.Normal(0.3, 0.5), torch.distributions.Normal(-0.2, 1.5)
    expected = torch.distributions.kl_divergence(q, p)
    got = gaussian_kl(torch.tensor(0.3), torch.tensor(0.25).log(), torch.tensor(-0.2), torch.tensor(2.25).log())
    assert torch.allclose(got, expected)


def test_invalid_image_size_is_refused():
    with pytest.raises(ValueError, match="img_size"):
        ModelConfig(img_size=48)


def test_wrapper_prefixes_are_stripped():
    model = SceneModel(ModelConfig(**TINY))
    wrapped = torch.nn.DataParallel(model)
    state = clean_state_dict({"_orig_mod.module." + k: v for k, v in wrapped.module.state_dict().items()})
    assert state.keys() == model.state_dict().keys()
    assert unwrap(wrapped) is model


# The original implementation's parameter names and shapes (jaks19/scene-generation-from-novel-viewpoints-gens,
# dumped from its GEN and baseline models at their defaults; a copy of ../shared/reference's file, kept with the
# tests so that this check runs everywhere).
ORIGINAL_STATE_DICT = REPO_ROOT / "tests" / "reference" / "original_state_dict.txt"


def reference_shapes(section):
    text = ORIGINAL_STATE_DICT.read_text()
    blocks = dict(re.findall(r"# (\w+) \d+\n(.*?)(?=\n# |\Z)", text, re.S))
    return {name: tuple(int(d) for d in re.findall(r"\d+", shape))
            for name, shape in (line.split(" ", 1) for line in blocks[section].strip().splitlines())}


@pytest.mark.parametrize("baseline, section", [(False, "GEN"), (True, "baseline")])
def test_parameters_match_the_original_implementation(baseline, section):
    """The original composer holds exactly the original's tensors; --memory_norm adds no parameter, only the
    baseline's per-view statistics (buffers)."""
    reference = reference_shapes(section)
    shapes = lambda model: {name: tuple(t.shape) for name, t in model.state_dict().items()}  # noqa: E731
    original = SceneModel(ModelConfig(baseline=baseline, memory_norm=False))
    assert shapes(original) == reference
    model = SceneModel(ModelConfig(baseline=baseline))
    assert dict(model.named_parameters()).keys() == dict(original.named_parameters()).keys()
    extra = {name: shape for name, shape in shapes(model).items() if name not in reference}
    view_norm = {"composer.view_norm.running_mean": (254,), "composer.view_norm.running_var": (254,),
                 "composer.view_norm.num_batches_tracked": ()}
    assert extra == (view_norm if baseline else {})
    assert {name: shape for name, shape in shapes(model).items() if name in reference} == reference


def test_static_work_runs_once_per_forward_not_once_per_layer():
    model = SceneModel(ModelConfig(img_size=16, layers=4))
    counts = {"prepare": 0, "transposed_conv": 0}
    for core in (model.inference_core, model.generation_core):
        core.upsample_r.register_forward_hook(lambda *_: counts.__setitem__("transposed_conv", 1))
        prepare = core.prepare
        core.prepare = lambda *a, _prepare=prepare: (counts.__setitem__("prepare", counts["prepare"] + 1),
                                                      _prepare(*a))[1]
    frames, poses, origin = random_hotel(1)
    model(frames, poses, frames[:, :1], poses[:, :1], origin, 1, sigma=1.0)
    assert counts["prepare"] == 2  # once per core, not once per layer
    assert counts["transposed_conv"] == 0  # r is upsampled by a matrix product, never the convolution


def test_r_is_laid_out_as_in_the_original_implementation():
    """GEN: [8 pose copies | read state (x, y, embedding)]; baseline: [query x, y | 32 pose copies | sum].
    Original checkpoints' upsample_r weights expect exactly these channels."""
    torch.manual_seed(0)
    frames, poses, origin = random_hotel(2)
    queries = poses[:, ::3]
    with torch.no_grad():
        gen, gqn = GraphComposer()(frames, poses, queries, origin, 2), SummedComposer()(frames, poses, queries, origin, 2)
    assert torch.equal(gen[..., :56], queries.repeat(1, 1, 8))
    # Bilinear interpolation of the nodes' positions gives back the query's own position.
    assert torch.allclose(gen[..., 56:58], queries[..., :2], atol=1e-5)
    assert torch.equal(gqn[..., :2], queries[..., :2]) and torch.equal(gqn[..., 2:226], queries.repeat(1, 1, 32))
    assert torch.equal(gqn[:, :1, 226:].expand(-1, 4, -1), gqn[..., 226:])  # one sum per hotel


@pytest.mark.parametrize("memory_norm", [False, True], ids=["original", "memory_norm"])
def test_message_passing_matches_a_hand_computation_on_the_smallest_lattice(memory_norm):
    """One and two rounds on a 1x1 hotel, edge by edge: a message from [source, sink] states goes to the
    sink, and each node's embedding (not its position) moves by node_module([summed messages, state]).
    With ``memory_norm`` the networks and the queries read each node's memory standardised (zero mean, unit
    variance over its 254 values), while the memory itself stays the raw residual sum."""
    def read_memory(memory):
        if not memory_norm:
            return memory
        mean = memory.mean(-1, keepdim=True)
        return (memory - mean) / ((memory - mean).pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()

    torch.manual_seed(0)
    frames, poses, origin = random_hotel(1, hotels=1, views=3)
    query = poses[:, :1]
    for rounds in (1, 2):
        composer = GraphComposer(message_steps=rounds, memory_norm=memory_norm)
        structure = composer.structure(1)
        with torch.no_grad():
            r = composer(frames, poses, query, origin, 1)
            embeddings = composer.embedder(frames[0], poses[0])  # (V, 254)
            write = structure.bilinear_weights(poses[..., :2], origin)[0]  # (V, nodes)
            positions, memory = structure.node_positions(origin)[0], write.T @ embeddings  # (nodes, 2), (nodes, 254)
            for _ in range(rounds):
                state = torch.cat([positions, read_memory(memory)], dim=-1)  # (nodes, 256)
                incoming = torch.zeros_like(state)
                for source, sink in zip(structure.source.tolist(), structure.sink.tolist()):
                    incoming[sink] += composer.edge_module(torch.cat([state[source], state[sink]]))
                memory = memory + composer.node_module(torch.cat([incoming, state], dim=-1))
            state = torch.cat([positions, read_memory(memory)], dim=-1)
            read = structure.bilinear_weights(query[..., :2], origin)[0] @ state  # (1, 256)
        assert torch.allclose(r[0, :, 56:], read, atol=1e-4), rounds


def test_gaussian_kl_stays_non_negative_in_bf16_and_finite_for_large_variances():
    torch.manual_seed(0)
    mu_q, logvar_q, mu_p, logvar_p = (torch.randn(3, 16, 16) * 0.1 for _ in range(4))
    low = [t.bfloat16() for t in (mu_q, logvar_q, mu_p, logvar_p)]
    kl = gaussian_kl(*low)
    assert kl.dtype == torch.float32 and (kl >= 0).all()
    assert torch.allclose(kl, gaussian_kl(*(t.float() for t in low)))
    q, p = torch.distributions.Normal(0.0, math.exp(89.0 / 2)), torch.distributions.Normal(0.0, math.exp(89.5 / 2))
    got = gaussian_kl(torch.tensor(0.0), torch.tensor(89.0), torch.tensor(0.0), torch.tensor(89.5))
    assert torch.isfinite(got) and torch.allclose(got, torch.distributions.kl_divergence(q, p).float(), rtol=1e-4)
