"""Hotels: k x k distinct mazes side by side in one world, and the batches a training step sees.

The one place that maps camera poses to world coordinates. A maze's cameras walk inside
``POSE_EXTENT`` (real DeepMind Lab mazes: 7 cells of 0.1 spanning [-0.4, 0.3] in x and y). Maze
(i, j) of a hotel whose lower-left corner is ``origin`` owns the world cell
``origin + CELL * (i, j) + [0, CELL]^2`` and, by default, its pose extent is stretched linearly
onto that whole cell, so the 5 x 5 nodes of a maze cover where its cameras walk. ``raw=True``
reproduces the original implementation instead: poses keep their units around the cell centre and
touch mostly the central nodes.

What a step sees is a pure function of ``(seed, step, rank)`` (``plan_step``), so a resumed run
sees exactly the batches the uninterrupted run would have.
"""
import hashlib
import itertools
import warnings
from typing import NamedTuple, Sequence

import torch

from models.structure import CELL
from utils.data.episodes import EpisodeError, decode_pixels, list_episodes, load_episode, pose_vectors, to_unit

POSE_EXTENT = (-0.4, 0.3)
WORLD_MAZES = 5  # the world holds 5 x 5 mazes (10 x 10 units, as in the original)


def extent_warning(paths, probe: int = 3):
    """A warning when the first readable of ``paths`` has cameras outside ``POSE_EXTENT`` (beyond a tenth of
    a maze square): such poses would be stretched into a neighbouring maze's cell. None when they fit (the
    real and the built-in episodes do), or when none of the first ``probe`` files can be read."""
    for path in paths[:probe]:
        try:
            xy = load_episode(path).cameras[:, :2]
        except EpisodeError:
            continue
        low, high = float(xy.min()), float(xy.max())
        if low < POSE_EXTENT[0] - 0.01 or high > POSE_EXTENT[1] + 0.01:
            return (f"{path}: camera x, y span [{low:.3g}, {high:.3g}], outside the maze extent {list(POSE_EXTENT)} "
                    f"that is stretched onto a maze's cell, so views would land in other mazes' cells; rescale "
                    f"the data, or use --raw_poses")
        return None
    return None


def maze_to_world(xy: torch.Tensor, maze_ij: torch.Tensor, origin: torch.Tensor, raw: bool = False) -> torch.Tensor:
    """Camera x, y (..., 2) inside maze ``maze_ij`` (..., 2) of a hotel at ``origin`` (..., 2) -> world x, y."""
    cell_corner = origin + CELL * maze_ij
    if raw:
        return cell_corner + CELL / 2 + xy
    low, high = POSE_EXTENT
    return cell_corner + (xy - low) * (CELL / (high - low))


def world_poses(cameras: torch.Tensor, maze_ij: torch.Tensor, origin: torch.Tensor, raw: bool = False):
    """Cameras (..., 5) of a maze -> 7-D model poses (..., 7) with x, y in world coordinates."""
    poses = pose_vectors(cameras)
    xy = maze_to_world(poses[..., :2], maze_ij, origin, raw)
    return torch.cat([xy, poses[..., 2:]], dim=-1)


