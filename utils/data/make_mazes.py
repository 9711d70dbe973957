"""Procedural DeepMind-Lab-like maze episodes: the project's built-in `data_samples/`.

    python -m utils.data.make_mazes --out data_samples --train 16 --test 25 --seed 0
    python -m utils.data.make_mazes --out more_mazes --train 0 --test 400 --workers 8 --contact-sheet ''

Each episode is one random maze seen from 300 first-person views, written with
`utils.data.episodes.save_episode` as `OUT/{train,test}/maze-NNNN.pt` (84x84 RGB JPEG bytes + float32 cameras
(300, 5) = x, y, z, yaw, pitch), with a top-down map `maze-NNNN.map.png` beside it. OUT/train and
OUT/test must not hold episode files yet (the run stops with an error before writing), so runs never mix.

Maze. A 7 x 7 grid of cells (wall or floor) inside an outer wall, with one or two rectangular rooms
(3x3, 3x5 or 5x3 cells) joined by one-cell corridors: a random spanning tree (Kruskal) over the cells
at even indices, where each room counts as one node, plus one to three extra links that make loops. Every region
(the corridors, each room) gets its own wall and floor texture, drawn per maze from a few procedural
families and colours modelled on the real frames (green circuit-board walls, red/grey/yellow bricks
and blocks; sandy, orange, light-blue floors; a plain light-blue sky). A wall face takes the texture of
the region it faces.

Units and conventions (the same as DeepMind's GQN `mazes` data, measured on 31 of its episodes):
- Cells are 0.1 wide; the grid spans x, y in [-0.4, 0.3] (cell (ix, iy) covers
  x in [-0.4 + 0.1 ix, -0.3 + 0.1 ix], y likewise). Walls are 0.1 high, the eye is at 0.05
  (horizon in the middle of the image); z = pitch = 0 in the cameras, as in the real data.
- yaw is the heading in the x, y plane, counter-clockwise from +x: the camera looks along
  (cos yaw, sin yaw). This is the real data's convention: walking moves along (cos yaw, sin yaw)
  there, and increasing yaw (its initial turn) shifts the image content to the right, i.e. the camera
  turns left, which is counter-clockwise when the map is drawn with x to the east and y to the north.
  Cameras store yaw wrapped to [-pi, pi].
- Horizontal (and vertical) field of view 90 degrees (a focal length of 42 px, fitted on the real
  initial turns).
- `Maze.wall[iy, ix]` is True for wall cells; row iy = 0 is the southern row (y in [-0.4, -0.3]).
- The map image `NAME.map.png` is `MAP_CELL_PX * 7` = 112 px square and covers exactly x, y in
  [-0.4, 0.3]: image row 0 is the northern edge (y = +0.3, north up), column 0 the western edge
  (x = -0.4). World (x, y) -> pixel (col, row) = ((x + 0.4) / 0.7 * 112, (0.3 - y) / 0.7 * 112).
  Floor cells are drawn in their floor texture's mean colour, wall cells in their wall texture's
  mean colour darkened by MAP_WALL_SHADE (0.6). The outer wall lies outside the map.

Camera path (statistics of the real episodes): the camera starts at a floor cell's centre and turns
in place for 42 steps of 0.1536 rad (a little over one full turn, counter-clockwise); then it wanders
from cell to cell, never stepping back except out of a dead end and preferring the least visited
neighbour (dead ends count as visited once more), along cell centres with every corner rounded by a
quadratic Bezier arc and a smooth sideways drift of up to 0.03 (real x, y reach 0.016 from walls), at
about 0.019 per frame (slower while the view is still turning); the view turns with the path at
most 0.1536 rad per frame; the camera stops to turn in place where the path doubles back and, now
and then (1.5 % per cell), to turn into a side way.

Rendering is a vectorised numpy ray caster over all views at once: walls by DDA per image column,
floor by casting every pixel below the wall onto the ground plane, textures mip-mapped.
Deterministic: an episode is a pure function of (seed, split, index) through numpy's SeedSequence,
so the same command writes the same bytes (on the same numpy/Pillow build), with any number of
`--workers` (processes that each build and write whole episodes; tested).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from utils import command

PROG = "python -m utils.data.make_mazes"  # run from the repository root

# --- Geometry of a maze (real data's units) ---------------------------------------------------------
GRID = 7                        # cells per side
CELL = 0.1                      # cell width
ORIGIN = -0.4                   # x (and y) of the grid's south-west corner
WALL_HEIGHT = 1.0               # in cells
EYE_HEIGHT = 0.5                # in cells: horizon in the middle of the image
PLAYER_RADIUS = 0.016           # real x, y stop 0.016 short of the outer walls

# --- Camera ------------------------------------------------------------------------------------------
IMAGE_SIZE = 84
HFOV = math.radians(90.0)
N_VIEWS = 300
TURN_STEP = 0.1536              # rad per frame, real data (about 2 pi / 41)
INITIAL_TURN_STEPS = 42         # real data: 42 steps at the start cell, then the walk begins
WALK_STEP = 0.019               # per frame, real data median 0.015-0.019, max 0.024
LOOK_AHEAD = 0.03               # the view aims at the path this far ahead (anticipates corners)
LOOK_AROUND_P = 0.015           # chance, per cell walked, to stop and look around
LEG_MAX_CELLS = 2 * GRID * GRID  # a leg (a walk without stopping) is cut here at the latest
LATERAL_DRIFT = 0.03            # sideways wander off the cells' centre lines
SLOW_IN_TURNS = 0.5             # walking speed drops by up to this fraction while turning
MAX_HEADING_ERROR = 0.6 * math.pi  # beyond this the camera stops and turns in place (not at 90 deg corners)

# --- Appearance --------------------------------------------------------------------------------------
TEX = 64                        # texels per cell (walls: per cell width x wall height)
SKY = (149, 224, 255)           # the real sky, a flat colour
Y_SIDE_SHADE = 0.86             # faces looking north/south are a little darker, as in DM Lab's lighting
JPEG_QUALITY = 75                # ~2.1 KB a frame (the real ones: ~3.9 KB at quality 95)
MAP_CELL_PX = 16
MAP_WALL_SHADE = 0.6            # walls darker on the map, so they stand out from floors

SPLITS = {"train": 0, "test": 1}  # seed streams: split id is part of every episode's seed


@dataclass(frozen=True)
class Maze:
    """A maze and its textures. Indexing is [iy, ix], iy = 0 the southern row."""

    wall: np.ndarray            # (7, 7) bool
    region: np.ndarray          # (7, 7) int: 0 corridors, 1.. rooms (also set, unused, on wall cells)
    wall_textures: np.ndarray   # (R, L, TEX, TEX, 3) uint8 mip levels, each upsampled back to TEX
    floor_textures: np.ndarray  # (R, L, TEX, TEX, 3) uint8

    def floor_cells(self) -> np.ndarray:
        """(F, 2) int [iy, ix] of all floor cells."""
        return np.argwhere(~self.wall)


# ==================================================================================================
# Maze layout
# ==================================================================================================

def _find(parent: list[int], a: int) -> int:
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


def make_layout(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random (wall, region) grids: rooms and a spanning tree of corridors over the even cells."""
    wall = np.ones((GRID, GRID), bool)
    region = np.zeros((GRID, GRID), int)
    nodes = GRID // 2 + 1                                  # 4 node cells per side, at even indices
    rooms: list[tuple[int, int, int, int]] = []            # node ranges (y0, x0, h, w)
    n_rooms = int(rng.integers(1, 3))
    for _ in range(40):
        if len(rooms) == n_rooms:
            break
        h, w = (int(v) for v in rng.permutation([2, int(rng.integers(2, 4))]))  # 3x3, 3x5 or 5x3 cells
        y0, x0 = int(rng.integers(0, nodes - h + 1)), int(rng.integers(0, nodes - w + 1))
        if any(y0 < b[0] + b[2] and b[0] < y0 + h and x0 < b[1] + b[3] and b[1] < x0 + w
               for b in rooms):
            continue
        rooms.append((y0, x0, h, w))
    parent = list(range(nodes * nodes))
    for k, (y0, x0, h, w) in enumerate(rooms, start=1):
        wall[2 * y0:2 * (y0 + h) - 1, 2 * x0:2 * (x0 + w) - 1] = False
        region[2 * y0:2 * (y0 + h) - 1, 2 * x0:2 * (x0 + w) - 1] = k
        for ny in range(y0, y0 + h):
            for nx in range(x0, x0 + w):
                parent[_find(parent, ny * nodes + nx)] = _find(parent, y0 * nodes + x0)
    wall[::2, ::2] = False
    edges = [(a, a + 1) for a in range(nodes * nodes) if a % nodes < nodes - 1]
    edges += [(a, a + nodes) for a in range(nodes * (nodes - 1))]
    order = rng.permutation(len(edges))
    spare = []
    for e in order:
        a, b = edges[e]
        ra, rb = _find(parent, a), _find(parent, b)
        (ay, ax), (by, bx) = divmod(a, nodes), divmod(b, nodes)
        cy, cx = ay + by, ax + bx                          # connector cell between the two nodes
        if ra != rb:
            parent[ra] = rb
            wall[cy, cx] = False
        elif wall[cy, cx]:
            spare.append((cy, cx))
    for i in range(min(len(spare), int(rng.integers(1, 4)))):  # a few loops (fewer dead ends)
        wall[spare[i]] = False
    return wall, region


