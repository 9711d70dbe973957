"""evaluate.py: image metrics, reference answers, identical inputs across models, reports, errors."""
import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate
from utils.evaluation import metrics
from utils.evaluation import report
from utils.evaluation import scenes
from utils.evaluation import trained_model
from models.scene import ModelConfig, SceneModel
from utils.checkpoint import FORMAT, save_checkpoint
from tests.conftest import REPO_ROOT, SHARED_MAZES, requires_shared
from utils.data.hotel import HotelBatch, build_hotels, maze_cells

REPO = Path(__file__).resolve().parents[1]
MAZES = SHARED_MAZES / "train"
SAMPLES = REPO_ROOT / "data_samples" / "test"


def tiny_checkpoint(path: Path, baseline: bool, seed: int = 0, context_views: int = 8) -> Path:
    torch.manual_seed(seed)
    model = SceneModel(ModelConfig(img_size=16, layers=2, baseline=baseline))
    save_checkpoint({"epoch": 0, "format": FORMAT, "model_state_dict": model.state_dict(),
                     "args": {"img_size": 16, "layers": 2, "baseline": baseline, "memory_norm": True, "raw_poses": False,
                              "context_views": context_views, "seed": 0}}, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    return tiny_checkpoint(folder / "gen.pt", False), tiny_checkpoint(folder / "gqn.pt", True)


# ---- metrics ---------------------------------------------------------------------------------------
def test_ssim_is_one_for_identical_images_and_matches_the_closed_form_for_flat_images():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 16, 16)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(3))
    y = torch.rand(3, 3, 16, 16)
    assert torch.allclose(metrics.ssim(x, y), metrics.ssim(y, x))
    assert (metrics.ssim(x, y) < 0.5).all()
    # Flat images: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 0.2, 0.7
    flat = metrics.ssim(torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b))
    expected = (2 * a * b + metrics.SSIM_C1) / (a * a + b * b + metrics.SSIM_C1)
    assert flat.item() == pytest.approx(expected, rel=1e-5)
    window = metrics.gaussian_window()
    assert window.shape == (11, 11) and window.sum().item() == pytest.approx(1.0)


def test_model_labels_name_the_run_of_a_training_checkpoint():
    assert trained_model.run_name("logs/GEN-long/models/checkpoint-final.pt") == "GEN-long/checkpoint-final.pt"
    assert trained_model.run_name("ckpts/gen.pt") == "gen.pt"


def test_psnr_of_an_mse():
    assert metrics.psnr(0.01) == pytest.approx(20.0)
    assert metrics.psnr(0.0) == math.inf


def synthetic_batch(grid=2, views=4, size=16, seed=0) -> HotelBatch:
    g = torch.Generator().manual_seed(seed)
    mazes = grid * grid
    origin = torch.tensor([[-1.0, -1.0]])
    centres = origin + 2 * maze_cells(grid) + 1  # (M, 2)
    xy = centres[:, None] + torch.rand(mazes, views, 2, generator=g) - 0.5  # (M, C, 2)
    yaw = torch.rand(mazes, views, generator=g) * 2 * math.pi - math.pi
    poses = torch.cat([xy, torch.zeros(mazes, views, 1), yaw.cos()[..., None], yaw.sin()[..., None],
                       torch.ones(mazes, views, 1), torch.zeros(mazes, views, 1)], -1)
    frames = torch.randint(256, (mazes, views, 3, size, size), generator=g, dtype=torch.uint8)
    return HotelBatch(frames.flatten(0, 1)[None], poses.flatten(0, 1)[None],
                      torch.zeros(1, mazes, 3, size, size, dtype=torch.uint8), torch.zeros(1, mazes, 7), origin, grid, ())


def test_nearest_view_is_exact_when_the_query_pose_is_a_context_pose():
    batch = synthetic_batch()
    frames, poses = scenes.maze_contexts(batch)  # (1, M, C, ...)
    chosen = torch.tensor([2, 0, 3, 1])  # a different context view of each maze
    mazes = torch.arange(4)
    pixels = batch.context_frames.unflatten(1, (4, -1))  # uint8, as the loader delivers them
    batch = batch._replace(query_frames=pixels[0, mazes, chosen][None], query_poses=poses[0, mazes, chosen][None])
    answer = scenes.nearest_view(batch)
    assert torch.equal(answer, frames[0, mazes, chosen])
    row = metrics.finish(metrics.image_row(answer, frames[0, mazes, chosen]), 4)
    assert row["mse"] == 0 and row["psnr"] == math.inf and row["ssim"] == pytest.approx(1.0)
    # The mean image is the mean of the query's own maze's context views.
    assert torch.allclose(scenes.mean_view(batch), frames[0].mean(1))


