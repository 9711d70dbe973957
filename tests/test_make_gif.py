"""make_gif.py: the tour's frames, its map (tiles, nodes, active nodes, camera) and its errors."""
import io
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import make_gif
from utils.evaluation import tour as tours
from models.scene import SceneModel
from models.structure import GridStructure
from tests.conftest import REPO_ROOT, SHARED_MAZES, requires_shared
from tests.test_evaluate import tiny_checkpoint
from utils.data.episodes import Episode
from utils.data.hotel import MAX_SEED

MAZES = SHARED_MAZES / "train"
SAMPLES = REPO_ROOT / "data_samples" / "test"
ORIGIN = torch.tensor(tours.ORIGIN)


def solid_tiles(count, seed=0):
    g = np.random.default_rng(seed)
    colours = [tuple(int(c) for c in g.integers(40, 200, 3)) for _ in range(count)]
    return colours, [Image.new("RGB", (112, 112), c) for c in colours]


def red_centroid(frame: Image.Image, canvas: tours.MapCanvas, box) -> np.ndarray:
    """Centroid (column, row) of the red-dominated map pixels the query overlay added."""
    size = canvas.base.size[0]
    drawn = np.asarray(frame.crop((box[0], box[1], box[0] + size, box[1] + size))).astype(int)
    base = np.asarray(canvas.base).astype(int)
    red = (np.abs(drawn - base).sum(-1) > 0) & (drawn[..., 0] > drawn[..., 1] + 40) & (drawn[..., 0] > drawn[..., 2] + 40)
    assert red.any(), "no active node drawn"
    rows, cols = np.nonzero(red)
    return np.array([cols.mean(), rows.mean()])


# ---- pieces ----------------------------------------------------------------------------------------
def test_map_names_and_snake_order():
    assert tours.map_path("data/maze-0003.pt").name == "maze-0003.map.png"
    assert tours.map_path("data/maze-0003.pt.gz").name == "maze-0003.map.png"
    assert tours.snake_order(3) == [0, 1, 2, 5, 4, 3, 6, 7, 8]


def test_map_tiles_sit_in_their_maze_cells_north_up():
    colours, tiles = solid_tiles(4)
    canvas = tours.MapCanvas(200, 2, ORIGIN, tiles, raw=False, structure=None)
    # Maze m = j * 2 + i covers world [-1 + 2i, 1 + 2i] x [-1 + 2j, 1 + 2j]; maze 2 (i=0, j=1) is north-west.
    for m, (column, row) in enumerate([(30, 170), (170, 170), (30, 30), (170, 30)]):
        assert canvas.base.getpixel((column, row)) == colours[m]
    assert torch.allclose(canvas.to_pixels(torch.tensor([-1.0, 3.0])), torch.tensor([0.0, 0.0]))


def test_approximate_map_colours_visited_squares_by_their_floor():
    def jpeg(colour):
        buffer = io.BytesIO()
        Image.new("RGB", (84, 84), colour).save(buffer, "JPEG", quality=95)
        return buffer.getvalue()

    cameras = np.array([[-0.35, -0.35, 0, 0, 0], [0.25, 0.25, 0, 1, 0]], dtype=np.float32)  # SW and NE squares
    image = tours.approximate_map(Episode([jpeg((200, 40, 40)), jpeg((40, 40, 200))], cameras), px=112)
    south_west, north_east = image.getpixel((8, 104)), image.getpixel((104, 8))
    assert np.abs(np.subtract(south_west, (200, 40, 40))).max() < 8
    assert np.abs(np.subtract(north_east, (40, 40, 200))).max() < 8
    assert image.getpixel((56, 56)) != south_west  # a square no camera stood in: wall colour


@pytest.mark.parametrize("yaw", [0.0, math.pi / 2, 2.5, -2.0])
def test_the_camera_triangle_points_along_its_yaw(yaw):
    _, tiles = solid_tiles(1)
    canvas = tours.MapCanvas(200, 1, ORIGIN, tiles, raw=False, structure=GridStructure(1))
    xy = torch.tensor([0.1, -0.2])
    image = np.asarray(canvas.draw(xy, yaw)).astype(int)
    changed = np.abs(image - np.asarray(canvas.base).astype(int)).sum(-1) > 0
    camera = changed & (image.max(-1) < 40)  # the black body; its white rim and red nodes excluded
    rows, cols = np.nonzero(camera)
    x, y = canvas.to_pixels(xy).tolist()
    offsets = np.stack([cols - x, y - rows], axis=1)  # map north is up
    direction = offsets[np.linalg.norm(offsets, axis=1).argmax()]  # the tip: farthest from the camera
    assert np.dot(direction / np.linalg.norm(direction), [math.cos(yaw), math.sin(yaw)]) > 0.95


