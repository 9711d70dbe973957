"""The procedural maze generator (``python -m utils.data.make_mazes``) and the committed data_samples/ it wrote."""

import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT
from utils.data import make_mazes as mm
from utils.data.episodes import list_episodes, load_episode

SEEDS = (0, 1, 7)


def _walls_near(maze, x, y, radius):
    """True where a disc of `radius` at world (x, y) overlaps a wall cell or leaves the grid."""
    if not (mm.ORIGIN + radius <= x <= mm.ORIGIN + mm.GRID * mm.CELL - radius
            and mm.ORIGIN + radius <= y <= mm.ORIGIN + mm.GRID * mm.CELL - radius):
        return True
    for iy, ix in np.argwhere(maze.wall):
        x0, y0 = mm.ORIGIN + ix * mm.CELL, mm.ORIGIN + iy * mm.CELL
        dx = max(x0 - x, 0.0, x - (x0 + mm.CELL))
        dy = max(y0 - y, 0.0, y - (y0 + mm.CELL))
        if math.hypot(dx, dy) < radius:
            return True
    return False


@pytest.fixture(scope="module")
def episodes():
    """(maze, frames, cameras) of a few full episodes, built once for the module."""
    return [mm.make_episode(mm.episode_rng(seed, "train", 0)) for seed in SEEDS]


def test_deterministic_per_seed(episodes):
    maze, frames, cameras = mm.make_episode(mm.episode_rng(SEEDS[0], "train", 0))
    assert frames == episodes[0][1]
    assert cameras.tobytes() == episodes[0][2].tobytes()
    assert np.array_equal(maze.wall, episodes[0][0].wall)
    assert frames != episodes[1][1]
    # the split is part of the seed: test mazes are not training mazes
    assert mm.make_episode(mm.episode_rng(SEEDS[0], "test", 0), n_views=4)[1] != frames[:4]


def test_cameras_follow_the_real_statistics(episodes):
    for maze, frames, cameras in episodes:
        assert cameras.shape == (mm.N_VIEWS, 5) and cameras.dtype == np.float32
        assert len(frames) == mm.N_VIEWS
        x, y, z, yaw, pitch = cameras.T
        assert np.all(z == 0) and np.all(pitch == 0)
        assert x.min() >= -0.4 and x.max() <= 0.3 and y.min() >= -0.4 and y.max() <= 0.3
        assert yaw.min() >= -math.pi and yaw.max() <= math.pi
        step = np.linalg.norm(np.diff(cameras[:, :2], axis=0), axis=1)
        assert step.max() <= 0.03
        turn = np.abs((np.diff(yaw.astype(np.float64)) + math.pi) % (2 * math.pi) - math.pi)
        assert turn.max() <= mm.TURN_STEP + 1e-5
        # the initial full turn in place, counter-clockwise, then the walk starts
        n = mm.INITIAL_TURN_STEPS
        assert np.all(step[:n] == 0) and step[n] > 0
        assert np.allclose(turn[:n], mm.TURN_STEP, atol=1e-5)
        assert n * mm.TURN_STEP >= 2 * math.pi
        # starts at a cell centre, as the real episodes do
        assert np.allclose((cameras[0, :2] - mm.ORIGIN) / mm.CELL % 1, 0.5, atol=1e-5)
        # walking: the camera mostly moves where it looks, (cos yaw, sin yaw)
        moving = step > 1e-6
        heading = np.arctan2(np.diff(y), np.diff(x))[moving]
        err = np.abs((yaw[1:][moving] - heading + math.pi) % (2 * math.pi) - math.pi)
        assert np.median(err) < 0.5
        assert 0.01 < np.median(step[moving]) <= mm.WALK_STEP * 1.05


def test_camera_never_inside_a_wall(episodes):
    for maze, _, cameras in episodes:
        for x, y in cameras[:, :2].astype(np.float64):
            assert not _walls_near(maze, x, y, mm.PLAYER_RADIUS), (x, y)


def test_maze_layout(episodes):
    for maze, _, _ in episodes:
        assert maze.wall.shape == (mm.GRID, mm.GRID)
        assert 1 <= maze.region.max() <= 2
        # all floor cells are connected
        floor = {tuple(c) for c in maze.floor_cells()}
        seen, todo = set(), [next(iter(floor))]
        while todo:
            c = todo.pop()
            if c in seen:
                continue
            seen.add(c)
            todo += [n for n in ((c[0] + 1, c[1]), (c[0] - 1, c[1]), (c[0], c[1] + 1), (c[0], c[1] - 1))
                     if n in floor]
        assert seen == floor


def _reference_depth(maze, x, y, angle, cos_off):
    """Slow independent march in world units: distance along the view axis (in cells) to the first
    wall cell (or the outer wall) along heading `angle`."""
    d = 0.0
    while True:
        d += 1e-4
        px, py = x + d * math.cos(angle), y + d * math.sin(angle)
        ix, iy = math.floor((px - mm.ORIGIN) / mm.CELL), math.floor((py - mm.ORIGIN) / mm.CELL)
        if not (0 <= ix < mm.GRID and 0 <= iy < mm.GRID) or maze.wall[iy, ix]:
            return d * cos_off / mm.CELL