def test_pose_distance_weighs_position_and_wrapped_yaw():
    def pose(x, y, yaw):
        return torch.tensor([x, y, 0.0, math.cos(yaw), math.sin(yaw), 1.0, 0.0])

    assert scenes.pose_distance(pose(0, 0, 3.1), pose(0, 0, -3.1)).item() == pytest.approx(
        scenes.YAW_WEIGHT * (2 * math.pi - 6.2), abs=1e-5)
    assert scenes.pose_distance(pose(0, 0, 0), pose(0.3, 0.4, math.pi / 2)).item() == pytest.approx(
        0.5 + scenes.YAW_WEIGHT * math.pi / 2, abs=1e-5)


def test_the_dataset_mean_leaves_out_the_querys_own_episode():
    means = torch.rand(4, 3, 2, 2, dtype=torch.float64)
    answer = scenes.dataset_mean_view(torch.tensor([2, 0, 2]), means)
    assert answer.shape == (3, 3, 2, 2) and answer.dtype == torch.float32
    assert torch.allclose(answer[0], means[[0, 1, 3]].mean(0).float())
    assert torch.allclose(answer[1], means[[1, 2, 3]].mean(0).float())
    load = scenes.EpisodeCache(SAMPLES)
    frames = load.mean_frames(16)
    assert frames.shape == (len(load), 3, 16, 16) and 0 < frames.min() and frames.max() < 1


# ---- inputs ----------------------------------------------------------------------------------------
def test_query_hotels_are_drawn_from_all_test_episodes():
    plans = scenes.evaluation_plans(seed=0, hotels=4, n_episodes=60, grid=5, context_views=8)
    hotels = [frozenset(plan.episodes[0].tolist()) for plan in plans]
    assert all(len(hotel) == 25 for hotel in hotels) and len(set(hotels)) == 4
    assert max(max(hotel) for hotel in hotels) >= 25


@pytest.mark.parametrize("grid", [1, 2, 4, 5])
def test_the_context_swap_changes_only_the_context_frames_and_no_maze_keeps_its_own(grid):
    load = scenes.EpisodeCache(SAMPLES)  # 25 episodes: enough to spare for 1x1 to 3x3 hotels, not for 4x4, 5x5
    n, mazes = len(load), grid * grid
    plans = scenes.evaluation_plans(seed=1, hotels=3, n_episodes=n, grid=grid, context_views=4)
    donors = [scenes.context_swap(plan, n, seed=i) for i, plan in enumerate(plans)]
    again = [scenes.context_swap(plan, n, seed=i) for i, plan in enumerate(plans)]
    assert all(torch.equal(d.episodes, a.episodes) for d, a in zip(donors, again)), "seeded"
    plan, donor = scenes.merged(plans), scenes.merged(donors)
    # The swap's plan: the same grid, view fractions and hotel positions, another episode for every maze.
    assert donor.grid == plan.grid and torch.equal(donor.views, plan.views) and torch.equal(donor.origin, plan.origin)
    assert (donor.episodes != plan.episodes).all()
    assert all(len(set(hotel.tolist())) == mazes for hotel in donor.episodes), "distinct donors in a hotel"
    # Donors from outside the hotel while there are episodes to spare (n >= 2 k^2), else as few inside as can be.
    inside = scenes.donors_in_hotel(plan, donor)
    assert inside.float().mean().item() == pytest.approx(max(0, 2 * mazes - n) / mazes)

    batch = build_hotels(plan, load.views(16))
    swapped = scenes.swap_contexts(batch, build_hotels(donor, load.views(16)))
    assert swapped.grid == batch.grid and torch.equal(swapped.origin, batch.origin)
    for name in ("context_poses", "query_frames", "query_poses"):
        assert torch.equal(getattr(swapped, name), getattr(batch, name)), name
    assert swapped.context_frames.shape == batch.context_frames.shape
    own = batch.context_frames.unflatten(1, (mazes, -1)).flatten(-3)  # (N, M, C, pixels)
    other = swapped.context_frames.unflatten(1, (mazes, -1)).flatten(-3)
    query = batch.query_frames.flatten(-3)  # (N, M, pixels)
    # No maze keeps any of its own views: no swapped view equals one of its context views or its query.
    assert not (own[:, :, :, None] == other[:, :, None]).all(-1).any()
    assert not (other == query[:, :, None]).all(-1).any()
    with pytest.raises(ValueError):
        scenes.swap_contexts(batch, build_hotels(scenes.with_context_views(donor, 2), load.views(16)))


