"""Scoring rendering checkpoints on identical, seeded hotels of test mazes (``evaluate.py`` is its command line).

The hotels (their episodes, context views, queries and positions) are plans of ``utils.data.hotel``, drawn from
the evaluation's seed alone, so every checkpoint is scored on the same images and the same prior samples; each
plan has a donor plan (``context_swap``) that gives every maze another test maze's context frames, for the
context gain. Three references need no model: the nearest context view, the mean context image and the
dataset mean. ``run`` makes every row of one evaluation; ``utils.evaluation.report`` writes them.
"""
import hashlib
import math
import sys
import time
from typing import List, NamedTuple, Sequence

import torch

from utils.data import hotel
from utils.data.episodes import decode_pixels, to_unit
from utils.data.hotel import HotelBatch, StepPlan, build_hotels, plan_step
from utils.evaluation.trained_model import Candidate, EvaluationError, check_grids, load_candidate, unique_labels
from utils.evaluation.metrics import accumulate, finish, image_row

YAW_WEIGHT = 0.5  # world units per radian in pose_distance: a 90 degree turn ~ 0.8 units ~ 3 maze squares
NEAREST, MEAN, DATASET_MEAN = "nearest context view", "mean image", "dataset mean"
DEFAULT_QUERIES = 400  # per grid size: a 95% interval of a row's PSNR then spans a few tenths of a dB
# Frames per episode in the dataset mean, evenly spaced over the episode: the mean frame of a test set of
# thousands of episodes, without decoding every one of their frames.
DATASET_MEAN_VIEWS = 32
# Context views planned per maze; a model with C views sees the first C. Fixed, so that a model's inputs do
# not depend on the other checkpoints of the command (only one with more views than this changes them).
PLANNED_CONTEXT_VIEWS = 64



# ---- reference answers -----------------------------------------------------------------------------
def pose_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance between 7-D poses (..., 7), broadcast: ``|xy_a - xy_b| + YAW_WEIGHT * |yaw_a - yaw_b|``
    in world units, the yaw difference wrapped to [0, pi]."""
    cos_d = a[..., 3] * b[..., 3] + a[..., 4] * b[..., 4]  # cos(yaw_a - yaw_b)
    sin_d = a[..., 4] * b[..., 3] - a[..., 3] * b[..., 4]  # sin(yaw_a - yaw_b)
    return (a[..., :2] - b[..., :2]).norm(dim=-1) + YAW_WEIGHT * torch.atan2(sin_d, cos_d).abs()


def maze_contexts(batch: HotelBatch):
    """Context frames (in [0, 1]) and poses regrouped per maze: (N, M, C, 3, S, S), (N, M, C, 7)."""
    n, m = batch.query_poses.shape[:2]
    frames = to_unit(batch.context_frames).unflatten(1, (m, -1))
    return frames, batch.context_poses.unflatten(1, (m, -1))


def context_distances(batch: HotelBatch) -> torch.Tensor:
    """(N, M, C): the pose distance from each query to each context view of its own maze."""
    mazes = batch.query_poses.shape[1]
    return pose_distance(batch.query_poses[:, :, None], batch.context_poses.unflatten(1, (mazes, -1)))


def nearest_view(batch: HotelBatch) -> torch.Tensor:
    """For each query, the context image of its own maze with the nearest pose -> (N * M, 3, S, S)."""
    frames, _ = maze_contexts(batch)
    best = context_distances(batch).argmin(dim=2)  # (N, M)
    picked = torch.take_along_dim(frames, best[:, :, None, None, None, None], dim=2)  # (N, M, 1, 3, S, S)
    return picked.flatten(0, 2)


def mean_view(batch: HotelBatch) -> torch.Tensor:
    """For each query, the mean of its own maze's context images -> (N * M, 3, S, S)."""
    return maze_contexts(batch)[0].mean(dim=2).flatten(0, 1)


def dataset_mean_view(episodes: torch.Tensor, episode_means: torch.Tensor) -> torch.Tensor:
    """For each query of episode ``episodes`` (Q,), the mean frame of all the *other* test episodes (each
    episode weighs the same) -> (Q, 3, S, S). Leaving out the query's own episode keeps the reference free of
    anything the query's maze looks like; ``episode_means`` (E, 3, S, S) from ``EpisodeCache.mean_frames``."""
    others = episode_means.sum(dim=0) - episode_means[episodes]  # (Q, 3, S, S), float64: exact enough
    return (others / (len(episode_means) - 1)).float()


