"""evaluate_retrieval.py and utils/evaluation/retrieval.py: fixed-size candidate pools per query, accuracy and its interval,
the CLI's CSV and its refusals. Tiny: 16 px, 2 context views, a handful of queries, untrained models."""
import csv

import pytest
import torch

import evaluate_retrieval
from models.embed_classify import EmbedClassifier, EmbedClassifierConfig
from tests.conftest import REPO_ROOT
from tests.train_support import assert_one_line_error, one_thread, scratch  # noqa: F401
from utils.evaluation import retrieval
from utils.checkpoint import EMBED_CLASSIFY, RENDER, save_checkpoint
from utils.data.episodes import to_unit

TEST = REPO_ROOT / "data_samples" / "test"
VIEWS = 2  # context views per maze


def retriever(baseline=False, views=VIEWS, embedding_norm=True):
    torch.manual_seed(0)
    model = EmbedClassifier(EmbedClassifierConfig(img_size=16, baseline=baseline, embedding_norm=embedding_norm)).eval()
    return retrieval.Retriever("GQN" if baseline else "GEN", model, 16, views, False, 5)


def grid_chunks(load, grid, queries, who, seed=0, pool_mazes=retrieval.POOL_MAZES, batch_queries=4):
    plans, pools = retrieval.grid_plans(seed, grid, queries, len(load), pool_mazes)
    return plans, pools, list(retrieval.chunks(load, seed, grid, plans, pools, who, batch_queries))


@pytest.fixture(scope="module")
def load():
    return retrieval.EpisodeCache(TEST)


def test_pool_holds_the_query_view_once_at_its_index_and_has_one_size(load):
    who = retriever()
    size = retrieval.POOL_MAZES * (VIEWS + 1)
    for grid in (1, 2, 3):
        plans, pools, chunks = grid_chunks(load, grid, 9, who)
        answers = []
        for chunk in chunks:
            assert chunk.pools.shape[1:] == (size, 3, 16, 16)
            queries = chunk.batch.query_frames.flatten(0, 1)
            for i, pool in enumerate(chunk.pools):
                same = (pool == queries[i]).flatten(1).all(1)
                assert same.sum() == 1 and bool(same[chunk.answers[i]]), (grid, i)
            answers.append(chunk.answers)
        # Distractors: distinct, never the query's own maze.
        for plan, pool in zip(plans, pools):
            own = plan.episodes[0][:, None]
            assert not (pool.distractors == own).any()
            assert all(len(set(row.tolist())) == len(row) for row in pool.distractors)
        assert len(torch.cat(answers).unique()) > 1  # the true view is not always at one position


def test_inputs_do_not_depend_on_the_model_or_the_batching(load):
    _, _, a = grid_chunks(load, 2, 8, retriever(), batch_queries=4)
    _, _, b = grid_chunks(load, 2, 8, retriever(baseline=True), batch_queries=100)
    assert torch.equal(torch.cat([c.pools for c in a]), torch.cat([c.pools for c in b]))
    assert torch.equal(torch.cat([c.answers for c in a]), torch.cat([c.answers for c in b]))


def test_accuracy_on_known_answers(load, monkeypatch, one_thread):  # noqa: F811
    """Query embeddings patched to equal their own view's (accuracy 1), or a wrong candidate's (accuracy 0), or
    every second one right (accuracy 1/2)."""
    who = retriever(embedding_norm=False)  # the patched embeddings are the compared ones
    _, _, chunks = grid_chunks(load, 2, 8, who)
    encode = lambda images: images.flatten(1)  # noqa: E731 - an image is its own embedding
    monkeypatch.setattr(who.model, "embed_candidates", encode)
    for mode, expected in (("right", 1.0), ("wrong", 0.0), ("half", 0.5)):
        def embed_queries(context_frames, context_poses, query_poses, origin, grid, _chunk=None):
            chunk = current[0]
            picks = chunk.answers.clone()
            wrong = (picks + 1) % chunk.pools.shape[1]
            if mode == "wrong":
                picks = wrong
            elif mode == "half":
                picks[1::2] = wrong[1::2]
            own_maze.append(chunk.own_maze[torch.arange(len(picks)), picks])
            return encode(to_unit(chunk.pools[torch.arange(len(picks)), picks]))

        current, own_maze = [None], []
        monkeypatch.setattr(who.model, "embed_queries", embed_queries)
        seen = []

        def spy(correct, clusters=None):  # records the clusters the interval resamples
            seen.append(clusters.tolist())
            return 0.0, 1.0

        monkeypatch.setattr(retrieval, "bootstrap_interval", spy)

        def batches():
            for chunk in chunks:
                current[0] = chunk
                yield chunk

        row = retrieval.evaluate_model(who, batches(), 8, "cpu")
        assert row["accuracy"] == expected, mode
        assert row["candidates"] == retrieval.POOL_MAZES * (VIEWS + 1) and row["queries"] == 8
        assert row["chance"] == pytest.approx(1 / row["candidates"])
        # The interval resamples the two hotels, not the 8 queries: a hotel's queries share its memory.
        assert seen == [[0, 0, 0, 0, 1, 1, 1, 1]] * 2, seen  # accuracy, then maze accuracy
        # Maze accuracy: the pick is one of the 1 + VIEWS views of the query's own maze (the true view among them).
        assert row["maze_accuracy"] == torch.cat(own_maze).double().mean().item(), mode
        assert row["maze_chance"] == 1 / retrieval.POOL_MAZES
        if mode == "right":
            assert row["maze_accuracy"] == 1.0