@requires_shared
def test_models_with_fewer_context_views_see_the_same_queries_and_a_subset_of_the_contexts():
    load = scenes.EpisodeCache(MAZES)
    plans = scenes.evaluation_plans(seed=3, hotels=2, n_episodes=len(load), grid=2, context_views=8)
    again = scenes.evaluation_plans(seed=3, hotels=2, n_episodes=len(load), grid=2, context_views=8)
    assert scenes.plan_digest(plans) == scenes.plan_digest(again)
    assert scenes.plan_digest(plans) != scenes.plan_digest(
        scenes.evaluation_plans(seed=4, hotels=2, n_episodes=len(load), grid=2, context_views=8))
    full = build_hotels(scenes.merged(plans), load.views(16))
    fewer = build_hotels(scenes.merged([scenes.with_context_views(p, 3) for p in plans]), load.views(16))
    assert full.context_frames.shape == (2, 4 * 8, 3, 16, 16)
    assert torch.equal(full.query_frames, fewer.query_frames) and torch.equal(full.query_poses, fewer.query_poses)
    assert torch.equal(full.context_frames.unflatten(1, (4, 8))[:, :, :3], fewer.context_frames.unflatten(1, (4, 3)))


# ---- the whole run ---------------------------------------------------------------------------------
@requires_shared
def test_evaluation_is_finite_consistent_reproducible_and_writes_its_reports(checkpoints, tmp_path, capsys):
    gen, gqn = checkpoints
    args = evaluate.parse_args(["--saved_model", str(gen), "--saved_model", str(gqn), "--saved_model", str(gen),
                                "--test_data_dir", str(MAZES), "--grids", "1", "2", "--episodes", "1",
                                "--batch_size", "1", "--out", str(tmp_path / "eval"), "--device", "cpu"])
    rows = evaluate.main(args)
    labels = {row["model"] for row in rows}
    assert labels == {"GEN (gen.pt)", "GQN (gqn.pt)", "GEN (gen.pt) #2", scenes.NEAREST, scenes.MEAN,
                      scenes.DATASET_MEAN}
    assert len(rows) == 2 * 6
    for row in rows:
        assert row["queries"] == row["grid"] ** 2 and row["hotels"] == 1
        assert 0 < row["mse"] < 1 and math.isfinite(row["ssim"])
        assert row["psnr"] == pytest.approx(-10 * math.log10(row["mse"]), rel=1e-9)
        if "neg_elbo" in row:  # a model row
            assert math.isfinite(row["neg_elbo"]) and row["kl"] >= 0
            assert row["neg_elbo"] > row["kl"]
            assert row["bits_per_dim"] == pytest.approx(row["neg_elbo"] / (3 * 16 * 16 * math.log(2)))
            assert row["rec_psnr"] == pytest.approx(-10 * math.log10(row["rec_mse"]), rel=1e-9)
    for grid in (1, 2):
        at_grid = [row for row in rows if row["grid"] == grid]
        assert len({row["inputs"] for row in at_grid}) == 1, "every model must see identical inputs"
        first, repeat = (next(r for r in at_grid if r["model"] == label) for label in ("GEN (gen.pt)", "GEN (gen.pt) #2"))
        metrics = ("neg_elbo", "kl", "mse", "ssim", "rec_mse", "swap_psnr", "context_gain_db", "psnr_lo")
        assert {k: first[k] for k in metrics} == {k: repeat[k] for k in metrics}, "seeded samples must repeat"
    assert rows[0]["inputs"] != rows[-1]["inputs"]

    out = tmp_path / "eval"
    with open(out / "metrics.csv") as file:
        table = list(csv.DictReader(file))
    assert len(table) == len(rows) and tuple(table[0]) == report.COLUMNS
    assert float(table[0]["psnr"]) == pytest.approx(rows[0]["psnr"], rel=1e-6)
    markdown = (out / "metrics.md").read_text()
    assert "| grid | GEN (gen.pt) | GQN (gqn.pt) | GEN (gen.pt) #2 | nearest context view | mean image |" in markdown
    assert "sigma 0.7" in markdown
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PSNR of generated views" in capsys.readouterr().out