# ---- inputs ----------------------------------------------------------------------------------------
def evaluation_plans(seed: int, hotels: int, n_episodes: int, grid: int, context_views: int) -> List[StepPlan]:
    """The fixed hotels of one grid size: hotel i is ``plan_step(seed, i, ...)`` with one k x k hotel."""
    return [plan_step(seed, i, 0, n_episodes, grid * grid, [grid], context_views) for i in range(hotels)]


def with_context_views(plan: StepPlan, views: int) -> StepPlan:
    """The plan with only its first ``views`` context views per maze (the query, last, is kept), so
    models with fewer context views see a subset of the same views and the same queries."""
    return plan._replace(views=torch.cat([plan.views[..., :views], plan.views[..., -1:]], dim=-1))


def merged(plans: Sequence[StepPlan]) -> StepPlan:
    """Several plans of one grid size as one plan of all their hotels."""
    return StepPlan(plans[0].grid, torch.cat([p.episodes for p in plans]), torch.cat([p.views for p in plans]),
                    torch.cat([p.origin for p in plans]))


def plan_digest(plans: Sequence[StepPlan], queries=None) -> str:
    """Short hash of the episodes, view fractions and hotel positions (and of how many queries count):
    equal digests, equal inputs."""
    digest = hashlib.sha256()
    for plan in plans:
        for tensor in (plan.episodes, plan.views, plan.origin):
            digest.update(tensor.contiguous().numpy().tobytes())
    if queries is not None:
        digest.update(f"queries {queries}".encode())
    return digest.hexdigest()[:12]