# ==================================================================================================
# Textures
# ==================================================================================================

def _noise(rng: np.random.Generator, cells: int, size: int = TEX) -> np.ndarray:
    """Tileable smooth value noise in [0, 1], (size, size): bilinear over a cells x cells lattice."""
    g = rng.random((cells, cells))
    t = np.arange(size) * cells / size
    i0 = np.floor(t).astype(int)
    f = t - i0
    f = f * f * (3 - 2 * f)
    i1 = (i0 + 1) % cells
    rows = g[i0] * (1 - f)[:, None] + g[i1] * f[:, None]          # (size, cells)
    return rows[:, i0] * (1 - f)[None] + rows[:, i1] * f[None]


def _jitter(rng: np.random.Generator, rgb, amount: float = 0.08) -> np.ndarray:
    return np.clip(np.asarray(rgb, float) * (1 + amount * rng.uniform(-1, 1, 3)), 0, 255)


def _wall_circuit(rng, base):
    """Circuit-board panel: base colour, soft mottling, thin dark traces, a seam at the cell edge."""
    t = np.ones((TEX, TEX, 1)) * base
    t = t * (0.88 + 0.2 * _noise(rng, 4)[..., None])
    dark = base * 0.55
    for _ in range(int(rng.integers(6, 11))):
        pos, a, b = (int(v) for v in rng.integers(4, TEX - 4, 3))
        a, b = min(a, b), max(a, b) + 4
        if rng.random() < 0.5:
            t[pos:pos + 1, a:b] = dark
        else:
            t[a:b, pos:pos + 1] = dark
    t[:, :1] = dark
    return t