def evaluation(*checkpoints, out, grids=("1",)):
    argv = [a for path in checkpoints for a in ("--saved_model", str(path))]
    return evaluate.parse_args(argv + ["--test_data_dir", str(SAMPLES), "--grids", *grids, "--episodes", "2",
                                       "--batch_size", "1", "--out", str(out), "--device", "cpu"])


OLD_COLUMNS = ("model", "grid", "hotels", "queries", "img_size", "context_views", "sigma", "neg_elbo", "bits_per_dim",
               "kl", "mse", "psnr", "ssim", "rec_mse", "rec_psnr", "rec_ssim", "seconds", "steps", "train_grids",
               "inputs")


def test_queries_gives_exactly_n_queries_per_grid_with_intervals_and_context_gains(checkpoints, tmp_path, capsys):
    gen, gqn = checkpoints
    out = tmp_path / "eval"
    rows = evaluate.main(evaluate.parse_args(
        ["--saved_model", str(gen), "--saved_model", str(gqn), "--saved_model", str(gen), "--test_data_dir",
         str(SAMPLES), "--grids", "1", "2", "3", "--queries", "5", "--batch_size", "2", "--out", str(out),
         "--device", "cpu"]))
    assert len(rows) == 3 * 6
    # 5 queries from 5 1x1 hotels, 2 2x2 hotels (8 mazes) and one 3x3 hotel (9 mazes)
    assert {(row["grid"], row["hotels"]) for row in rows} == {(1, 5), (2, 2), (3, 1)}
    assert all(row["queries"] == 5 for row in rows)
    for grid in (1, 2, 3):
        at_grid = {row["model"]: row for row in rows if row["grid"] == grid}
        assert len({row["inputs"] for row in at_grid.values()}) == 1
        first, repeat = at_grid["GEN (gen.pt)"], at_grid["GEN (gen.pt) #2"]
        assert {k: v for k, v in first.items() if k not in ("model", "seconds")} == \
            {k: v for k, v in repeat.items() if k not in ("model", "seconds")}, "the same inputs and prior samples"
        for row in at_grid.values():
            assert row["psnr_lo"] <= row["psnr"] <= row["psnr_hi"]
            assert row["context_gain_lo"] <= row["context_gain_db"] <= row["context_gain_hi"]
            assert row["context_gain_db"] == pytest.approx(row["psnr"] - row["swap_psnr"])
        # No context, no gain; copying the context views needs them.
        dataset_mean = at_grid[scenes.DATASET_MEAN]
        assert dataset_mean["context_gain_db"] == dataset_mean["context_gain_lo"] == dataset_mean["context_gain_hi"] == 0
        assert at_grid[scenes.NEAREST]["context_gain_db"] != 0 and at_grid[scenes.MEAN]["context_gain_db"] != 0

    with open(out / "metrics.csv") as file:
        table = list(csv.DictReader(file))
    assert tuple(table[0])[:len(OLD_COLUMNS)] == OLD_COLUMNS, "existing columns keep their names and places"
    assert {"psnr_lo", "psnr_hi", "context_gain_db", "context_gain_lo", "context_gain_hi"} <= set(table[0])
    assert [row["queries"] for row in table] == ["5"] * len(rows)
    markdown = (out / "metrics.md").read_text()
    gain, psnr = markdown.index("## Context gain"), markdown.index("## PSNR of generated views")
    assert gain < psnr < markdown.index("## SSIM"), "the context gain leads, then PSNR"
    assert "| grid | GEN (gen.pt) | GQN (gqn.pt) | GEN (gen.pt) #2 | nearest context view | mean image | dataset mean |" \
        in markdown[gain:psnr]
    first = rows[0]  # GEN on 1x1 hotels
    shown = report.interval(first["context_gain_db"], first["context_gain_lo"], first["context_gain_hi"], signed=True)
    assert f"| 1x1 | {shown} |" in markdown[gain:psnr]


