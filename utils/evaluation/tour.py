"""The tour animation (``make_gif.py`` is its command line): a query camera walks through a k x k hotel of
mazes and turns in place in each.

k x k distinct episodes (chosen by ``--seed``) form one hotel with its lower-left corner at ``ORIGIN``;
``--context_views`` views of every maze (default: as many as the checkpoint was trained with) are written
into the model. The camera then stands, maze by maze in snake order, at ``--positions`` places where that
episode's own camera stood longest, and turns a full circle there in ``--frames_per_turn`` steps. Every
frame shows, left, the view the model generates for that pose (prior sample, upscaled with nearest
neighbour) above the episode's own view when it has one near that pose (within ``GT_RADIUS`` and
``GT_YAW``); right, a top-down map of the mazes (each episode's ``NAME.map.png`` when there is one, else an
approximation from its views, see :func:`approximate_map`) with the GEN's nodes and edges in white, the 4
nodes the query reads in red (opacity = bilinear weight) and the camera as a black triangle pointing
along its yaw.

Yaw, as in ``utils/data/make_mazes.py`` and the real data: counter-clockwise from +x, the camera looks along
(cos yaw, sin yaw); maps are drawn north (+y) up, east (+x) right.
"""
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from models.structure import CELL, SPACING
from utils.atomic import atomic_path
from utils.data.episodes import EPISODE_SUFFIXES, decode_views, list_episodes, load_episode
from utils.data.hotel import POSE_EXTENT, WORLD_MAZES, maze_cells, maze_to_world, world_poses
from utils.evaluation.trained_model import load_candidate

ORIGIN = (-1.0, -1.0)  # the hotel's lower-left world corner (the first maze's cell starts there)
GT_RADIUS = 0.01  # camera units (a tenth of a maze square): a view this close counts as "from here"
GT_YAW = 0.3  # radians
MIN_SEPARATION = 0.1  # camera units between two standing positions in one maze
MAP_CELLS = 7  # squares per side of a DeepMind Lab maze in POSE_EXTENT
PAD, HEADER, LABEL = 8, 20, 14  # pixels
BACKGROUND, PANEL = (24, 24, 28), (60, 60, 66)
NODE, EDGE, ACTIVE, CAMERA = (255, 255, 255), (215, 215, 215), (255, 0, 0), (0, 0, 0)  # camera: black, white rim


class TourError(ValueError):
    """A bad command line or input; printed as one line."""


def font(size: int = 11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


# ---- maps ------------------------------------------------------------------------------------------
def map_path(episode_path) -> Path:
    """``maze-0001.pt`` / ``maze-0001.pt.gz`` -> ``maze-0001.map.png`` beside it."""
    path = Path(episode_path)
    name = path.name
    for suffix in sorted(EPISODE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(f"{name}.map.png")


def approximate_map(episode, cells: int = MAP_CELLS, px: int = 112) -> Image.Image:
    """A top-down map guessed from the views (real episodes have none), covering POSE_EXTENT, north up.

    A square where a camera stood is floor: coloured by the mean of the bottom rows of the views taken
    there (the floor in front of the camera). Squares never visited are drawn in the episode's mean wall
    colour (the rows just above the horizon), darkened.
    """
    views = decode_views(episode, range(len(episode.frames)), 16)  # (N, 3, 16, 16)
    floor = views[:, :, -3:, :].mean(dim=(2, 3))  # (N, 3)
    wall = views[:, :, 5:8, :].mean(dim=(0, 2, 3)) * 0.6  # (3,)
    low, high = POSE_EXTENT
    step = (high - low) / cells
    xy = torch.as_tensor(episode.cameras[:, :2])
    ij = ((xy - low) / step).floor().long().clamp(0, cells - 1)  # (N, 2) column (x), row from south (y)
    flat = ij[:, 1] * cells + ij[:, 0]
    sums = torch.zeros(cells * cells, 3).index_add_(0, flat, floor)
    counts = torch.zeros(cells * cells).index_add_(0, flat, torch.ones(len(flat)))
    colours = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], wall)
    grid = colours.view(cells, cells, 3).flip(0)  # row 0 = north
    image = Image.fromarray((grid * 255).round().byte().numpy(), "RGB")
    return image.resize((px, px), Image.NEAREST)


def episode_map(path, episode) -> Image.Image:
    png = map_path(path)
    if png.is_file():
        with Image.open(png) as image:
            return image.convert("RGB")
    return approximate_map(episode)


