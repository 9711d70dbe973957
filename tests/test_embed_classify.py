"""The "GEN v/s GQN embedders" classifier: candidate encoder, scores, loss, candidate pool, both composers."""
import math
from pathlib import Path

import pytest
import torch

from models.embed_classify import (CandidateEncoder, EmbedClassifier, EmbedClassifierConfig, candidates,
                                   encoder_halvings, judge, score)
from utils.data.hotel import POSE_EXTENT, maze_cells, maze_to_world

TINY_SIZE = 16
COMPARISON = 254


def hotel_batch(grid, hotels=2, views=2, size=TINY_SIZE, seed=0):
    """Random context and query views (one query per maze) of ``hotels`` k x k hotels, poses in world units."""
    g = torch.Generator().manual_seed(seed)
    mazes = grid * grid

    def poses(per_maze):
        cells = maze_cells(grid).repeat_interleave(per_maze, 0)  # (M * per_maze, 2)
        low, high = POSE_EXTENT
        local = low + torch.rand(hotels, mazes * per_maze, 2, generator=g) * (high - low)
        xy = maze_to_world(local, cells, origin[:, None, :])
        yaw = torch.rand(hotels, mazes * per_maze, 1, generator=g) * 2 * math.pi
        zero, one = torch.zeros_like(yaw), torch.ones_like(yaw)
        return torch.cat([xy, zero, yaw.cos(), yaw.sin(), one, zero], -1)

    origin = torch.rand(hotels, 2, generator=g) * 2 - 1
    context_frames = torch.rand(hotels, mazes * views, 3, size, size, generator=g)
    query_frames = torch.rand(hotels, mazes, 3, size, size, generator=g)
    return context_frames, poses(views), query_frames, poses(1), origin, grid


def tiny_model(baseline, size=TINY_SIZE, embedding_norm=True):
    torch.manual_seed(0)
    return EmbedClassifier(EmbedClassifierConfig(img_size=size, baseline=baseline, max_grid=2,
                                                 embedding_norm=embedding_norm))


@pytest.mark.parametrize("size, feature_map", [(16, 8), (32, 8), (64, 16)])
def test_candidate_encoder_gives_one_vector_per_image_at_every_size(size, feature_map):
    torch.manual_seed(0)
    encoder = CandidateEncoder(size, COMPARISON)
    images = torch.rand(2, 3, size, size)
    assert encoder.feature_size == feature_map
    assert encoder.feature_map(images).shape == (2, COMPARISON, feature_map, feature_map)
    assert encoder(images).shape == (2, COMPARISON)


def test_only_16_px_gives_up_a_stride_2_stage():
    assert [encoder_halvings(size) for size in (16, 32, 64)] == [1, 2, 2]
    small = CandidateEncoder(16)
    assert small.conv1.stride == (2, 2) and small.conv2.stride == small.conv4.stride == (1, 1)


def test_64_px_model_has_the_original_parameter_shapes():
    model = EmbedClassifier(EmbedClassifierConfig(img_size=64))
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes["candidates_encoder.conv1.weight"] == (256, 3, 2, 2)
    assert shapes["candidates_encoder.conv2.weight"] == (256, 256, 2, 2)
    assert shapes["candidates_encoder.conv4.weight"] == (256, 128, 2, 2)
    assert shapes["candidates_encoder.conv5.weight"] == (256, 256, 3, 3)
    assert shapes["candidates_encoder.conv8.weight"] == (254, 256, 1, 1)
    assert shapes["post_embedding_processor.fc0.weight"] == (256, 312)
    assert shapes["post_embedding_processor.fc1.weight"] == (254, 256)
    assert shapes["scalar"] == (1,)
    baseline = {name: tuple(p.shape) for name, p in
                EmbedClassifier(EmbedClassifierConfig(img_size=64, baseline=True)).named_parameters()}
    assert baseline["post_embedding_processor.fc0.weight"] == (512, 480)
    for hidden in ("fc1", "fc2"):
        assert baseline[f"post_embedding_processor.{hidden}.weight"] == (512, 512)
    assert baseline["post_embedding_processor.fc3.weight"] == (254, 512)