def test_a_model_that_ignores_its_context_views_gains_exactly_nothing(checkpoints, tmp_path, monkeypatch, capsys):
    load_candidate = trained_model.load_candidate

    def blind(path, device, sigma=None):
        candidate = load_candidate(path, device, sigma)
        represent = candidate.model.represent
        candidate.model.represent = lambda frames, *rest: represent(torch.zeros_like(frames), *rest)
        return candidate

    monkeypatch.setattr(scenes, "load_candidate", blind)
    rows = evaluate.main(evaluate.parse_args(["--saved_model", str(checkpoints[1]), "--test_data_dir", str(SAMPLES),
                                              "--grids", "1", "2", "--queries", "4", "--out", str(tmp_path),
                                              "--device", "cpu"]))
    for row in rows:
        if row["model"] in ("GQN (gqn.pt)", scenes.DATASET_MEAN):
            assert row["swap_psnr"] == row["psnr"]
            assert (row["context_gain_db"], row["context_gain_lo"], row["context_gain_hi"]) == (0, 0, 0)


def test_a_models_scores_do_not_depend_on_the_other_checkpoints_evaluated(checkpoints, tmp_path, capsys):
    four = tiny_checkpoint(tmp_path / "four.pt", False, seed=1, context_views=4)
    alone = evaluate.main(evaluation(four, out=tmp_path / "alone"))
    beside = evaluate.main(evaluation(four, checkpoints[0], out=tmp_path / "beside"))
    label = "GEN (four.pt)"
    row, other = (next(r for r in rows if r["model"] == label) for rows in (alone, beside))
    assert row["inputs"] == other["inputs"]
    assert {k: row[k] for k in ("neg_elbo", "mse", "rec_mse")} == {k: other[k] for k in ("neg_elbo", "mse", "rec_mse")}