def _wall_bricks(rng, base):
    """Rows of bricks with per-brick shade and darker mortar."""
    bh, bw = int(rng.choice([8, 16])), int(rng.choice([16, 32]))
    t = np.empty((TEX, TEX, 3))
    for r in range(TEX // bh):
        off = (bw // 2) * (r % 2)
        for c in range(-1, TEX // bw + 1):
            x0, x1 = max(0, c * bw + off), min(TEX, (c + 1) * bw + off)
            if x1 > x0:
                t[r * bh:(r + 1) * bh, x0:x1] = base * rng.uniform(0.78, 1.12)
        t[r * bh, :] = base * 0.6
        for c in range(-1, TEX // bw + 1):
            x = c * bw + off
            if 0 <= x < TEX:
                t[r * bh:(r + 1) * bh, x] = base * 0.6
    return t * (0.92 + 0.12 * _noise(rng, 8)[..., None])


def _wall_blocks(rng, base):
    """Irregular small blocks of varied shade (the yellow/grey 'stone' walls)."""
    n = 8
    shades = rng.uniform(0.75, 1.15, (n, n))
    t = np.kron(shades, np.ones((TEX // n, TEX // n)))[..., None] * base
    lines = np.zeros((TEX, TEX), bool)
    lines[::TEX // n, :] = True
    lines[:, ::TEX // n] = rng.random((TEX, 1)) < 0.7
    t[lines] *= 0.7
    return t * (0.94 + 0.1 * _noise(rng, 16)[..., None])


def _floor_spots(rng, base, spot, cells=16, frac=0.25):
    """Mottled floor: base colour with blobs of a second colour where noise is high."""
    n = 0.6 * _noise(rng, cells) + 0.4 * _noise(rng, cells * 2)
    w = np.clip((n - (1 - frac) * n.max()) / (0.15 * n.max() + 1e-9), 0, 1)[..., None]
    return (1 - w) * base + w * spot


def _floor_rays(rng, base):
    """Soft lighter stripes, as on the real light-blue floors."""
    y, x = np.mgrid[:TEX, :TEX] / TEX
    a = rng.uniform(0, math.pi)
    s = 0.5 + 0.5 * np.cos(2 * math.pi * (2 * (x * math.cos(a) + y * math.sin(a))
                                          + 0.3 * _noise(rng, 4)))
    return base * (0.9 + 0.2 * s[..., None])


WALL_COLOURS = {
    "green": (88, 124, 52), "red": (170, 72, 50), "salmon": (225, 118, 100),
    "grey": (118, 128, 150), "yellow": (205, 170, 45), "sand": (200, 160, 110),
}
FLOOR_STYLES = ("sand", "orange", "ice", "sky_rays", "planks")


def _floor_texture(rng, style):
    if style == "sand":
        return _floor_spots(rng, _jitter(rng, (230, 182, 130)), _jitter(rng, (205, 150, 100)), 12, 0.3)
    if style == "orange":
        return _floor_spots(rng, _jitter(rng, (232, 170, 45)), _jitter(rng, (200, 130, 40)), 8, 0.3)
    if style == "ice":
        return _floor_spots(rng, _jitter(rng, (160, 210, 225)), (240, 250, 252), 16, 0.3)
    if style == "sky_rays":
        return _floor_rays(rng, _jitter(rng, (110, 195, 235)))
    t = _floor_rays(rng, _jitter(rng, (225, 175, 60)))          # planks
    t[:, ::16] *= 0.85
    return t


def _wall_texture(rng, family, colour):
    base = _jitter(rng, WALL_COLOURS[colour])
    t = {"circuit": _wall_circuit, "bricks": _wall_bricks, "blocks": _wall_blocks}[family](rng, base)
    t[-3:] *= 0.55                                  # dark skirting where the wall meets the floor
    return t


def _mipmaps(tex: np.ndarray) -> np.ndarray:
    """(TEX, TEX, 3) float -> (L, TEX, TEX, 3) uint8: box-filtered levels, each upsampled back to TEX."""
    levels, t = [], tex
    while True:
        k = TEX // t.shape[0]
        levels.append(np.repeat(np.repeat(t, k, 0), k, 1))
        if t.shape[0] == 1:
            break
        t = t.reshape(t.shape[0] // 2, 2, t.shape[1] // 2, 2, 3).mean((1, 3))
    return np.clip(np.stack(levels) + 0.5, 0, 255).astype(np.uint8)


def make_textures(rng: np.random.Generator, n_regions: int) -> tuple[np.ndarray, np.ndarray]:
    """Per region (0 = corridors) a wall and a floor texture; the corridors prefer green circuits."""
    families = ["circuit", "bricks", "blocks"]
    colours = list(WALL_COLOURS)
    walls, floors = [], []
    used_walls: set[tuple[str, str]] = set()
    used_floors: set[str] = set()
    for r in range(n_regions):
        while True:
            if r == 0 and rng.random() < 0.6:
                pick = ("circuit", "green")
            else:
                pick = (families[rng.integers(len(families))], colours[rng.integers(len(colours))])
            if pick not in used_walls:
                break
        used_walls.add(pick)
        while True:
            style = FLOOR_STYLES[rng.integers(len(FLOOR_STYLES))]
            if style not in used_floors or len(used_floors) == len(FLOOR_STYLES):
                break
        used_floors.add(style)
        walls.append(_mipmaps(_wall_texture(rng, *pick)))
        floors.append(_mipmaps(_floor_texture(rng, style)))
    return np.stack(walls), np.stack(floors)


def make_maze(rng: np.random.Generator) -> Maze:
    wall, region = make_layout(rng)
    wall_tex, floor_tex = make_textures(rng, int(region.max()) + 1)
    return Maze(wall, region, wall_tex, floor_tex)


# ==================================================================================================
# Camera path
# ==================================================================================================

def cell_centre(iy: int, ix: int) -> np.ndarray:
    """World (x, y) of a cell's centre."""
    return np.array([ORIGIN + (ix + 0.5) * CELL, ORIGIN + (iy + 0.5) * CELL])


def _smooth_route(cells: list[tuple[int, int]]) -> np.ndarray:
    """Dense polyline (M, 2) through cell centres with every corner rounded by a quadratic Bezier
    from the middle of the entry edge to the middle of the exit edge (it stays inside the corner cell,
    at least 0.053 cells from its inner corner)."""
    c = np.array([cell_centre(*cl) for cl in cells])
    mids = (c[:-1] + c[1:]) / 2
    pts = [c[:1]]
    t = np.linspace(0, 1, 9)[1:, None]
    for i in range(1, len(c) - 1):
        a, b = mids[i - 1], mids[i]
        pts.append(a[None])
        pts.append((1 - t) ** 2 * a + 2 * t * (1 - t) * c[i] + t ** 2 * b)
    pts.append(c[-1:])
    pts = np.concatenate(pts)
    return pts[np.r_[True, np.any(np.diff(pts, axis=0) != 0, axis=1)]]  # no repeated points


def _wrap(a):
    return (np.asarray(a) + math.pi) % (2 * math.pi) - math.pi


def camera_path(maze: Maze, rng: np.random.Generator, n_views: int = N_VIEWS) -> np.ndarray:
    """(n_views, 5) float32 cameras x, y, z, yaw, pitch; see the module docstring."""
    floor = [tuple(int(v) for v in c) for c in maze.floor_cells()]
    here = floor[rng.integers(len(floor))]
    pos = cell_centre(*here)
    yaw = rng.uniform(-math.pi, math.pi)
    speed = WALK_STEP * rng.uniform(0.9, 1.05)
    poses = [(pos[0], pos[1], yaw)]

    def turn_to(target: float) -> None:                   # in place, at the real turn rate
        nonlocal yaw
        while len(poses) < n_views:
            d = float(_wrap(target - yaw))
            if abs(d) < 1e-9:
                return
            yaw += float(np.clip(d, -TURN_STEP, TURN_STEP))
            poses.append((pos[0], pos[1], yaw))

    for _ in range(INITIAL_TURN_STEPS):
        if len(poses) >= n_views:
            break
        yaw += TURN_STEP
        poses.append((pos[0], pos[1], yaw))

    visits = np.zeros(maze.wall.shape, int)
    # a dead end counts as visited once more: entering one costs a stop to turn around
    open_sides = np.zeros((GRID + 2, GRID + 2), int)
    open_sides[1:-1, 1:-1] = ~maze.wall
    dead_end = (open_sides[:-2, 1:-1] + open_sides[2:, 1:-1] + open_sides[1:-1, :-2] + open_sides[1:-1, 2:]
                == 1).astype(int)
    visits[here] += 1
    back = None                                           # the cell the walk came from
    look = False                                          # the last leg ended with a stop to turn
    while len(poses) < n_views:
        # one leg: wander cell by cell, never stepping back (except out of a dead end) and preferring
        # the least visited neighbour; the leg ends at a dead end or, now and then, to look around
        cells = [here]
        while len(cells) < LEG_MAX_CELLS:
            c = cells[-1]
            nbrs = [(c[0] + dy, c[1] + dx) for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))
                    if 0 <= c[0] + dy < GRID and 0 <= c[1] + dx < GRID and not maze.wall[c[0] + dy, c[1] + dx]]
            forward = [nb for nb in nbrs if nb != back]
            if not forward:
                if len(cells) > 1:
                    break                                 # dead end: the next leg turns around
                forward = nbrs
            if len(cells) == 1:
                def turn(nb):
                    return abs(_wrap(math.atan2(nb[0] - c[0], nb[1] - c[1]) - yaw))
                if look:                                  # after a stop: turn into a side way (or back)
                    forward = [nb for nb in nbrs if turn(nb) > math.pi / 4] or nbrs
                else:                                     # otherwise set off, if it can, without stopping
                    forward = [nb for nb in forward if turn(nb) <= MAX_HEADING_ERROR] or forward
            least = min(visits[nb] + dead_end[nb] for nb in forward)
            choice = [nb for nb in forward if visits[nb] + dead_end[nb] == least]
            nxt = choice[rng.integers(len(choice))]
            visits[nxt] += 1
            back = c
            cells.append(nxt)
            if len(cells) == 2 and look:                  # face the new way before walking
                turn_to(math.atan2(nxt[0] - c[0], nxt[1] - c[1]))
                look = False
            if rng.random() < LOOK_AROUND_P:
                look = True
                break
        route = _smooth_route(cells)
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(route, axis=0), axis=1))])
        # drift sideways off the centre line, as the real camera does (it comes within 0.016 of walls);
        # zero at the leg's ends, at most LATERAL_DRIFT: >= 0.02 from walls, 0.023 from inner corners
        tangent = np.gradient(route, axis=0)
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
        wave = np.sin(2 * math.pi * arc / rng.uniform(0.2, 0.5) + rng.uniform(0, 2 * math.pi))
        drift = LATERAL_DRIFT * np.sin(math.pi * arc / arc[-1]) * wave
        route = route + drift[:, None] * np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(route, axis=0), axis=1))])

        def at(d: float) -> np.ndarray:
            return np.array([np.interp(d, arc, route[:, 0]), np.interp(d, arc, route[:, 1])])

        done = 0.0
        while done < arc[-1] - 1e-9 and len(poses) < n_views:
            d = at(min(done + LOOK_AHEAD, arc[-1])) - pos
            err = float(_wrap(math.atan2(d[1], d[0]) - yaw))
            if abs(err) > MAX_HEADING_ERROR:              # path doubles back: stop and turn first
                turn_to(yaw + err)
                continue
            yaw += float(np.clip(err, -TURN_STEP, TURN_STEP))
            # slow down while the view is still turning onto the path
            done = min(arc[-1], done + speed * (1 - SLOW_IN_TURNS * min(1.0, abs(err) / MAX_HEADING_ERROR)))
            pos = at(done)
            poses.append((pos[0], pos[1], yaw))
        here = cells[-1]

    out = np.zeros((n_views, 5), np.float32)
    p = np.array(poses[:n_views])
    out[:, 0:2] = p[:, 0:2]
    # wrap in float64, then keep the float32 value inside [-pi, pi] (float32(pi) > pi)
    out[:, 3] = np.clip(_wrap(p[:, 2]).astype(np.float32), -np.float32(3.1415925), np.float32(3.1415925))
    return out