def maze_cells(grid: int) -> torch.Tensor:
    """(i, j) of each maze of a k x k hotel, maze m = j * k + i -> (k * k, 2)."""
    index = torch.arange(grid * grid)
    return torch.stack([index % grid, index // grid], dim=-1).float()


class StepPlan(NamedTuple):
    grid: int
    episodes: torch.Tensor  # (H, M) distinct episode indices per hotel, M = grid ** 2
    views: torch.Tensor  # (H, M, C + 1) in [0, 1): which frames of each episode (view_indices); last = query
    origin: torch.Tensor  # (H, 2) lower-left world corner of each hotel


MAX_SEED = 2 ** 31 - 1  # the command lines' bound: a seed also seeds torch.Generators directly


def step_key(seed: int, step: int, rank: int) -> int:
    """A 64-bit key per (seed, step, rank): a hash, so two runs with different seeds share no step however
    long they train (a linear mix of the three would repeat once the steps reach its multiplier)."""
    digest = hashlib.blake2b(f"{seed},{step},{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(step_key(seed, step, rank))


def plan_step(seed: int, step: int, rank: int, n_episodes: int, batch_size: int, grids: Sequence[int],
              context_views: int, world: int = WORLD_MAZES) -> StepPlan:
    """Grid size, episodes, views and hotel positions of one step: ``batch_size`` mazes (one query
    each) grouped into ``batch_size // k^2`` hotels of k x k distinct episodes."""
    g = step_generator(seed, step, rank)
    grid = grids[int(torch.randint(len(grids), (), generator=g))]
    mazes = grid * grid
    hotels = batch_size // mazes
    if hotels < 1 or mazes > n_episodes or grid > world:
        raise ValueError(f"cannot build a {grid}x{grid} hotel from batch {batch_size}, {n_episodes} episodes, "
                         f"world {world}x{world}")
    episodes = torch.rand(hotels, n_episodes, generator=g).argsort(dim=1)[:, :mazes]
    views = torch.rand(hotels, mazes, context_views + 1, generator=g)
    origin = -CELL / 2 + torch.rand(hotels, 2, generator=g) * CELL * (world - grid)
    return StepPlan(grid, episodes, views, origin)


class HotelBatch(NamedTuple):
    """One step's tensors. N hotels, M = k^2 mazes each, C context views per maze, S image size.

    Frames stay uint8 pixels until ``model_inputs``: a quarter of float32's bytes to pass from a loader
    worker, pin and copy to the GPU, which makes them floats itself. Every tensor is contiguous, so that
    once pinned its copy to the GPU is asynchronous."""
    context_frames: torch.Tensor  # (N, M * C, 3, S, S) uint8
    context_poses: torch.Tensor  # (N, M * C, 7) world coordinates
    query_frames: torch.Tensor  # (N, M, 3, S, S) uint8
    query_poses: torch.Tensor  # (N, M, 7)
    origin: torch.Tensor  # (N, 2)
    grid: int
    bad_files: tuple  # damaged episodes met during this step (replaced by others)

    def model_inputs(self, device):
        """Tensors moved to ``device`` in the order of ``SceneModel.forward``'s first six arguments, frames
        as float32 in [0, 1]."""
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return (to_unit(move(self.context_frames)), move(self.context_poses), to_unit(move(self.query_frames)),
                move(self.query_poses), move(self.origin), self.grid)

    def query_hotels(self, first: int = 0) -> torch.Tensor:
        """Each query's hotel (N * M,), in the order of ``query_frames.flatten(0, 1)``, this batch's hotels
        numbered from ``first``: the clusters the evaluations' bootstrap resamples."""
        hotels, mazes = self.query_frames.shape[:2]
        return torch.arange(first, first + hotels).repeat_interleave(mazes)


def view_indices(fractions: Sequence[float], n: int) -> list:
    """Distinct frame indices (of ``n``) for planned views (C contexts, then the query), drawn without
    replacement as DeepMind's data reader draws them: the query never repeats a context view. The query
    draws first and the contexts in order, each the ``floor(f * left)``-th of the frames not drawn yet, so a
    prefix of the contexts (evaluate.py gives models with fewer views the first C) keeps its frames and the
    query. An episode with fewer frames than views starts a new round once all are drawn."""
    order = [len(fractions) - 1, *range(len(fractions) - 1)]
    indices, left = [0] * len(fractions), []
    for i in order:
        if not left:
            left = list(range(n))
        j = min(int(fractions[i] * len(left)), len(left) - 1)
        left[j], left[-1] = left[-1], left[j]  # swap-remove: the rest stay undrawn, in some order
        indices[i] = left.pop()
    return indices


def episode_views(episode, fractions: torch.Tensor, img_size: int):
    """The planned views of an episode (``view_indices`` of ``fractions`` in [0, 1)): uint8 pixels
    (V, 3, S, S) and their cameras (V, 5). EpisodeError if one of these views is damaged."""
    indices = view_indices(fractions.tolist(), len(episode.frames))
    return decode_pixels(episode, indices, img_size), torch.as_tensor(episode.cameras)[indices]


class EpisodeCache:
    """``load(index) -> Episode`` over a directory, each file read once (evaluation reads the same test episodes
    for every model and grid size); ``views(img_size)`` is ``build_hotels``'s reader of their planned views."""

    def __init__(self, directory):
        self.paths = list_episodes(directory)
        self.episodes = {}

    def __len__(self):
        return len(self.paths)

    def __call__(self, index: int):
        if index not in self.episodes:
            self.episodes[index] = load_episode(self.paths[index])
        return self.episodes[index]

    def views(self, img_size: int):
        return lambda index, fractions, taken=None: episode_views(self(index), fractions, img_size)


def build_hotels(plan: StepPlan, views, raw: bool = False) -> HotelBatch:
    """Decode the planned views. ``views(episode_index, fractions, taken) -> (pixels, cameras)``, as
    ``episode_views`` gives them; ``taken`` holds the episodes of the hotel so far, so that a reader that
    substitutes a damaged episode picks one the hotel does not hold yet (and adds it)."""
    hotels, mazes, _ = plan.views.shape
    cells = maze_cells(plan.grid)
    context_frames, context_poses, query_frames, query_poses = [], [], [], []
    for h in range(hotels):
        taken = set(plan.episodes[h].tolist())
        for m in range(mazes):
            frames, cameras = views(int(plan.episodes[h, m]), plan.views[h, m], taken)  # (C + 1, 3, S, S), query last
            poses = world_poses(cameras, cells[m], plan.origin[h], raw)
            context_frames.append(frames[:-1])
            query_frames.append(frames[-1])
            context_poses.append(poses[:-1])
            query_poses.append(poses[-1])
    # cat and stack make every tensor contiguous: pinned, its copy to the GPU is then asynchronous (a
    # strided one is copied through a pageable temporary, and a copy from pageable memory may wait for
    # the GPU to finish its queued work).
    image = query_frames[0].shape
    return HotelBatch(torch.cat(context_frames).view(hotels, -1, *image), torch.cat(context_poses).view(hotels, -1, 7),
                      torch.stack(query_frames).view(hotels, mazes, *image),
                      torch.stack(query_poses).view(hotels, mazes, 7), plan.origin, plan.grid, ())


class HotelSteps(torch.utils.data.Dataset):
    """Map-style dataset whose item ``step`` is that step's whole batch (use ``batch_size=None``).

    A damaged episode (one that cannot be read, or whose planned views cannot be) is replaced by the
    next good one and reported in ``HotelBatch.bad_files`` (once per file and worker), so the training
    loop can count and warn; nothing else changes.
    """

    def __init__(self, directory, img_size: int, batch_size: int, grids: Sequence[int], context_views: int,
                 seed: int, rank: int = 0, raw_poses: bool = False, world: int = WORLD_MAZES):
        self.paths = list_episodes(directory)
        self.img_size, self.batch_size, self.grids = img_size, batch_size, tuple(grids)
        self.context_views, self.seed, self.rank = context_views, seed, rank
        self.raw_poses, self.world = raw_poses, world
        self.bad = set()

    def __len__(self):
        return 2 ** 62  # indexed by step; the sampler decides which steps

    def plan(self, step: int) -> StepPlan:
        return plan_step(self.seed, step, self.rank, len(self.paths), self.batch_size, self.grids,
                         self.context_views, self.world)

    def __getitem__(self, step: int) -> HotelBatch:
        newly_bad = []

        def views(index, fractions, taken):
            # A file is tried again every time it is drawn, even if it failed before: a partly damaged
            # one fails only for some views, and what a step sees must not depend on the steps this
            # worker built before it. self.bad only keeps a file from being reported twice.
            # Another episode than the hotel's own where there is one; a repeat only if no other is readable
            # (a folder of exactly k^2 episodes, one damaged).
            n = len(self.paths)
            others = lambda: ((index + offset) % n for offset in range(1, n))  # noqa: E731 - lazy: n may be 10^6
            for candidate in itertools.chain([index], (c for c in others() if c not in taken),
                                             (c for c in others() if c in taken)):
                path = self.paths[candidate]
                try:
                    found = episode_views(load_episode(path), fractions, self.img_size)
                except EpisodeError as error:
                    if path not in self.bad:
                        self.bad.add(path)
                        newly_bad.append(str(path))
                        warnings.warn(f"skipping damaged episode: {error}")
                    continue
                taken.add(candidate)
                return found
            raise EpisodeError(f"every episode in {self.paths[0].parent} is damaged")

        batch = build_hotels(self.plan(step), views, self.raw_poses)
        return batch._replace(bad_files=tuple(newly_bad))


def step_loader(steps: HotelSteps, indices: Sequence[int], workers: int, pin_memory: bool, worker_init_fn=None):
    """The training loader: item ``i`` is step ``indices[i]``'s whole batch, built ``workers`` processes
    ahead and, for a GPU, in pinned memory so the copy can overlap compute.

    A run iterates it once, so its workers live for the whole run anyway: persistent workers would change
    nothing."""
    return torch.utils.data.DataLoader(steps, batch_size=None, sampler=indices, num_workers=workers,
                                       pin_memory=pin_memory, worker_init_fn=worker_init_fn)