def test_a_failed_write_leaves_the_previous_reports_as_they_were(checkpoints, tmp_path, monkeypatch, capsys):
    out = tmp_path / "eval"
    evaluate.main(evaluation(checkpoints[0], out=out))
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert sorted(before) == ["metrics.csv", "metrics.md", "metrics.png"]

    def disk_full(rows, path):
        path.write_bytes(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(evaluate, "plot", disk_full)
    code = evaluate.cli(["--saved_model", str(checkpoints[0]), "--test_data_dir", str(SAMPLES), "--grids", "1", "2",
                         "--episodes", "2", "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert code == 2 and err.startswith("evaluate.py: error: ") and "No space left on device" in err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # no mix of runs, no temporaries


def test_a_grid_size_given_twice_is_evaluated_once(checkpoints, tmp_path, capsys):
    rows = evaluate.main(evaluate.parse_args(["--saved_model", str(checkpoints[0]), "--test_data_dir", str(SAMPLES),
                                              "--grids", "1", "1", "--episodes", "1", "--out", str(tmp_path),
                                              "--device", "cpu"]))
    assert sorted(row["grid"] for row in rows) == [1, 1, 1, 1], "the model and the three references, once each"
    assert (tmp_path / "metrics.png").is_file()

def test_the_csv_keeps_eight_significant_digits_of_large_values():
    assert report.cell(307123.456789, 8) == "307123.46"
    assert report.cell(1.5e-7, 8) == "1.5e-07"


# ---- errors ----------------------------------------------------------------------------------------
def run_cli(capsys, *argv):
    code = evaluate.cli(list(argv) + ["--out", "unused", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    return code, err


def test_missing_or_bad_checkpoints_and_data_give_one_line_errors(checkpoints, tmp_path, capsys):
    gen, _ = checkpoints
    data = str(SAMPLES)  # in every clone: the errors below must not depend on ../shared
    code, err = run_cli(capsys, "--saved_model", str(tmp_path / "nope.pt"), "--test_data_dir", data)
    assert code == 2 and "nope.pt does not exist" in err and "\n" not in err
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    code, err = run_cli(capsys, "--saved_model", str(junk), "--test_data_dir", data)
    assert code == 2 and "junk.pt" in err and "\n" not in err
    code, err = run_cli(capsys, "--saved_model", str(gen), "--test_data_dir", str(tmp_path / "missing"))
    assert code == 2 and "missing" in err and "\n" not in err
    code, err = run_cli(capsys, "--saved_model", str(tmp_path), "--test_data_dir", data)
    assert code == 2 and f"checkpoint {tmp_path} is a directory" in err and "\n" not in err
    code, err = run_cli(capsys, "--saved_model", str(gen), "--test_data_dir", str(junk))
    assert code == 2 and f"{junk}: not a directory" in err and "\n" not in err
    code, err = run_cli(capsys, "--saved_model", str(gen), "--test_data_dir", data, "--grids", "2", "6")
    assert code == 2 and "grid 6x6 is too big for the world (5x5 mazes)" in err and "\n" not in err


def test_queries_and_episodes_exclude_each_other_and_one_episode_is_too_few(checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.parse_args(["--saved_model", str(checkpoints[0]), "--test_data_dir", str(SAMPLES), "--out", "o",
                             "--queries", "5", "--episodes", "2"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err.strip().splitlines()[-1]
    assert evaluate.parse_args(["--saved_model", "c", "--test_data_dir", "d", "--out", "o"]).queries == 400
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "maze-0000.pt").write_bytes((SAMPLES / "maze-0000.pt").read_bytes())
    code, err = run_cli(capsys, "--saved_model", str(checkpoints[0]), "--test_data_dir", str(tmp_path / "one"),
                        "--grids", "1")
    assert code == 2 and "holds 1 episode; the evaluation needs at least 2" in err and "\n" not in err


def test_too_many_mazes_for_the_episodes_in_the_directory(checkpoints, tmp_path, capsys):
    import shutil

    if not MAZES.is_dir():
        pytest.skip(f"needs the real episodes in {MAZES}")
    for name in ("0.pt", "1.pt", "2.pt"):
        shutil.copy(MAZES / name, tmp_path / name)
    code, err = run_cli(capsys, "--saved_model", str(checkpoints[0]), "--test_data_dir", str(tmp_path),
                        "--grids", "1", "2")
    assert code == 2 and "grid 2x2 needs 4 distinct episodes" in err and "holds 3" in err


@pytest.mark.parametrize("flag, value, message", [
    ("--sigma", "0", "expected float > 0"), ("--sigma", "nan", "expected float > 0"),
    ("--batch_size", "0", "expected int > 0"), ("--episodes", "-1", "expected int > 0"),
    ("--queries", "0", "expected int > 0"),
    ("--seed", "99999999999999999999", "expected int >= 0 and <= 2147483647"),
    ("--device", "foo", "expected a device such as cpu, cuda or cuda:0"),
])
def test_bad_arguments_are_refused_before_anything_is_loaded(checkpoints, flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.parse_args(["--saved_model", str(checkpoints[0]), "--test_data_dir", str(SAMPLES), "--out", "o",
                             flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and message in err[-1]


def test_an_out_path_that_is_a_file_is_refused_at_once(checkpoints, tmp_path, capsys):
    taken = tmp_path / "report"
    taken.write_text("mine")
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--saved_model", str(checkpoints[0]), "--test_data_dir", str(SAMPLES),
                             "--out", str(taken)])
    assert "is a file, not a directory" in capsys.readouterr().err and taken.read_text() == "mine"
    with pytest.raises(SystemExit):  # a file further up the path
        evaluate.parse_args(["--saved_model", str(checkpoints[0]), "--test_data_dir", str(SAMPLES),
                             "--out", str(taken / "deeper" / "eval")])
    assert f"{taken} is a file, not a directory" in capsys.readouterr().err


def test_the_script_exits_nonzero_with_one_line_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "evaluate.py", "--saved_model", str(tmp_path / "absent.pt"),
                             "--test_data_dir", str(tmp_path), "--grids", "7", "--out", str(tmp_path / "o")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "grid 7x7 is too big" in result.stderr


def test_intervals_resample_whole_hotels(checkpoints, tmp_path, monkeypatch, capsys):
    # The queries of a hotel share its memory: the bootstrap must draw hotels, not queries, whatever the
    # number of hotels evaluated per forward pass.
    seen = []
    bootstrap_interval = metrics.bootstrap_interval

    def spy(samples, statistic=None, clusters=None, **options):
        seen.append(None if clusters is None else clusters.tolist())
        return bootstrap_interval(samples, statistic, clusters, **options)

    monkeypatch.setattr(metrics, "bootstrap_interval", spy)
    evaluate.main(evaluate.parse_args(["--saved_model", str(checkpoints[0]), "--test_data_dir", str(SAMPLES),
                                       "--grids", "2", "--queries", "6", "--batch_size", "1", "--out", str(tmp_path),
                                       "--device", "cpu"]))
    assert seen and all(clusters == [0, 0, 0, 0, 1, 1] for clusters in seen), seen