# ==================================================================================================
# Rendering
# ==================================================================================================

def _rays(cameras: np.ndarray, size: int):
    """Grid-space origins and ray directions (N, W) of every image column (screen x left -> right)."""
    px = (cameras[:, 0].astype(np.float64) - ORIGIN) / CELL + 1      # (N,)
    py = (cameras[:, 1].astype(np.float64) - ORIGIN) / CELL + 1
    yaw = cameras[:, 3].astype(np.float64)
    u = ((np.arange(size) + 0.5) / size * 2 - 1) * math.tan(HFOV / 2)  # (W,)
    fx, fy = np.cos(yaw), np.sin(yaw)
    # camera right = (sin yaw, -cos yaw): yaw is counter-clockwise with x east, y north
    rx = fx[:, None] + u[None] * fy[:, None]                           # (N, W); component 1 along view
    ry = fy[:, None] - u[None] * fx[:, None]
    return np.broadcast_to(px[:, None], rx.shape), np.broadcast_to(py[:, None], rx.shape), rx, ry


def cast_walls(maze: Maze, cameras: np.ndarray, size: int = IMAGE_SIZE):
    """DDA per image column. Returns depth (N, W) of the first wall along the view axis in cells,
    side (N, W) bool (True: a north/south face), region (N, W) of the floor cell in front of the face,
    and the hit point (hx, hy) in grid coordinates (world - ORIGIN) / CELL + 1."""
    wallp = np.ones((GRID + 2, GRID + 2), bool)
    wallp[1:-1, 1:-1] = maze.wall
    regp = np.zeros((GRID + 2, GRID + 2), np.int32)
    regp[1:-1, 1:-1] = maze.region
    ox, oy, rx, ry = _rays(cameras, size)
    with np.errstate(divide="ignore"):
        ddx, ddy = np.abs(1 / rx), np.abs(1 / ry)
    mx, my = np.floor(ox).astype(int), np.floor(oy).astype(int)
    stx, sty = np.where(rx < 0, -1, 1), np.where(ry < 0, -1, 1)
    sdx = np.where(rx < 0, ox - mx, mx + 1 - ox) * ddx
    sdy = np.where(ry < 0, oy - my, my + 1 - oy) * ddy
    hit = np.zeros(rx.shape, bool)
    side = np.zeros(rx.shape, bool)
    reg = np.zeros(rx.shape, np.int32)
    for _ in range(4 * (GRID + 2)):
        go = ~hit
        if not go.any():
            break
        reg = np.where(go, regp[my, mx], reg)
        step_x = go & (sdx < sdy)
        step_y = go & ~step_x
        mx = mx + np.where(step_x, stx, 0)
        sdx = sdx + np.where(step_x, ddx, 0)
        my = my + np.where(step_y, sty, 0)
        sdy = sdy + np.where(step_y, ddy, 0)
        side = np.where(go, step_y, side)
        hit = go & wallp[my, mx] | hit
    depth = np.where(side, sdy - ddy, sdx - ddx)
    return depth, side, reg, ox + depth * rx, oy + depth * ry