class MapCanvas:
    """The hotel's top-down map, ``size`` pixels square for the world square [origin, origin + k CELL]^2."""

    def __init__(self, size: int, grid: int, origin: torch.Tensor, tiles: List[Image.Image], raw: bool,
                 structure=None):
        self.size, self.grid, self.origin = size, grid, origin
        self.scale = size / (CELL * grid)  # pixels per world unit
        self.structure = structure
        image = Image.new("RGB", (size, size), PANEL)
        cells = maze_cells(grid)
        low, high = POSE_EXTENT
        for m, tile in enumerate(tiles):  # each map covers the maze's pose extent, wherever that lands
            corners = maze_to_world(torch.tensor([[low, high], [high, low]]), cells[m], origin, raw)  # NW, SE
            (x0, y0), (x1, y1) = self.to_pixels(corners).round().long().tolist()
            image.paste(tile.resize((max(1, x1 - x0), max(1, y1 - y0)), Image.NEAREST), (x0, y0))
        draw = ImageDraw.Draw(image)
        for i in range(grid + 1):  # maze cell borders
            at = round(i * CELL * self.scale)
            draw.line([(at, 0), (at, size)], fill=BACKGROUND)
            draw.line([(0, at), (size, at)], fill=BACKGROUND)
        self.node_radius = max(2.0, min(5.0, 0.2 * SPACING * self.scale))
        if structure is not None:
            self.nodes = self.to_pixels(structure.node_positions(origin[None])[0])  # (nodes, 2)
            for a, b in zip(structure.source.tolist(), structure.sink.tolist()):
                if a < b:
                    draw.line([tuple(self.nodes[a].tolist()), tuple(self.nodes[b].tolist())], fill=EDGE)
            for x, y in self.nodes.tolist():
                r = self.node_radius
                draw.ellipse([x - r, y - r, x + r, y + r], fill=NODE)
        else:
            self.nodes = None
            draw.text((4, 4), "GQN baseline: one summed", fill=NODE, font=font())
            draw.text((4, 18), "representation, no nodes", fill=NODE, font=font())
        self.base = image

    def to_pixels(self, xy: torch.Tensor) -> torch.Tensor:
        """World x, y (..., 2) -> pixel column, row (..., 2) (north up)."""
        offset = (xy - self.origin) * self.scale
        return torch.stack([offset[..., 0], self.size - offset[..., 1]], dim=-1)

    def active_nodes(self, xy: torch.Tensor) -> torch.Tensor:
        """Bilinear read weights (nodes,) of a query at world ``xy`` (2,)."""
        return self.structure.bilinear_weights(xy.view(1, 1, 2), self.origin[None])[0, 0]

    def draw(self, xy: torch.Tensor, yaw: float) -> Image.Image:
        """The map with the query's active nodes and the camera at world ``xy`` looking along ``yaw``."""
        overlay = Image.new("RGBA", self.base.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        if self.nodes is not None:
            weights = self.active_nodes(xy)
            r = self.node_radius + 2
            for node in weights.nonzero().flatten().tolist():
                x, y = self.nodes[node].tolist()
                alpha = int(round(255 * float(weights[node])))
                draw.ellipse([x - r, y - r, x + r, y + r], fill=ACTIVE + (alpha,))
        x, y = self.to_pixels(xy).tolist()
        length = max(10.0, 0.6 * SPACING * self.scale)
        tip = (x + length * math.cos(yaw), y - length * math.sin(yaw))  # pixel rows grow southwards
        left = (x + 0.6 * length * math.cos(yaw + 2.5), y - 0.6 * length * math.sin(yaw + 2.5))
        right = (x + 0.6 * length * math.cos(yaw - 2.5), y - 0.6 * length * math.sin(yaw - 2.5))
        draw.polygon([tip, left, right], fill=CAMERA + (255,), outline=NODE + (255,), width=2)
        return Image.alpha_composite(self.base.convert("RGBA"), overlay).convert("RGB")


# ---- the tour --------------------------------------------------------------------------------------
def wrap(angle):
    return (angle + math.pi) % (2 * math.pi) - math.pi


def standing_positions(cameras: np.ndarray, count: int) -> np.ndarray:
    """``count`` places (count, 2) where the episode's camera stood longest (most views within
    GT_RADIUS), at least MIN_SEPARATION apart; fewer if the episode has fewer such places."""
    xy = cameras[:, :2].astype(np.float64)
    near = np.linalg.norm(xy[:, None] - xy[None], axis=-1) < GT_RADIUS  # (N, N)
    order = np.argsort(-near.sum(1), kind="stable")
    chosen = []
    for index in order:
        if all(np.linalg.norm(xy[index] - xy[c]) >= MIN_SEPARATION for c in chosen):
            chosen.append(index)
            if len(chosen) == count:
                break
    return xy[chosen]


def nearby_view(cameras: np.ndarray, xy, yaw: float) -> Optional[int]:
    """Index of the episode's view taken within GT_RADIUS of ``xy`` with yaw within GT_YAW, the one
    closest in yaw; None if there is none."""
    distance = np.linalg.norm(cameras[:, :2] - np.asarray(xy)[None], axis=1)
    turn = np.abs((cameras[:, 3] - yaw + np.pi) % (2 * np.pi) - np.pi)
    ok = (distance < GT_RADIUS) & (turn < GT_YAW)
    if not ok.any():
        return None
    return int(np.where(ok, turn, np.inf).argmin())


def snake_order(grid: int) -> List[int]:
    """Maze indices m = j k + i row by row, alternating direction, so the camera moves to a neighbour."""
    order = []
    for j in range(grid):
        row = [j * grid + i for i in range(grid)]
        order += row if j % 2 == 0 else row[::-1]
    return order


@dataclass
class Tour:
    frames: List[Image.Image]
    mazes: List[int]  # maze index of each frame
    world_xy: torch.Tensor  # (F, 2)
    yaws: torch.Tensor  # (F,)
    has_truth: List[bool]
    canvas: MapCanvas
    map_box: tuple  # (left, top) of the map inside each frame
    label: str = ""
    episodes: List[str] = field(default_factory=list)


def frame_layout(tile: int, map_size: int):
    """(width, height, map (left, top)) of a frame; both sides even so video encoders accept them."""
    width = 3 * PAD + tile + map_size
    height = HEADER + max(2 * (LABEL + tile), LABEL + map_size) + PAD
    return width + width % 2, height + height % 2, (2 * PAD + tile, HEADER + LABEL)


def upscale(image: torch.Tensor, tile: int) -> Image.Image:
    """(3, S, S) in [0, 1] -> a tile x tile PIL image, nearest neighbour (crisp pixels)."""
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array, "RGB").resize((tile, tile), Image.NEAREST)