def random_key(*parts) -> int:
    """A 64-bit seed hashed from ``parts``, e.g. ("swap", seed, grid, hotel): each random stream a function of
    its own key only (a hotel's donors do not depend on how many hotels are evaluated)."""
    digest = hashlib.blake2b(",".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def context_swap(plan: StepPlan, n_episodes: int, seed: int) -> StepPlan:
    """The plan of the context-swap test: the same hotels, positions, view fractions and query fractions,
    each maze's episode replaced by a *donor*, another test episode; the donors' context frames stand in
    for the real ones (:func:`swap_contexts`), while every pose stays the real one.

    Within a hotel the donors are distinct and none is the maze's own episode. They come from outside the
    hotel while the test set has episodes to spare (n >= 2 k^2), so no maze's own frames are anywhere in
    its swapped hotel; otherwise the mazes left over take a derangement of the hotel's own episodes (each
    the frames of a *different* maze of the hotel), and a GQN, which sums the hotel's views, still sees
    some of a query's own frames elsewhere in the hotel (column ``swap_same_hotel``). Needs n >= 2. The
    donors are a function of ``seed`` and the plan alone.
    """
    generator = torch.Generator().manual_seed(seed)
    donors = torch.empty_like(plan.episodes)
    for h, own in enumerate(plan.episodes):
        mazes = len(own)
        taken = set(own.tolist())
        outside = [e for e in torch.randperm(n_episodes, generator=generator).tolist() if e not in taken][:mazes]
        order = torch.randperm(mazes, generator=generator)
        # A cyclic shift along a random order of the hotel's mazes: no maze keeps its own (mazes >= 2).
        donors[h, order] = own[order.roll(-1)]
        # mazes == 1 always has an outside donor (n >= 2), so the derangement above is overwritten then.
        positions = torch.randperm(mazes, generator=generator)[:len(outside)]
        donors[h, positions] = torch.tensor(outside, dtype=donors.dtype)
    return plan._replace(episodes=donors)


def swap_contexts(batch: HotelBatch, donor: HotelBatch) -> HotelBatch:
    """``batch`` with the context frames of ``donor`` (the batch of ``context_swap``'s plan, built with the
    same view counts and image size): the same layout, origins, context and query poses and query
    frames, only the context frames changed."""
    if donor.context_frames.shape != batch.context_frames.shape:
        raise ValueError(f"donor frames {tuple(donor.context_frames.shape)} do not match the batch's "
                         f"{tuple(batch.context_frames.shape)}")
    return batch._replace(context_frames=donor.context_frames)


def donors_in_hotel(plan: StepPlan, donors: StepPlan) -> torch.Tensor:
    """Per maze (H * M,), whether its donor is another maze of its own hotel."""
    return (donors.episodes[:, :, None] == plan.episodes[:, None, :]).any(dim=2).flatten()


class EpisodeCache(hotel.EpisodeCache):
    """The test episodes (``utils/data/hotel.py``), and the mean frame of each for the ``dataset mean`` reference."""

    def mean_frames(self, img_size: int) -> torch.Tensor:
        """Per episode, the mean of ``DATASET_MEAN_VIEWS`` evenly spaced frames in [0, 1] -> (E, 3, S, S)
        float64. Reads every episode of the directory."""
        means = []
        for index in range(len(self)):
            episode = self(index)
            n = len(episode.frames)
            picks = torch.linspace(0, n - 1, min(n, DATASET_MEAN_VIEWS)).round().long().unique()
            means.append(decode_pixels(episode, picks, img_size).double().mean(dim=0) / 255)
        return torch.stack(means)


# ---- evaluation ------------------------------------------------------------------------------------
class Chunk(NamedTuple):
    """Hotels evaluated in one forward pass."""
    plan: StepPlan  # their plan (with the evaluated model's context views)
    batch: HotelBatch
    swapped: HotelBatch  # ``batch`` with every maze's context frames from its donor (``swap_contexts``)
    same_hotel: torch.Tensor  # (N * M,) bool: the donor is a maze of the query's own hotel
    noise_seed: int  # the prior samples of this chunk, the same with the real and the swapped frames
    hotel: torch.Tensor  # (N * M,) each query's hotel, numbered within the grid size: the bootstrap's clusters



@torch.no_grad()
def evaluate_model(candidate: Candidate, chunks, queries: int, device, progress=None) -> dict:
    """Metrics of one model on one grid size's chunks, over their first ``queries`` queries. The prior
    samples of a chunk are drawn from its ``noise_seed``, so they also depend on how many hotels a chunk
    holds (``--batch_size``), and the views generated from the real and from the swapped context frames
    share them."""
    model, total, seconds = candidate.model, {}, 0.0
    for chunk in chunks:
        started = time.perf_counter()  # model time only: decoding the views is not the model's
        context_frames, context_poses, query_frames, query_poses, origin, grid = chunk.batch.model_inputs(device)
        swapped_frames = to_unit(chunk.swapped.context_frames.to(device))
        r = model.represent(context_frames, context_poses, query_poses, origin, grid)  # (N * M, r_dim)
        r_swapped = model.represent(swapped_frames, context_poses, query_poses, origin, grid)
        x, v = query_frames.flatten(0, 1), query_poses.flatten(0, 1)  # (N * M, 3, S, S), (N * M, 7)
        torch.manual_seed(chunk.noise_seed)
        accumulate(total, image_row(model.generate(v, r), x))
        torch.manual_seed(chunk.noise_seed)  # the same samples: only the context frames differ
        accumulate(total, image_row(model.generate(v, r_swapped), x, "swap_"))
        losses = model.elbo(x, v, r, candidate.sigma)  # the training loss, per image
        accumulate(total, {"neg_elbo": losses.loss, "kl": losses.kl, "swap_same_hotel": chunk.same_hotel,
                           "hotel": chunk.hotel})
        accumulate(total, image_row(model.reconstruct(x, v, r), x, "rec_"))
        seconds += time.perf_counter() - started
        if progress is not None:
            progress.update(1)
    row = finish(total, queries)
    size = candidate.img_size
    row.update(model=candidate.label, img_size=size, context_views=candidate.context_views,
               steps=candidate.steps, train_grids=" ".join(map(str, candidate.train_grids)),
               sigma=candidate.sigma, bits_per_dim=row["neg_elbo"] / (3 * size * size * math.log(2)),
               seconds=seconds)
    return row


def evaluate_references(chunks, episode_means: torch.Tensor, queries: int, progress=None) -> List[dict]:
    """Rows of the references, scored like the models, with their own context frames and the swapped ones."""
    names = (NEAREST, MEAN, DATASET_MEAN)
    totals, seconds = {name: {} for name in names}, dict.fromkeys(names, 0.0)
    for chunk in chunks:
        truth = to_unit(chunk.batch.query_frames.flatten(0, 1))
        episodes = chunk.plan.episodes.flatten()  # the query mazes' episodes: the swap keeps them
        answers = ((NEAREST, nearest_view), (MEAN, mean_view),
                   (DATASET_MEAN, lambda batch: dataset_mean_view(episodes, episode_means)))
        for name, answer in answers:
            started = time.perf_counter()
            accumulate(totals[name], image_row(answer(chunk.batch), truth))
            accumulate(totals[name], image_row(answer(chunk.swapped), truth, "swap_"))
            accumulate(totals[name], {"swap_same_hotel": chunk.same_hotel, "hotel": chunk.hotel})
            seconds[name] += time.perf_counter() - started
        if progress is not None:
            progress.update(1)
    return [dict(finish(total, queries), model=name, seconds=seconds[name])
            for name, total in totals.items()]


def workload(args, grid: int):
    """(hotels, queries) of a grid size: ``--queries`` N from ceil(N / k^2) hotels, or ``--episodes`` hotels
    and all their k^2 queries each."""
    if args.episodes is not None:
        return args.episodes, args.episodes * grid * grid
    return math.ceil(args.queries / (grid * grid)), args.queries


def check_episodes(n_episodes: int, directory) -> None:
    if n_episodes < 2:
        raise EvaluationError(f"{directory} holds {n_episodes} episode; the evaluation needs at least 2 (the "
                              f"context swap and the dataset mean take the views of another episode)")


def prepare(args):
    """The test episodes and the checkpoints, checked against the grid sizes: (EpisodeCache, candidates)."""
    check_grids(args.grids, None, (), args.test_data_dir)  # before any slow loading
    load = EpisodeCache(args.test_data_dir)
    candidates = [load_candidate(path, args.device, args.sigma) for path in args.saved_model]
    unique_labels(candidates)
    check_episodes(len(load), args.test_data_dir)
    check_grids(args.grids, len(load), candidates, args.test_data_dir)
    return load, candidates


def run(args, load: EpisodeCache, candidates: Sequence[Candidate]) -> List[dict]:
    """All rows (models and references, every grid size) of one evaluation."""
    from tqdm import tqdm

    device = args.device
    planned_views = max([PLANNED_CONTEXT_VIEWS] + [c.context_views for c in candidates])
    settings = sorted({(c.img_size, c.context_views) for c in candidates})  # one set of references each
    episode_means = {}  # per image size, for the dataset mean

    def chunks(grid, plans, donors, size, views, raw):
        for start in range(0, len(plans), args.batch_size):
            part = slice(start, start + args.batch_size)
            plan = merged([with_context_views(p, views) for p in plans[part]])
            donor = merged([with_context_views(p, views) for p in donors[part]])
            batch = build_hotels(plan, load.views(size), raw)
            swapped = swap_contexts(batch, build_hotels(donor, load.views(size), raw))
            # The chunk's first hotel keys its prior samples: every model draws the same ones for a chunk.
            noise_seed = random_key("noise", args.seed, grid, start)
            yield Chunk(plan, batch, swapped, donors_in_hotel(plan, donor), noise_seed, batch.query_hotels(start))

    n_chunks = sum(math.ceil(workload(args, grid)[0] / args.batch_size) for grid in args.grids)
    rows = []
    with tqdm(total=n_chunks * (len(candidates) + len(settings)), desc="evaluating",
              unit="batch", file=sys.stderr, dynamic_ncols=True) as progress:
        for grid in args.grids:
            hotels, queries = workload(args, grid)
            plans = evaluation_plans(args.seed, hotels, len(load), grid, planned_views)
            donors = [context_swap(plan, len(load), random_key("swap", args.seed, grid, i))
                      for i, plan in enumerate(plans)]
            common = dict(grid=grid, hotels=len(plans), inputs=plan_digest(plans + donors, queries))
            for candidate in candidates:
                progress.set_postfix_str(f"{candidate.label} k={grid}")
                batches = chunks(grid, plans, donors, candidate.img_size, candidate.context_views,
                                 candidate.raw_poses)
                rows.append({**evaluate_model(candidate, batches, queries, device, progress), **common})
            for size, views in settings:
                if size not in episode_means:
                    progress.set_postfix_str(f"dataset mean {size}px")
                    episode_means[size] = load.mean_frames(size)
                suffix = f" ({size}px, {views} views)" if len(settings) > 1 else ""
                for row in evaluate_references(chunks(grid, plans, donors, size, views, False), episode_means[size],
                                               queries, progress):
                    row.update(common, model=row["model"] + suffix, img_size=size, context_views=views)
                    rows.append(row)
    return rows