def render(maze: Maze, cameras: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """(N, 5) cameras -> (N, size, size, 3) uint8 views (size even). Works in cell units on the grid
    padded by the outer wall. Every pixel becomes one index into a single table of texels (shaded
    wall mip levels, floor mip levels, the sky), then one take."""
    f32 = np.float32
    n_lev = maze.wall_textures.shape[1]
    regp = np.zeros((GRID + 2, GRID + 2), np.int32)
    regp[1:-1, 1:-1] = maze.region
    shaded = np.stack([maze.wall_textures, (maze.wall_textures * Y_SIDE_SHADE).astype(np.uint8)], 1)
    table = np.concatenate([shaded.reshape(-1, 3), maze.floor_textures.reshape(-1, 3),
                            np.array([SKY], np.uint8)])
    floor_base, sky_index = shaded.size // 3, len(table) - 1
    tan_half = math.tan(HFOV / 2)
    s = ((np.arange(size) + 0.5) / size * 2 - 1) * tan_half            # (H,) screen y, top -> bottom
    pix = 2 * tan_half / size                                          # one pixel's extent at depth 1

    # --- walls ----------------------------------------------------------------------------------------
    ox, oy, rx, ry = _rays(cameras, size)
    depth, side, reg, hx, hy = cast_walls(maze, cameras, size)         # (N, W) each
    wu = np.where(side, hx - np.floor(hx), hy - np.floor(hy))
    wu = np.where(np.where(side, ry < 0, rx > 0), 1 - wu, wu)          # texture reads left -> right
    tu = np.minimum((wu * TEX).astype(np.int32), TEX - 1)
    # mip level: log2 of the texels one pixel spans at this depth
    lw = np.clip(np.log2(np.maximum(depth * pix * TEX, 1e-9)), 0, n_lev - 1).round().astype(np.int32)
    col = (((reg * 2 + side) * n_lev + lw) * TEX * TEX + tu).astype(np.int32)  # (N, W) texel at v = 0

    # per pixel: the height h of the wall point the pixel would see; h < 0: floor, h > top: sky
    h = (EYE_HEIGHT - s.astype(f32)[None, :, None] * depth.astype(f32)[:, None, :])  # (N, H, W)
    tv = np.clip((WALL_HEIGHT - h) * f32(TEX / WALL_HEIGHT), 0, TEX - 1).astype(np.int32)
    index = col[:, None, :] + tv * TEX                                 # (N, H, W) wall texels
    half = size // 2
    top = index[:, :half]
    top[h[:, :half] > WALL_HEIGHT] = sky_index

    # --- floor: every pixel below the horizon cast onto the ground ------------------------------------
    sf = s[half:]                                                      # (Hf,) all > 0
    t = (EYE_HEIGHT / sf).astype(f32)                                  # (Hf,) depth of the ground point
    gx = ox.astype(f32)[:, None, :] + t[None, :, None] * rx.astype(f32)[:, None, :]  # (N, Hf, W)
    gy = oy.astype(f32)[:, None, :] + t[None, :, None] * ry.astype(f32)[:, None, :]
    np.clip(gx, 0, GRID + 1.999, out=gx)                              # hidden ground points may lie
    np.clip(gy, 0, GRID + 1.999, out=gy)                              # outside; only visible ones count
    cx, cy = gx.astype(np.int32), gy.astype(np.int32)
    fu = ((gx - cx) * TEX).astype(np.int32)
    fv = ((gy - cy) * TEX).astype(np.int32)
    # footprint: the larger of the across (t * pix) and the along-depth (dt/ds * pix) extents
    foot = np.maximum(EYE_HEIGHT / sf, EYE_HEIGHT / sf ** 2) * pix * TEX
    lf = np.clip(np.log2(foot), 0, n_lev - 1).round().astype(np.int32)  # (Hf,)
    findex = ((regp[cy, cx] * n_lev + lf[None, :, None]) * TEX + fv) * TEX + fu + floor_base
    bottom = index[:, half:]
    np.copyto(bottom, findex, where=h[:, half:] < 0)
    return np.take(table, index, axis=0)                               # (N, H, W, 3)


def encode_jpeg(frame: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def maze_map(maze: Maze, cell_px: int = MAP_CELL_PX) -> Image.Image:
    """Top-down map, north up: row 0 is y = +0.3, column 0 is x = -0.4 (see the module docstring)."""
    floor_rgb = maze.floor_textures[:, -1, 0, 0]                       # (R, 3) mean colours
    wall_rgb = maze.wall_textures[:, -1, 0, 0]
    grid = np.empty((GRID, GRID, 3), np.uint8)
    for iy in range(GRID):
        for ix in range(GRID):
            if not maze.wall[iy, ix]:
                grid[iy, ix] = floor_rgb[maze.region[iy, ix]]
                continue
            near = [maze.region[iy + dy, ix + dx] for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))
                    if 0 <= iy + dy < GRID and 0 <= ix + dx < GRID and not maze.wall[iy + dy, ix + dx]]
            grid[iy, ix] = wall_rgb[max(near, default=0)] * MAP_WALL_SHADE  # a room's wall if it faces one
    grid = np.repeat(np.repeat(grid[::-1], cell_px, 0), cell_px, 1)   # flip: row 0 = north
    return Image.fromarray(grid)