def blank_tile(tile: int, text: str) -> Image.Image:
    image = Image.new("RGB", (tile, tile), PANEL)
    ImageDraw.Draw(image).text((6, tile // 2 - 6), text, fill=(200, 200, 200), font=font())
    return image


def make_tour(args) -> Tour:
    """Every frame of the tour, in memory."""
    if args.grid > WORLD_MAZES:
        raise TourError(f"grid {args.grid}x{args.grid} is too big for the world ({WORLD_MAZES}x{WORLD_MAZES} mazes)")
    paths = list_episodes(args.data_dir)
    grid, mazes = args.grid, args.grid * args.grid
    if mazes > len(paths):
        raise TourError(f"a {grid}x{grid} hotel needs {mazes} distinct episodes but {args.data_dir} holds {len(paths)}")
    candidate = load_candidate(args.saved_model, "cpu")
    model, raw, size, label = candidate.model, candidate.raw_poses, candidate.img_size, candidate.label
    if grid > candidate.max_grid:
        raise TourError(f"grid {grid}x{grid} is larger than this model's world ({candidate.max_grid} mazes a side)")
    # GEN sums the views written into a node, so the tour uses as many as the model was trained with.
    context_views = args.context_views if args.context_views is not None else candidate.context_views
    tile = args.scale * size if args.scale else max(1, 128 // size) * size

    g = torch.Generator().manual_seed(args.seed)
    chosen = torch.randperm(len(paths), generator=g)[:mazes].tolist()
    episodes = [load_episode(paths[i]) for i in chosen]
    origin = torch.tensor(ORIGIN)
    cells = maze_cells(grid)

    context_frames, context_poses = [], []
    for m, episode in enumerate(episodes):
        views = torch.randperm(len(episode.frames), generator=g)[:context_views].sort().values
        context_frames.append(decode_views(episode, views.tolist(), size))  # (C, 3, S, S)
        cams = torch.as_tensor(episode.cameras)[views]
        context_poses.append(world_poses(cams, cells[m], origin, raw))  # (C, 7)
    context_frames = torch.cat(context_frames)[None]  # (1, M * C, 3, S, S)
    context_poses = torch.cat(context_poses)[None]  # (1, M * C, 7)

    stops, truth_views = [], []  # (maze, camera x, y, z, yaw) per frame; ground-truth view index or None
    for m in snake_order(grid):
        cameras = episodes[m].cameras
        for xy in standing_positions(cameras, args.positions):
            here = np.linalg.norm(cameras[:, :2] - xy[None], axis=1) < GT_RADIUS
            first_yaw = float(cameras[here, 3][0])
            z = float(cameras[here, 2][0])
            for t in range(args.frames_per_turn):
                yaw = wrap(first_yaw + 2 * math.pi * t / args.frames_per_turn)
                stops.append((m, xy[0], xy[1], z, yaw))
                truth_views.append(nearby_view(cameras, xy, yaw))
    maze_index = [s[0] for s in stops]
    local = torch.tensor([s[1:3] for s in stops], dtype=torch.float32)  # (F, 2) camera units
    world_xy = maze_to_world(local, cells[maze_index], origin, raw)  # (F, 2)
    yaws = torch.tensor([s[4] for s in stops], dtype=torch.float32)
    z = torch.tensor([s[3] for s in stops], dtype=torch.float32)
    query_poses = torch.stack([world_xy[:, 0], world_xy[:, 1], z, yaws.cos(), yaws.sin(),
                               torch.ones_like(z), torch.zeros_like(z)], dim=-1)[None]  # (1, F, 7)

    torch.manual_seed(args.seed)
    generated = []
    with torch.no_grad():
        r = model.represent(context_frames, context_poses, query_poses, origin[None], grid)  # (F, r_dim)
        for start in range(0, r.shape[0], args.batch_size):
            part = slice(start, start + args.batch_size)
            generated.append(model.generate(query_poses[0, part], r[part]))
    generated = torch.cat(generated)  # (F, 3, S, S)

    structure = None if model.config.baseline else model.composer.structures[str(grid)]
    width, height, map_box = frame_layout(tile, 2 * tile + LABEL)
    canvas = MapCanvas(2 * tile + LABEL, grid, origin, [episode_map(paths[i], e) for i, e in zip(chosen, episodes)],
                       raw, structure)
    text = font()
    frames = []
    for f, (m, _, _, _, yaw) in enumerate(stops):
        frame = Image.new("RGB", (width, height), BACKGROUND)
        draw = ImageDraw.Draw(frame)
        i, j = cells[m].long().tolist()
        draw.text((PAD, 4), f"{label} | {grid}x{grid} hotel | maze ({i},{j}) | yaw {math.degrees(yaw):+.0f} deg",
                  fill=NODE, font=text)
        draw.text((PAD, HEADER), "generated", fill=NODE, font=text)
        frame.paste(upscale(generated[f], tile), (PAD, HEADER + LABEL))
        draw.text((PAD, HEADER + LABEL + tile), "ground truth", fill=NODE, font=text)
        draw.text((map_box[0], HEADER), "map: nodes (white), read by the query (red), camera", fill=NODE, font=text)
        index = truth_views[f]
        truth = (upscale(decode_views(episodes[m], [index], size)[0], tile) if index is not None
                 else blank_tile(tile, "no view here"))
        frame.paste(truth, (PAD, HEADER + 2 * LABEL + tile))
        frame.paste(canvas.draw(world_xy[f], float(yaw)), map_box)
        frames.append(frame)
    return Tour(frames, maze_index, world_xy, yaws, [v is not None for v in truth_views], canvas, map_box, label,
                [str(paths[i]) for i in chosen])


# ---- output ----------------------------------------------------------------------------------------
# Both are written atomically: a failed write (a full disk) leaves the previous file as it was. The
# temporary name ends in .tmp, so each writer is told its format.
def write_gif(frames: List[Image.Image], path: Path, duration_ms: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        frames[0].save(temp, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)


def write_mp4(frames: List[Image.Image], path: Path, fps: float) -> None:
    import imageio_ffmpeg

    with atomic_path(path) as temp:
        writer = imageio_ffmpeg.write_frames(str(temp), frames[0].size, fps=fps, macro_block_size=1,
                                             pix_fmt_out="yuv420p", output_params=["-f", "mp4"])
        writer.send(None)  # start the encoder
        for frame in frames:
            writer.send(np.ascontiguousarray(np.asarray(frame)))
        writer.close()