def test_the_red_nodes_are_the_bilinear_read_nodes():
    _, tiles = solid_tiles(4)
    structure = GridStructure(2)
    canvas = tours.MapCanvas(300, 2, ORIGIN, tiles, raw=False, structure=structure)
    xy = torch.tensor([1.3, 0.6])  # between nodes, so 4 are read
    weights = canvas.active_nodes(xy)
    assert int((weights > 0).sum()) == 4 and weights.sum().item() == pytest.approx(1.0)
    frame = canvas.draw(xy, 0.0)
    centroid = red_centroid(frame, canvas, (0, 0))
    active = canvas.nodes[weights > 0].numpy()
    low, high = active.min(0) - canvas.node_radius - 2, active.max(0) + canvas.node_radius + 2
    assert (low <= centroid).all() and (centroid <= high).all()
    for node in weights.nonzero().flatten().tolist():  # red over a white node with opacity = weight
        red, green, blue = frame.getpixel(tuple(canvas.nodes[node].round().long().tolist()))
        assert red == 255 and abs(green - 255 * (1 - weights[node].item())) <= 2 and green == blue


# ---- the whole tour --------------------------------------------------------------------------------
@requires_shared
def test_tour_gif_frames_size_and_active_nodes_follow_the_query(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "gen.pt", baseline=False)
    out = tmp_path / "gifs" / "tour.gif"
    args = make_gif.parse_args(["--saved_model", str(checkpoint), "--data_dir", str(MAZES), "--grid", "2",
                                "--frames_per_turn", "3", "--out", str(out), "--seed", "1"])
    tour = make_gif.main(args)
    width, height, box = tours.frame_layout(128, 2 * 128 + tours.LABEL)
    assert len(tour.frames) == 2 * 2 * 3 and all(frame.size == (width, height) for frame in tour.frames)
    assert tour.mazes == [0, 0, 0, 1, 1, 1, 3, 3, 3, 2, 2, 2]
    assert tour.has_truth[0], "each turn starts at the yaw of a real view from there"
    with Image.open(out) as gif:
        assert gif.n_frames == 12 and gif.size == (width, height) and gif.info.get("loop") == 0

    canvas, centroids = tour.canvas, []
    for f in (0, 3, 6, 9):  # one frame in each maze
        centroid = red_centroid(tour.frames[f], canvas, box)
        weights = canvas.active_nodes(tour.world_xy[f])
        active = canvas.nodes[weights > 0].numpy()
        margin = canvas.node_radius + 2
        assert (active.min(0) - margin <= centroid).all() and (centroid <= active.max(0) + margin).all()
        centroids.append(centroid)
    # Four mazes, four places on the map: the red nodes moved with the query (a maze is 135 px wide).
    distances = [np.linalg.norm(a - b) for i, a in enumerate(centroids) for b in centroids[i + 1:]]
    assert min(distances) > 30
    # Turning in place reads the same nodes.
    assert np.allclose(red_centroid(tour.frames[1], canvas, box), centroids[0])


@requires_shared
def test_a_baseline_tour_has_no_nodes(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "gqn.pt", baseline=True)
    data = tmp_path / "episodes"
    data.mkdir()
    for i in range(2):
        shutil.copy(MAZES / f"{i}.pt", data / f"{i}.pt")
    args = make_gif.parse_args(["--saved_model", str(checkpoint), "--data_dir", str(data), "--grid", "1",
                                "--frames_per_turn", "2", "--out", str(tmp_path / "base.gif")])
    tour = make_gif.main(args)
    assert tour.canvas.nodes is None and len(tour.frames) == 2 and tour.label == "GQN (gqn.pt)"