def test_scores_and_loss_on_a_hand_made_case():
    queries = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    pool = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    # Squared distances: q0 -> (1, 10), q1 -> (1, 4); the scale exp(log 2) = 2.
    scores = score(queries, pool, torch.tensor([math.log(2.0)]))
    assert torch.allclose(scores, torch.tensor([[-2.0, -20.0], [-2.0, -8.0]]))
    verdict = judge(scores, torch.tensor([0, 1]))
    # Cross-entropy = logsumexp(scores) - score of the answer.
    expected = [math.log(1 + math.exp(-18.0)), 6.0 + math.log(1 + math.exp(-6.0))]
    assert torch.allclose(verdict.loss, torch.tensor(expected), rtol=1e-5, atol=1e-7)
    assert verdict.correct.tolist() == [1.0, 0.0] and verdict.picked.tolist() == [0, 0]


def test_a_pool_per_query_scores_like_a_shared_pool():
    torch.manual_seed(0)
    queries, pool = torch.randn(3, 5), torch.randn(4, 5)
    shared = score(queries, pool, 0.3)
    per_query = score(queries, pool.expand(3, -1, -1), 0.3)
    direct = -math.exp(0.3) * (queries[:, None] - pool[None]).pow(2).sum(-1)
    assert torch.allclose(shared, direct, atol=1e-5) and torch.allclose(per_query, direct, atol=1e-5)


def constant_views(hotels, views, queries, size=4):
    """Context and query frames each filled with its own value: the value names the view."""
    values = torch.arange(hotels * (views + queries), dtype=torch.float32)
    context_values = values[:hotels * views].view(hotels, views)
    query_values = values[hotels * views:].view(hotels, queries)
    fill = lambda v: v[..., None, None, None].expand(*v.shape, 3, size, size).clone()  # noqa: E731
    return fill(context_values), fill(query_values)


def test_each_query_s_true_candidate_is_its_own_view():
    hotels, views, queries = 3, 5, 4
    context_frames, query_frames = constant_views(hotels, views, queries)
    pool, answers = candidates(context_frames, query_frames)
    assert pool.shape[0] == hotels * (views + queries) and answers.dtype == torch.long
    assert torch.equal(pool[answers], query_frames.flatten(0, 1))
    # Every view of the batch is in the pool exactly once, so no other candidate equals a query's view.
    names = pool[:, 0, 0, 0]
    assert sorted(names.tolist()) == list(range(hotels * (views + queries)))


@pytest.mark.parametrize("baseline", [False, True])
def test_accuracy_counts_the_queries_whose_own_view_scores_highest(baseline, monkeypatch):
    model = tiny_model(baseline, embedding_norm=False)  # the embeddings below are the compared ones
    context_frames, context_poses, _, query_poses, origin, grid = hotel_batch(grid=1, hotels=3, views=2)
    context_frames, query_frames = constant_views(3, 2, 1, size=TINY_SIZE)
    names = lambda images: images[:, 0, 0, 0]  # noqa: E731
    # Candidates embed as their value on one axis; queries 0 and 2 land on their own view, query 1 on
    # context view 0 of its hotel (candidate 3 + 2 = 5: queries first, then hotel 0's two contexts).
    embed = lambda values: torch.nn.functional.pad(values[:, None], (0, COMPARISON - 1))  # noqa: E731
    monkeypatch.setattr(model, "embed_candidates", lambda images: embed(names(images)))
    aimed = torch.stack([names(query_frames[0]), names(context_frames[1, :1]), names(query_frames[2])]).flatten()
    monkeypatch.setattr(model, "embed_queries", lambda *args: embed(aimed))
    out = model(context_frames, context_poses, query_frames, query_poses, origin, grid)
    assert out.candidates == 3 * (2 + 1)
    assert out.accuracy.tolist() == [1.0, 0.0, 1.0]
    assert out.picked.tolist() == [0, 5, 2]
    assert out.scores.shape == (3, out.candidates)


@pytest.mark.parametrize("baseline", [False, True])
@pytest.mark.parametrize("grid", [1, 2])
def test_both_composers_classify_every_query(baseline, grid):
    model = tiny_model(baseline)
    batch = hotel_batch(grid)
    hotels, mazes, views = 2, grid * grid, 2 * grid * grid
    out = model(*batch)
    queries = hotels * mazes
    assert out.candidates == hotels * (mazes + views)
    assert out.loss.shape == out.accuracy.shape == out.picked.shape == (queries,)
    assert out.scores.shape == (queries, out.candidates)
    assert torch.isfinite(out.loss).all() and (out.loss >= 0).all()
    assert set(out.accuracy.tolist()) <= {0.0, 1.0}
    assert torch.equal(out.accuracy, (out.scores.argmax(1) == torch.arange(queries)).float())