# ==================================================================================================
# Episodes and the command line
# ==================================================================================================

def episode_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], index]))


def make_episode(rng: np.random.Generator, n_views: int = N_VIEWS,
                 quality: int = JPEG_QUALITY) -> tuple[Maze, list[bytes], np.ndarray]:
    """One maze -> (maze, JPEG frames, cameras (n_views, 5) float32)."""
    maze = make_maze(rng)
    cameras = camera_path(maze, rng, n_views)
    frames = [encode_jpeg(f, quality) for f in render(maze, cameras)]
    return maze, frames, cameras


def write_episode(folder: str, split: str, index: int, seed: int, n_views: int, quality: int, keep: bool):
    """Build episode `index` of a split and write it and its map; returns its path and, with `keep`,
    (frames, map image) for the contact sheet. A pure function of its arguments, so any process may run it."""
    from utils.data.episodes import save_episode

    maze, frames, cameras = make_episode(episode_rng(seed, split, index), n_views, quality)
    path = os.path.join(folder, f"maze-{index:04d}.pt")
    save_episode(path, frames, cameras)
    image = maze_map(maze)
    image.save(os.path.join(folder, f"maze-{index:04d}.map.png"))
    return path, ((frames, image) if keep else None)


def write_split(out: str, split: str, count: int, seed: int, n_views: int = N_VIEWS,
                quality: int = JPEG_QUALITY, keep: int = 0, pool=None):
    """Write `count` episodes to OUT/SPLIT/maze-NNNN.pt (+ .map.png), in `pool` (a process pool's
    executor) when given. Returns the episode paths and, for the first `keep` episodes, (frames, map image)
    for a contact sheet."""
    folder = os.path.join(out, split)
    os.makedirs(folder, exist_ok=True)
    jobs = [(folder, split, i, seed, n_views, quality, i < keep) for i in range(count)]
    if pool is None:
        results = [write_episode(*job) for job in jobs]
    else:
        # Results come back in episode order whichever worker finishes first; an error in a worker (a full
        # disk) is raised here, as the same exception.
        results = list(pool.map(write_episode, *zip(*jobs))) if jobs else []
    return [path for path, _ in results], [sheet for _, sheet in results if sheet is not None]