def test_wall_casting_matches_the_grid_and_the_yaw_convention(episodes):
    """Column j looks along yaw - atan(u_j): the left of the image is counter-clockwise of the view."""
    size = 12
    u = ((np.arange(size) + 0.5) / size * 2 - 1) * math.tan(mm.HFOV / 2)
    maze, _, cameras = episodes[0]
    cams = cameras[::37]
    depth = mm.cast_walls(maze, cams, size)[0]
    for cam, row in zip(cams, depth):
        for j in (0, 3, 6, 11):
            off = -math.atan(u[j])
            ref = _reference_depth(maze, float(cam[0]), float(cam[1]), float(cam[3]) + off, math.cos(off))
            assert row[j] == pytest.approx(ref, abs=2e-3)


def test_render_sky_floor_horizon(episodes):
    maze, _, cameras = episodes[0]
    img = mm.render(maze, cameras)
    assert img.shape == (mm.N_VIEWS, mm.IMAGE_SIZE, mm.IMAGE_SIZE, 3) and img.dtype == np.uint8
    is_sky = np.all(img == np.array(mm.SKY, np.uint8), axis=-1)       # (N, H, W)
    assert not is_sky[:, mm.IMAGE_SIZE // 2:].any()                    # no sky below the horizon
    # walls are as high as a cell and the eye is at half height: a wall further than half a cell
    # (plus a pixel) leaves the top row to the sky
    far = mm.cast_walls(maze, cameras)[0].min(axis=1) > 0.52
    assert far.any() and is_sky[far, 0].all()


def test_map_convention(episodes):
    """Map row 0 = y = +0.3 (north), column 0 = x = -0.4: cameras fall on floor-coloured pixels,
    wall cell centres on wall-coloured ones."""
    for maze, _, cameras in episodes:
        image = mm.maze_map(maze)
        side = mm.MAP_CELL_PX * mm.GRID
        assert image.size == (side, side) and image.mode == "RGB"
        px = np.asarray(image)
        floor_rgb = {tuple(c) for c in maze.floor_textures[:, -1, 0, 0]}
        span = mm.GRID * mm.CELL
        for x, y in cameras[::10, :2].astype(np.float64):
            col = int((x - mm.ORIGIN) / span * side)
            row = int((mm.ORIGIN + span - y) / span * side)
            assert tuple(px[row, col]) in floor_rgb
        for iy, ix in np.argwhere(maze.wall):
            x, y = mm.ORIGIN + (ix + 0.5) * mm.CELL, mm.ORIGIN + (iy + 0.5) * mm.CELL
            col = int((x - mm.ORIGIN) / span * side)
            row = int((mm.ORIGIN + span - y) / span * side)
            assert tuple(px[row, col]) not in floor_rgb


def test_command_line_writes_readable_episodes(tmp_path):
    args = mm.parse_args(["--out", str(tmp_path / "a"), "--train", "2", "--test", "1", "--seed", "5"])
    mm.main(args)
    mm.main(mm.parse_args(["--out", str(tmp_path / "b"), "--train", "2", "--test", "1", "--seed", "5",
                           "--contact-sheet", ""]))
    assert (tmp_path / "a" / "contact_sheet.png").is_file()
    assert not (tmp_path / "b" / "contact_sheet.png").exists()
    for split, count in (("train", 2), ("test", 1)):
        paths = list_episodes(tmp_path / "a" / split)
        assert [p.name for p in paths] == [f"maze-{i:04d}.pt" for i in range(count)]
        for p in paths:
            assert p.read_bytes() == (tmp_path / "b" / split / p.name).read_bytes()   # same bytes
            ep = load_episode(p)
            assert len(ep.frames) == mm.N_VIEWS and ep.cameras.shape == (mm.N_VIEWS, 5)
            im = Image.open(io.BytesIO(ep.frames[0]))
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (84, 84)
            with Image.open(p.with_name(p.name[:-3] + ".map.png")) as m:
                assert m.size == (112, 112)
    train0 = load_episode(tmp_path / "a" / "train" / "maze-0000.pt")
    test0 = load_episode(tmp_path / "a" / "test" / "maze-0000.pt")
    assert train0.frames != test0.frames


@pytest.mark.parametrize("flag, value, message", [
    ("--views", "0", "expected int >= 1, got 0"), ("--views", "-5", "expected int >= 1, got -5"),
    ("--seed", "-1", "expected int >= 0, got -1"), ("--train", "-3", "expected int >= 0, got -3"),
    ("--test", "-1", "expected int >= 0, got -1"), ("--quality", "101", "expected int >= 0 and <= 100, got 101"),
    ("--workers", "0", "expected int > 0, got 0"),
])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        mm.cli(["--out", str(tmp_path / "o"), flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err[-1] == f"python -m utils.data.make_mazes: error: argument {flag}: {message}"
    assert not (tmp_path / "o").exists()


def test_any_number_of_workers_writes_the_same_bytes(tmp_path):
    """A process pool builds whole episodes, each a function of (seed, split, index): the files, maps and
    contact sheet of 2 workers equal those of 1, byte for byte."""
    base = ["--train", "5", "--test", "2", "--views", "3", "--seed", "3"]
    assert mm.cli(["--out", str(tmp_path / "one")] + base) == 0
    assert mm.cli(["--out", str(tmp_path / "two"), "--workers", "2"] + base) == 0

    def files(root):
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert len(one) == 2 * 7 + 1 and "contact_sheet.png" in one  # episodes, their maps, the sheet
    assert one == two
    # and no sheet when asked for none, with workers too
    assert mm.cli(["--out", str(tmp_path / "none"), "--workers", "2", "--contact-sheet", ""] + base) == 0
    assert files(tmp_path / "none") == {name: data for name, data in one.items() if name != "contact_sheet.png"}


def test_smallest_arguments_are_accepted(tmp_path):
    out = tmp_path / "o"
    assert mm.cli(["--out", str(out), "--train", "1", "--test", "0", "--views", "1", "--seed", "0",
                   "--quality", "0", "--contact-sheet", ""]) == 0
    assert [p.name for p in list_episodes(out / "train")] == ["maze-0000.pt"]
    assert len(load_episode(out / "train" / "maze-0000.pt")) == 1
    assert list((out / "test").iterdir()) == []


@pytest.mark.parametrize("sheet", ["sub/sheet.png", "../sheet.png", "sheet", "sheet.pt", "sheet.psd"])
def test_a_contact_sheet_name_that_cannot_be_written_is_refused_before_any_episode(tmp_path, capsys, sheet):
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as refused:
        mm.cli(["--out", str(out), "--train", "1", "--test", "0", "--views", "2", "--contact-sheet", sheet])
    assert refused.value.code == 2 and "--contact-sheet must be an image file name" in capsys.readouterr().err
    assert not out.exists()

def test_runs_never_mix_in_one_folder(tmp_path, capsys):
    out = tmp_path / "o"
    base = ["--out", str(out), "--test", "0", "--views", "2", "--contact-sheet", ""]
    assert mm.cli(base + ["--train", "3", "--seed", "0"]) == 0
    first_run = {p.name: p.read_bytes() for p in (out / "train").iterdir()}
    assert len(first_run) == 6  # 3 episodes and their maps
    capsys.readouterr()

    # another seed into the same folder: refused before writing, the first run's files untouched
    assert mm.cli(base + ["--train", "1", "--seed", "5"]) == 2
    assert capsys.readouterr().err == (f"python -m utils.data.make_mazes: error: {out / 'train'} already holds 3 episode "
                                       "file(s), e.g. maze-0000.pt; remove them or choose another --out, so that "
                                       "two runs' episodes never mix\n")
    assert {p.name: p.read_bytes() for p in (out / "train").iterdir()} == first_run

    # a split this run writes nothing to is checked too, for any episode file (not only maze-*)
    for p in (out / "train").iterdir():
        p.rename(out / "test" / f"other-{p.name}")
    assert mm.cli(base + ["--train", "1", "--seed", "5"]) == 2
    assert f"error: {out / 'test'} already holds 3 episode file(s), e.g. other-maze-0000.pt" in capsys.readouterr().err
    assert list((out / "train").iterdir()) == []

    for p in (out / "test").iterdir():
        p.unlink()
    assert mm.cli(base + ["--train", "1", "--seed", "5"]) == 0
    assert sorted(p.name for p in (out / "train").iterdir()) == ["maze-0000.map.png", "maze-0000.pt"]
    expected = mm.make_episode(mm.episode_rng(5, "train", 0), n_views=2)[1]
    assert load_episode(out / "train" / "maze-0000.pt").frames == expected


def test_script_out_is_a_file_one_line_error(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    result = subprocess.run([sys.executable, "-m", "utils.data.make_mazes", "--out", str(taken), "--train", "1", "--test",
                             "0", "--views", "1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.startswith("python -m utils.data.make_mazes: error: ") and result.stderr.count("\n") == 1
    assert "Not a directory" in result.stderr and taken.read_text() == "mine"


def test_committed_data_samples():
    root = REPO_ROOT / "data_samples"
    for split, count in (("train", 16), ("test", 25)):
        paths = list_episodes(root / split)
        assert len(paths) == count
        for p in paths:
            ep = load_episode(p)
            assert len(ep.frames) == mm.N_VIEWS and ep.cameras.shape == (mm.N_VIEWS, 5)
            assert Path(str(p)[:-3] + ".map.png").is_file()
    first = load_episode(root / "train" / "maze-0000.pt")
    with Image.open(io.BytesIO(first.frames[0])) as im:
        assert im.size == (84, 84)