@pytest.mark.parametrize("baseline", [False, True])
def test_a_fixed_pool_per_query_scores_as_the_batch_pool_does(baseline):
    model = tiny_model(baseline).eval()
    context_frames, context_poses, query_frames, query_poses, origin, grid = hotel_batch(grid=2, hotels=1)
    with torch.no_grad():
        out = model(context_frames, context_poses, query_frames, query_poses, origin, grid)
        pool, _ = candidates(context_frames, query_frames)
        per_query = pool[None].expand(out.scores.shape[0], *pool.shape)
        scores = model.score_pool(context_frames, context_poses, query_poses, origin, grid, per_query)
    assert torch.allclose(scores, out.scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("baseline", [False, True])
def test_gradients_reach_the_composer_the_encoder_and_the_scale(baseline):
    model = tiny_model(baseline)
    model(*hotel_batch(grid=2, hotels=1)).loss.mean().backward()
    reached = ["composer.embedder.conv1.weight", "post_embedding_processor.fc0.weight",
               "candidates_encoder.conv1.weight", "candidates_encoder.conv8.weight", "scalar"]
    if not baseline:
        reached += ["composer.edge_module.fc0.weight", "composer.node_module.fc0.weight"]
    parameters = dict(model.named_parameters())
    for name in reached:
        grad = parameters[name].grad
        assert grad is not None and grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_invalid_image_size_is_refused():
    with pytest.raises(ValueError, match="img_size"):
        EmbedClassifierConfig(img_size=48)


def test_the_model_does_not_depend_on_the_training_utilities():
    source = (Path(__file__).resolve().parents[1] / "models" / "embed_classify.py").read_text()
    assert "from utils" not in source and "import utils" not in source


def test_standardised_candidates_keep_apart_however_small_the_encoder_s_output():
    """The collapse of the original (every candidate embedding pulled to one point) cannot happen: every channel
    standardised over its pool, candidates lie 2 K / (K - 1) apart on average (squared; times the share of
    channels that vary) whatever the encoder's scale, while the original's distances shrink with it. A pool per
    query is standardised on its own."""
    images = torch.rand(36, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(0))
    queries = torch.zeros(2, COMPARISON)
    for embedding_norm in (True, False):
        torch.manual_seed(0)
        model = EmbedClassifier(EmbedClassifierConfig(img_size=TINY_SIZE, embedding_norm=embedding_norm))
        spread = []
        for shrink in (1.0, 1e-3):
            with torch.no_grad():
                model.candidates_encoder.conv8.weight.mul_(shrink)
                model.candidates_encoder.conv8.bias.mul_(shrink)
                embedded = model.embed_candidates(images)
                shared = model.compare(queries, embedded)  # (2, 36)
                per_query = model.compare(queries, embedded.view(2, 18, -1))  # a pool of 18 each
            varying = (embedded.var(0) > 0).float().mean().item()
            # A query at the pool's centre scores each candidate -|c|^2: the mean over pairs of distances is
            # twice the mean squared norm, times K / (K - 1).
            spread.append(2 * 36 / 35 * -shared[0].mean().item())
            if embedding_norm:
                assert 0.5 < varying < 1  # the final ReLU leaves some channels 0 for every view
                # (less a little for channels that vary by less than RELATIVE_EPS of the mean, shrunk to ~0)
                assert spread[-1] == pytest.approx(2 * 36 / 35 * varying, rel=2e-2)
                halves = [(half.var(0) > 0).float().mean().item() for half in embedded.view(2, 18, -1)]
                assert per_query.mean(dim=1).tolist() == pytest.approx([-v for v in halves], rel=2e-2)
        if embedding_norm:
            assert spread[0] == pytest.approx(spread[1], rel=1e-4)
        else:
            assert spread[0] < 1 and spread[1] < 1e-5 * spread[0]


def test_embedding_norm_adds_no_tensor_to_the_original_s():
    original = EmbedClassifier(EmbedClassifierConfig(img_size=64, embedding_norm=False)).state_dict()
    standardised = EmbedClassifier(EmbedClassifierConfig(img_size=64)).state_dict()
    assert {name: t.shape for name, t in original.items()} == {name: t.shape for name, t in standardised.items()}