def contact_sheet(episodes: list[tuple[list[bytes], Image.Image]], views: int = 8,
                  scale: int = 2) -> Image.Image:
    """One row per episode: `views` evenly spaced frames, then the map; everything scaled up."""
    gap = 4
    cell = IMAGE_SIZE + gap
    map_px = MAP_CELL_PX * GRID
    row_h = max(cell, map_px + gap)
    sheet = Image.new("RGB", (views * cell + map_px + gap, len(episodes) * row_h), "white")
    for r, (frames, image) in enumerate(episodes):
        for c, i in enumerate(np.linspace(0, len(frames) - 1, views).round().astype(int)):
            sheet.paste(Image.open(io.BytesIO(frames[i])).convert("RGB"), (c * cell, r * row_h))
        sheet.paste(image, (views * cell, r * row_h))
    return sheet.resize((sheet.width * scale, sheet.height * scale), Image.NEAREST)


class MazeError(Exception):
    """The output folder cannot take this run's episodes."""


def check_no_episodes(out: str) -> None:
    """Refuse split folders that already hold episodes: this run's would mix with them (an earlier run's
    higher-numbered mazes stay behind, another seed's are overwritten by number), and a user's episodes
    would be lost."""
    from utils.data.episodes import EpisodeError, list_episodes

    for split in SPLITS:
        folder = os.path.join(out, split)
        try:
            old = list_episodes(folder)
        except EpisodeError:  # no such folder, or no episode in it
            continue
        raise MazeError(f"{folder} already holds {len(old)} episode file(s), e.g. {old[0].name}; remove them or "
                        "choose another --out, so that two runs' episodes never mix")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data_samples",
                   help="output folder (gets train/ and test/); refused if its train/ or test/ already holds "
                        "episode files (*.pt, *.pt.gz): remove them first to regenerate, so runs never mix")
    count = command.number(int, 0, low_ok=True)
    p.add_argument("--train", type=count, default=16, help="number of training episodes")
    p.add_argument("--test", type=count, default=25,
                   help="number of test episodes (25 fill the largest, 5x5, test hotel)")
    p.add_argument("--seed", type=count, default=0, help="any integer >= 0")
    p.add_argument("--views", type=command.number(int, 1, low_ok=True), default=N_VIEWS, help="views per episode")
    p.add_argument("--quality", type=command.number(int, 0, low_ok=True, high=100), default=JPEG_QUALITY,
                   help="JPEG quality, 0 to 100")
    p.add_argument("--workers", type=command.number(int, 0), default=1,
                   help="processes building episodes in parallel (the files are the same bytes with any number)")
    p.add_argument("--contact-sheet", default="contact_sheet.png",
                   help="image file name (inside --out; the format follows its extension) of a sheet of the "
                        "first 4 training episodes; '' for none")
    args = p.parse_args(argv)
    sheet = args.contact_sheet
    writable = {ext for ext, kind in Image.registered_extensions().items() if kind in Image.SAVE}
    if sheet and (Path(sheet).name != sheet or Path(sheet).suffix.lower() not in writable):
        # checked before any episode is written: a failure after them would leave folders that block a rerun
        p.error(f"--contact-sheet must be an image file name (.png, .jpg, ...), written inside --out; got {sheet!r}")
    return args


def main(args: argparse.Namespace) -> None:
    import utils.data.episodes  # noqa: F401  (imports torch: keep it out of the timing)

    check_no_episodes(args.out)  # before writing anything
    start = time.perf_counter()
    n, sheet_rows = 0, []
    with contextlib.ExitStack() as stack:
        pool = None
        if args.workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            pool = stack.enter_context(ProcessPoolExecutor(max_workers=args.workers))
        for split in SPLITS:
            keep = 4 if split == "train" and args.contact_sheet else 0  # '' asks for no sheet
            paths, kept = write_split(args.out, split, getattr(args, split), args.seed, args.views,
                                      args.quality, keep, pool)
            n += len(paths)
            sheet_rows += kept
    took = time.perf_counter() - start
    if sheet_rows:
        contact_sheet(sheet_rows).save(os.path.join(args.out, args.contact_sheet))
    print(f"wrote {n} episodes to {args.out} in {took:.1f} s ({n / max(took, 1e-9):.2f} episodes/s)")


def cli(argv=None) -> int:
    """The command line: 0 on success; bad inputs (and OS errors) print one line to stderr and return 2."""
    return command.run(PROG, parse_args, main, (MazeError, OSError), argv)


if __name__ == "__main__":
    sys.exit(cli())