def test_one_line_errors(tmp_path, capsys):
    checkpoint = tiny_checkpoint(tmp_path / "gen.pt", baseline=False)
    data = str(SAMPLES)  # in every clone: the errors below must not depend on ../shared

    def run(*argv):
        code = make_gif.cli(list(argv) + ["--out", str(tmp_path / "x.gif")])
        return code, capsys.readouterr().err.strip()

    code, err = run("--saved_model", str(tmp_path / "none.pt"), "--data_dir", data)
    assert code == 2 and "none.pt does not exist" in err and "\n" not in err
    code, err = run("--saved_model", str(checkpoint), "--data_dir", data, "--grid", "6")
    assert code == 2 and "grid 6x6 is too big for the world" in err and "\n" not in err
    code, err = run("--saved_model", str(checkpoint), "--data_dir", str(tmp_path / "nothing"))
    assert code == 2 and "nothing" in err and "\n" not in err
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        code, err = run("--saved_model", str(checkpoint), "--data_dir", data, "--mp4")
        assert code == 2 and "imageio-ffmpeg" in err and "\n" not in err


def test_a_failed_write_keeps_the_previous_gif(tmp_path, capsys, monkeypatch):
    checkpoint = tiny_checkpoint(tmp_path / "gen.pt", baseline=False)
    out = tmp_path / "gifs" / "tour.gif"
    out.parent.mkdir()
    out.write_bytes(b"GIF89a the tour a user saved")

    def full_disk(image, fp, *args, **kwargs):  # half a GIF written, then the disk is full
        with open(fp, "wb") as file:
            file.write(b"GIF89a half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    code = make_gif.cli(["--saved_model", str(checkpoint), "--data_dir", str(SAMPLES), "--grid", "1",
                         "--frames_per_turn", "1", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "No space left on device" in err and "\n" not in err
    assert out.read_bytes() == b"GIF89a the tour a user saved"
    assert [p.name for p in out.parent.iterdir()] == ["tour.gif"]  # no temporary file left


def test_a_bad_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    def no_work(args):
        raise AssertionError("rendered frames for an --out that cannot be written")

    monkeypatch.setattr(make_gif, "make_tour", no_work)
    (tmp_path / "made.gif").mkdir()
    for out, message in [(tmp_path / "tour", "must be a .gif file"), (tmp_path / "tour.png", "must be a .gif file"),
                         (tmp_path, "must be a .gif file"), (tmp_path / "made.gif", "is a directory")]:
        with pytest.raises(SystemExit) as exit:
            make_gif.cli(["--saved_model", "none.pt", "--data_dir", str(SAMPLES), "--out", str(out)])
        assert exit.value.code == 2 and message in capsys.readouterr().err.strip().splitlines()[-1]


def test_context_views_default_to_the_checkpoints(tmp_path, monkeypatch):
    checkpoint = tiny_checkpoint(tmp_path / "gen.pt", baseline=False, context_views=3)
    views = []
    represent = SceneModel.represent

    def spy(model, context_frames, *args):
        views.append(context_frames.shape[1])
        return represent(model, context_frames, *args)

    monkeypatch.setattr(SceneModel, "represent", spy)
    argv = ["--saved_model", str(checkpoint), "--data_dir", str(SAMPLES), "--grid", "1", "--frames_per_turn", "1",
            "--out", str(tmp_path / "tour.gif")]
    make_gif.main(make_gif.parse_args(argv))
    make_gif.main(make_gif.parse_args(argv + ["--context_views", "5"]))  # an explicit flag wins
    assert views == [3, 5]  # one maze: its views only


def test_an_out_path_under_a_file_is_refused_before_rendering(tmp_path, capsys):
    (tmp_path / "notes").write_text("mine")
    with pytest.raises(SystemExit) as exit:
        make_gif.parse_args(["--saved_model", "none.pt", "--data_dir", str(SAMPLES),
                             "--out", str(tmp_path / "notes" / "tour.gif")])
    assert exit.value.code == 2 and f"{tmp_path / 'notes'} is a file, not a directory" in capsys.readouterr().err


def test_numbers_are_checked_when_parsed(capsys):
    base = ["--saved_model", "none.pt", "--data_dir", str(SAMPLES)]
    assert make_gif.parse_args(base + ["--seed", str(MAX_SEED)]).seed == MAX_SEED
    assert make_gif.parse_args(base + ["--scale", "0"]).scale == 0
    for flag, value in [("--seed", str(MAX_SEED + 1)), ("--seed", "99999999999999999999"), ("--seed", "-1"),
                        ("--frames_per_turn", "0"), ("--grid", "0"), ("--scale", "-1"), ("--context_views", "x")]:
        with pytest.raises(SystemExit) as exit:
            make_gif.parse_args(base + [flag, value])
        assert exit.value.code == 2 and f"argument {flag}" in capsys.readouterr().err