def test_bootstrap_interval_contains_the_accuracy():
    correct = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 1, 1], dtype=torch.float64)
    row = retrieval.accuracy_row(correct, 12)
    assert row["accuracy"] == pytest.approx(8 / 12)
    assert row["accuracy_lo"] <= row["accuracy"] <= row["accuracy_hi"]
    assert 0 <= row["accuracy_lo"] < row["accuracy_hi"] <= 1


def write_checkpoint(path, baseline=False, task=EMBED_CLASSIFY, **flags):
    torch.manual_seed(0)
    model = EmbedClassifier(EmbedClassifierConfig(img_size=16, baseline=baseline))
    args = {"img_size": 16, "baseline": baseline, "memory_norm": True, "embedding_norm": True, "context_views": VIEWS,
            "raw_poses": False, **flags}
    save_checkpoint({"epoch": 2, "task": task, "model_state_dict": model.state_dict(), "args": args}, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    return (write_checkpoint(root / "gen.pt"), write_checkpoint(root / "gqn.pt", baseline=True))


def test_a_checkpoint_keeps_the_comparison_it_was_trained_with(tmp_path):
    assert retrieval.load_retriever(write_checkpoint(tmp_path / "new.pt")).model.config.embedding_norm
    older = write_checkpoint(tmp_path / "older.pt")  # as saved before --embedding_norm: without the flag
    checkpoint = torch.load(older, weights_only=True)
    del checkpoint["args"]["embedding_norm"]
    torch.save(checkpoint, older)
    assert not retrieval.load_retriever(older).model.config.embedding_norm, "it compares raw embeddings, as it was trained to"


def test_cli_writes_the_csv_with_its_columns(checkpoints, tmp_path, one_thread):  # noqa: F811
    out = tmp_path / "out"
    argv = ["--test_data_dir", str(TEST), "--grids", "1", "2", "--queries", "4", "--out", str(out), "--device", "cpu"]
    for path in checkpoints:
        argv += ["--saved_model", str(path)]
    assert evaluate_retrieval.cli(argv) == 0
    with open(out / "retrieval.csv") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    assert tuple(reader.fieldnames) == retrieval.COLUMNS
    assert [(row["model"][:3], row["grid"]) for row in rows] == [("GEN", "1"), ("GQN", "1"), ("GEN", "2"), ("GQN", "2")]
    for row in rows:
        assert row["queries"] == "4" and row["candidates"] == str(retrieval.POOL_MAZES * (VIEWS + 1))
        assert float(row["accuracy_lo"]) <= float(row["accuracy"]) <= float(row["accuracy_hi"])
    assert (out / "retrieval.md").read_text().startswith("# Retrieval accuracy")
    assert (out / "retrieval.png").stat().st_size > 0


@pytest.mark.parametrize("case", ["renderer", "renderer_untagged", "missing", "few_episodes"])
def test_cli_refuses_bad_input_in_one_line(case, checkpoints, tmp_path, capsys):
    data, model = TEST, checkpoints[0]
    if case == "renderer":
        model = tmp_path / "render.pt"
        save_checkpoint({"epoch": 1, "task": RENDER, "model_state_dict": {"w": torch.zeros(1)}, "args": {}}, model)
    elif case == "renderer_untagged":  # an original-format renderer: told by its weights
        model = tmp_path / "render.pt"
        save_checkpoint({"epoch": 1, "model_state_dict": {"generation_core.w": torch.zeros(1)}}, model)
    elif case == "missing":
        model = tmp_path / "nothing.pt"
    else:
        data = tmp_path / "few"
        data.mkdir()
        for source in sorted(TEST.glob("*.pt"))[:3]:
            (data / source.name).symlink_to(source)
    argv = ["--saved_model", str(model), "--test_data_dir", str(data), "--grids", "1", "--queries", "2",
            "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert evaluate_retrieval.cli(argv) == 2
    line = assert_one_line_error(capsys.readouterr().err, "evaluate_retrieval.py: error:")
    if case.startswith("renderer"):
        assert "renderer" in line
    assert not (tmp_path / "out" / "retrieval.csv").exists()


def test_no_entry_script_imports_another():
    from bench import import_graph

    assert import_graph.main([]) == 0


def test_parse_defaults():
    args = evaluate_retrieval.parse_args(["--saved_model", "x", "--test_data_dir", "d", "--out", "o"])
    assert args.queries >= 400 and args.pool_mazes == retrieval.POOL_MAZES and args.grids == [1, 2, 3, 4, 5]
    assert args.seed == 0 and args.batch_queries == retrieval.BATCH_QUERIES


def test_own_maze_marks_the_query_s_view_and_its_context_views(load):
    who = retriever()
    for grid in (1, 2):
        for chunk in grid_chunks(load, grid, 4, who)[2]:
            assert chunk.own_maze.shape == chunk.pools.shape[:2]
            assert (chunk.own_maze.sum(1) == VIEWS + 1).all()
            assert chunk.own_maze[torch.arange(len(chunk.answers)), chunk.answers].all()
            context = chunk.batch.context_frames.unflatten(1, (grid * grid, VIEWS)).flatten(0, 1)  # (N M, V, ...)
            for i, pool in enumerate(chunk.pools):
                views = (pool[:, None] == context[i][None]).flatten(2).all(2).any(1)  # a context view of its maze
                assert torch.equal(chunk.own_maze[i] & ~views, torch.nn.functional.one_hot(chunk.answers[i], len(pool)).bool())


def test_sources_name_each_pool_position_s_view(load):
    who = retriever()
    for grid in (1, 2):
        for chunk in grid_chunks(load, grid, 4, who)[2]:
            queries = chunk.batch.query_frames.flatten(0, 1)
            context = chunk.batch.context_frames.unflatten(1, (grid * grid, VIEWS)).flatten(0, 1)  # (N M, V, ...)
            for i, pool in enumerate(chunk.pools):
                assert torch.equal(chunk.sources[i].sort().values, torch.arange(len(pool)))
                assert int((chunk.sources[i] == 0).nonzero()) == chunk.answers[i]
                assert torch.equal(pool[chunk.sources[i] == 0][0], queries[i])
                for view in range(VIEWS):
                    assert torch.equal(pool[chunk.sources[i] == view + 1][0], context[i, view])


def test_pose_ranks_order_the_picked_context_view_by_distance_to_the_query(load):
    from bench.retrieval_picks import pose_ranks
    from utils.evaluation.scenes import pose_distance

    chunk = grid_chunks(load, 1, 2, retriever())[2][0]  # 1x1 hotels: one maze each
    distance = pose_distance(chunk.batch.query_poses.flatten(0, 1)[:, None], chunk.batch.context_poses)
    position = lambda i, source: int((chunk.sources[i] == source).nonzero())  # noqa: E731
    for i in range(len(chunk.answers)):
        nearest, farthest = distance[i].argmin().item() + 1, distance[i].argmax().item() + 1
        picked = torch.tensor([position(j, nearest if j == i else 0) for j in range(len(chunk.answers))])
        assert pose_ranks(chunk, picked)[i] == 0
        picked[i] = position(i, farthest)
        assert pose_ranks(chunk, picked)[i] == VIEWS - 1
        picked[i] = position(i, VIEWS + 1)  # a distractor maze's view
        assert pose_ranks(chunk, picked)[i] == -1
        picked[i] = chunk.answers[i]  # its own view
        assert pose_ranks(chunk, picked)[i] == -1
