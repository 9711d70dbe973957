"""Evaluate GEN and GQN checkpoints per hotel size on identical, seeded inputs.

For every grid size k, ``--queries`` N query views (one per maze) come from ceil(N / k^2) hotels of k x k
distinct episodes, each drawn from all test episodes; hotel i (its episodes, context views, queries and
position) is ``utils.data.hotel.plan_step(seed, i, ...)``, independent of the models, so every checkpoint is
scored on the same images (a model with C context views sees the first C of the ``PLANNED_CONTEXT_VIEWS``
planned per maze) and the same prior samples. When N is not a multiple of k^2, the last hotel's first
queries make up the count. Per model and k the table holds:

* ``neg_elbo``: -ELBO in nats per query image (``nll + kl``), the training loss at the checkpoint's
  final pixel sigma (column ``sigma``). The likelihood is a continuous Gaussian, so this is a *density*
  (it can be negative) and only comparable between runs at the same sigma. ``bits_per_dim`` =
  ``neg_elbo / (3 S^2 ln 2)``; ``kl`` in nats per image.
* ``mse`` / ``psnr`` / ``ssim`` of the view *generated* from the prior (the model never sees the query
  image) against the ground truth, pixels in [0, 1]; ``mse`` is the mean over all queries and pixels
  and ``psnr = -10 log10(mse)`` of that same row; ``psnr_lo`` / ``psnr_hi`` its 95% percentile bootstrap
  interval over queries (``utils.evaluation.bootstrap``). ``rec_*``: the same for the posterior reconstruction (the
  model sees the query image: an upper bound on what the representation allows).
* ``context_gain_db``: ``psnr`` minus ``swap_psnr``, the PSNR of the same model on the same queries, with
  the same poses and prior samples, when every maze's context *frames* are those of another test maze
  (:func:`context_swap`); ``context_gain_lo`` / ``_hi`` its paired bootstrap interval. A model that ignores
  its context views scores exactly 0; a gain above 0 means the views of the maze itself helped.
  ``swap_same_hotel``: the share of mazes whose substitute views come from another maze of their own hotel
  (only when the test set has fewer than 2 k^2 episodes; see :func:`context_swap`).
* three references that need no model: ``nearest context view`` (copy the context image of the query's
  own maze whose pose is nearest, see :func:`pose_distance`), ``mean image`` (the mean of the query
  maze's context images) and ``dataset mean`` (the mean frame of the *other* test episodes: it uses no
  context, so its context gain is exactly 0).

Usage::

    python evaluate.py --saved_model runs/gen/checkpoint.pt --saved_model runs/gqn/checkpoint.pt \\
        --test_data_dir data_samples/test --grids 1 2 3 4 5 --out results/eval
"""
import argparse
import csv
import hashlib
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from utils import command
from utils.data import hotel
from utils.atomic import atomic_path
from utils.evaluation.bootstrap import bootstrap_interval
from utils.checkpoint import CheckpointError
from utils.data.episodes import EpisodeError, decode_pixels, to_unit
from utils.data.hotel import MAX_SEED, WORLD_MAZES, HotelBatch, StepPlan, build_hotels, plan_step
from utils.evaluation.trained_model import DEFAULT_SIGMA, Candidate, load_candidate

YAW_WEIGHT = 0.5  # world units per radian in pose_distance: a 90 degree turn ~ 0.8 units ~ 3 maze squares
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Wang et al. (2004)
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2  # (K * data range)^2 with data range 1
NEAREST, MEAN, DATASET_MEAN = "nearest context view", "mean image", "dataset mean"
DEFAULT_QUERIES = 400  # per grid size: a 95% interval of a row's PSNR then spans a few tenths of a dB
# Frames per episode in the dataset mean, evenly spaced over the episode: the mean frame of a test set of
# thousands of episodes, without decoding every one of their frames.
DATASET_MEAN_VIEWS = 32
# Context views planned per maze; a model with C views sees the first C. Fixed, so that a model's inputs do
# not depend on the other checkpoints of the command (only one with more views than this changes them).
PLANNED_CONTEXT_VIEWS = 64
COLUMNS = ("model", "grid", "hotels", "queries", "img_size", "context_views", "sigma", "neg_elbo",
           "bits_per_dim", "kl", "mse", "psnr", "ssim", "rec_mse", "rec_psnr", "rec_ssim", "seconds", "steps",
           "train_grids", "inputs",
           # added with --queries: new columns go last, so readers of the old ones are unaffected
           "psnr_lo", "psnr_hi", "context_gain_db", "context_gain_lo", "context_gain_hi", "swap_psnr",
           "swap_same_hotel")


class EvaluationError(ValueError):
    """A bad command line or input; printed as one line."""


# ---- image metrics ---------------------------------------------------------------------------------
def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 2-D Gaussian (size, size)."""
    ticks = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    line = torch.exp(-ticks ** 2 / (2 * sigma ** 2))
    line = line / line.sum()
    return (line[:, None] * line[None, :]).float()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (B,) of images (B, C, H, W) in [0, 1] (Wang et al. 2004).

    Local means, variances and covariance under an 11 x 11 Gaussian window (sigma 1.5), valid positions
    only; per position ``(2 mu_x mu_y + C1)(2 cov + C2) / ((mu_x^2 + mu_y^2 + C1)(var_x + var_y + C2))``,
    averaged over positions and channels.
    """
    assert x.shape == y.shape and x.dim() == 4, f"ssim needs two (B, C, H, W) batches, got {x.shape}, {y.shape}"
    x, y = x.double(), y.double()  # E[x^2] - E[x]^2 cancels badly in float32 against C2 ~ 1e-3
    channels = x.shape[1]
    size = min(SSIM_WINDOW, *x.shape[-2:])
    window = gaussian_window(size).to(x)[None, None].expand(channels, 1, size, size)
    blur = lambda t: F.conv2d(t, window, groups=channels)  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
             / ((mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (var_x + var_y + SSIM_C2)))
    return index.flatten(1).mean(1).float()


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]."""
    return -10 * math.log10(mse) if mse > 0 else math.inf


# The bootstrap statistics, on resamples of per-query MSEs: the same formulas as the rows' own values, so
# that an interval brackets the value it belongs to (a mean of per-query PSNRs would not).
def psnr_statistic(mse: torch.Tensor) -> torch.Tensor:
    """PSNR of the mean MSE of each resample: (B, Q) -> (B,)."""
    return -10 * torch.log10(mse.mean(dim=1))


def gain_statistic(paired: torch.Tensor) -> torch.Tensor:
    """Context gain of each resample of paired (own-context, swapped-context) MSEs: (B, Q, 2) -> (B,)."""
    own, swapped = paired.mean(dim=1).unbind(-1)
    return 10 * torch.log10(swapped) - 10 * torch.log10(own)


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


def nearest_view(batch: HotelBatch) -> torch.Tensor:
    """For each query, the context image of its own maze with the nearest pose -> (N * M, 3, S, S)."""
    frames, poses = maze_contexts(batch)
    distance = pose_distance(batch.query_poses[:, :, None], poses)  # (N, M, C)
    best = distance.argmin(dim=2)  # (N, M)
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


# ---- models: utils/evaluation/trained_model.py ----------------------------------------------------------


def unique_labels(candidates: Sequence[Candidate]) -> None:
    seen: Dict[str, int] = {}
    for candidate in candidates:
        seen[candidate.label] = seen.get(candidate.label, 0) + 1
        if seen[candidate.label] > 1:
            candidate.label = f"{candidate.label} #{seen[candidate.label]}"


# ---- evaluation ------------------------------------------------------------------------------------
class Chunk(NamedTuple):
    """Hotels evaluated in one forward pass."""
    plan: StepPlan  # their plan (with the evaluated model's context views)
    batch: HotelBatch
    swapped: HotelBatch  # ``batch`` with every maze's context frames from its donor (``swap_contexts``)
    same_hotel: torch.Tensor  # (N * M,) bool: the donor is a maze of the query's own hotel
    noise_seed: int  # the prior samples of this chunk, the same with the real and the swapped frames


def image_row(generated: torch.Tensor, truth: torch.Tensor, prefix: str = "") -> dict:
    """Per-query scores of a chunk, ``{prefix}mse`` and ``{prefix}ssim`` (B,); :func:`finish` makes a row."""
    return {f"{prefix}mse": (generated - truth).pow(2).flatten(1).mean(1).double(),
            f"{prefix}ssim": ssim(generated, truth).double()}


def accumulate(total: dict, part: dict) -> None:
    """Collect per-query scores, chunk after chunk."""
    for key, value in part.items():
        total.setdefault(key, []).append(value.detach().double().cpu().reshape(-1))


def finish(total: dict, queries: int) -> dict:
    """A row from the per-query scores of its first ``queries`` queries: means, psnr of the mean mse (all
    images have the same pixel count, so that is the mean over all pixels too), and bootstrap intervals."""
    scores = {key: (torch.cat(value) if isinstance(value, list) else value.double().reshape(-1))[:queries]
              for key, value in total.items()}
    row = {"queries": len(next(iter(scores.values())))}
    for prefix in ("", "rec_", "swap_"):
        if f"{prefix}mse" in scores:
            mse = scores[f"{prefix}mse"].mean().item()
            row.update({f"{prefix}mse": mse, f"{prefix}psnr": psnr(mse),
                        f"{prefix}ssim": scores[f"{prefix}ssim"].mean().item()})
    if "mse" in scores:
        row["psnr_lo"], row["psnr_hi"] = bootstrap_interval(scores["mse"], psnr_statistic)
    if "swap_mse" in scores:
        # Paired: a resample keeps each query's two scores together, so what the queries share cancels.
        row["context_gain_db"] = row["psnr"] - row["swap_psnr"]
        row["context_gain_lo"], row["context_gain_hi"] = bootstrap_interval(
            torch.stack([scores["mse"], scores["swap_mse"]], dim=1), gain_statistic)
    for key in ("neg_elbo", "kl", "swap_same_hotel"):
        if key in scores:
            row[key] = scores[key].mean().item()
    return row


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
        accumulate(total, {"neg_elbo": losses.loss, "kl": losses.kl, "swap_same_hotel": chunk.same_hotel})
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
            accumulate(totals[name], {"swap_same_hotel": chunk.same_hotel})
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


def check_grids(grids: Sequence[int], n_episodes, candidates: Sequence[Candidate], directory) -> None:
    if n_episodes is not None and n_episodes < 2:
        raise EvaluationError(f"{directory} holds {n_episodes} episode; the evaluation needs at least 2 (the "
                              f"context swap and the dataset mean take the views of another episode)")
    for grid in grids:
        if grid < 1:
            raise EvaluationError(f"grid sizes must be at least 1, got {grid}")
        if grid > WORLD_MAZES:
            raise EvaluationError(f"grid {grid}x{grid} is too big for the world ({WORLD_MAZES}x{WORLD_MAZES} mazes)")
        if n_episodes is not None and grid * grid > n_episodes:
            raise EvaluationError(f"grid {grid}x{grid} needs {grid * grid} distinct episodes but {directory} "
                                  f"holds {n_episodes}")
        for candidate in candidates:
            if grid > candidate.max_grid:
                raise EvaluationError(f"grid {grid}x{grid} is larger than {candidate.label}'s world "
                                      f"({candidate.max_grid}x{candidate.max_grid} mazes)")


def prepare(args):
    """The test episodes and the checkpoints, checked against the grid sizes: (EpisodeCache, candidates)."""
    check_grids(args.grids, None, (), args.test_data_dir)  # before any slow loading
    load = EpisodeCache(args.test_data_dir)
    candidates = [load_candidate(path, args.device, args.sigma) for path in args.saved_model]
    unique_labels(candidates)
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
            yield Chunk(plan, batch, swapped, donors_in_hotel(plan, donor), noise_seed)

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


# ---- reports ---------------------------------------------------------------------------------------
def cell(value, digits=4) -> str:
    """A table cell: floats to ``digits`` significant digits."""
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def write_csv(rows: Sequence[dict], path: Path) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: cell(row.get(key), 8) for key in COLUMNS})


def interval(value, low, high, signed=False) -> str:
    """``value [low, high]``: dB to 2 decimals (context gains signed, to 3)."""
    if value is None:
        return ""
    form = "{:+.3f}" if signed else "{:.2f}"
    return f"{form.format(value)} [{form.format(low)}, {form.format(high)}]"


TABLES = (("ssim", "SSIM of generated views (higher is better)"),
          ("mse", "MSE of generated views (pixels in [0, 1])"),
          ("neg_elbo", "-ELBO (nats per image, lower is better)"),
          ("bits_per_dim", "-ELBO (bits per dimension)"),
          ("kl", "KL (nats per image)"),
          ("rec_psnr", "PSNR of posterior reconstructions (dB)"))
# The tables that lead, with their intervals: (title, value, low, high, signed).
INTERVAL_TABLES = (
    ("Context gain (dB): PSNR with the mazes' own context views minus with another maze's, 95% interval",
     "context_gain_db", "context_gain_lo", "context_gain_hi", True),
    ("PSNR of generated views (dB, higher is better), 95% interval", "psnr", "psnr_lo", "psnr_hi", False))


def add_table(lines: list, title: str, labels, grids, by_key, format_row) -> None:
    """Append one markdown table: grid sizes down, the labels that have a value across."""
    columns = [label for label in labels if any(format_row(by_key.get((label, g), {})) for g in grids)]
    if not columns:
        return
    lines += [f"## {title}", "", "| grid | " + " | ".join(columns) + " |", "|---:|" + "---:|" * len(columns)]
    for grid in grids:
        lines.append(f"| {grid}x{grid} | " + " | ".join(format_row(by_key.get((label, grid), {})) for label in columns)
                     + " |")
    lines.append("")


def markdown(rows: Sequence[dict], args) -> str:
    """Readable tables: the context gain, then one per metric; grid sizes down, models (and references) across."""
    labels = list(dict.fromkeys(row["model"] for row in rows))
    grids = list(dict.fromkeys(row["grid"] for row in rows))
    by_key = {(row["model"], row["grid"]): row for row in rows}
    model_rows = [row for row in rows if "neg_elbo" in row]
    sigmas = sorted({row["sigma"] for row in model_rows})
    counts = {row["grid"]: (row["queries"], row["hotels"]) for row in rows}
    sigma_source = "set by --sigma" if args.sigma is not None else "the checkpoint's final sigma"
    shared = {grid: row["swap_same_hotel"] for (label, grid), row in by_key.items() if row.get("swap_same_hotel")}
    lines = [f"# Evaluation on `{args.test_data_dir}`", "",
             "Query views per grid size (one per maze of k x k distinct episodes, seed "
             f"{args.seed}): " + ", ".join(f"{g}x{g}: {q} from {h} hotels" for g, (q, h) in counts.items())
             + "; every model sees identical inputs and prior samples (column `inputs` of metrics.csv). "
             "**Context gain**: the PSNR of a model's generated views minus its PSNR on the same queries, with the "
             "same poses and prior samples, when every maze's context frames are those of another test maze; 0 "
             "for a model that ignores its context views. Intervals: 95% percentile bootstrap over queries "
             "(paired for the gain). "
             f"Generated views are sampled from the prior; -ELBO uses a Gaussian pixel likelihood with sigma "
             f"{', '.join(cell(s) for s in sigmas)} ({sigma_source}), so it is a density, "
             f"comparable only at equal sigma. References: `{NEAREST}` copies the query maze's context "
             f"image with the nearest pose (|dxy| + {YAW_WEIGHT} |dyaw|), `{MEAN}` is the mean of its "
             f"context images, `{DATASET_MEAN}` the mean frame of the other test episodes (no context).", ""]
    if shared:
        lines += ["Too few test episodes for donors from outside every hotel: in the swap, a share of the mazes "
                  "took another maze of their own hotel's views (" + ", ".join(
                      f"{g}x{g}: {share:.0%}" for g, share in sorted(shared.items())) + "), which a model "
                  "summing all of a hotel's views (GQN) partly still sees.", ""]
    for title, key, low, high, signed in INTERVAL_TABLES:
        add_table(lines, title, labels, grids, by_key,
              lambda row: interval(row.get(key), row.get(low), row.get(high), signed))
    for key, title in TABLES:
        add_table(lines, title, labels, grids, by_key, lambda row: cell(row.get(key)))
    lines += ["## Runs", "", "| model | training steps | trained on grids | grid | queries | img_size | "
              "context views | seconds (model only) |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for row in model_rows:
        lines.append(f"| {row['model']} | {cell(row['steps'])} | {row['train_grids']} | {row['grid']} | "
                     f"{row['queries']} | {row['img_size']} | {row['context_views']} | {row['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(row["model"] for row in rows))
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4))
    for label in labels:
        series = [row for _, row in sorted((row["grid"], row) for row in rows if row["model"] == label)]
        grids = [row["grid"] for row in series]
        reference = "neg_elbo" not in series[0]
        line, = left.plot(grids, [row["psnr"] for row in series], "--" if reference else "-o", label=label,
                          alpha=0.6 if reference else 1.0)
        if not reference:  # the references' bands would hide the models'
            left.fill_between(grids, [row["psnr_lo"] for row in series], [row["psnr_hi"] for row in series],
                              color=line.get_color(), alpha=0.15)
            middle.errorbar(grids, [row["context_gain_db"] for row in series],
                            yerr=[[row["context_gain_db"] - row["context_gain_lo"] for row in series],
                                  [row["context_gain_hi"] - row["context_gain_db"] for row in series]],
                            fmt="-o", capsize=3, label=label, color=line.get_color())
            right.plot(grids, [row["neg_elbo"] for row in series], "-o", label=label, color=line.get_color())
    middle.axhline(0, color="black", lw=0.8)
    all_grids = sorted({row["grid"] for row in rows})
    trained = {row["train_grids"] for row in rows if row.get("train_grids")}
    if len(trained) == 1:  # every model trained on the same sizes: shade those that were evaluated
        shaded = sorted({int(k) for k in trained.pop().split()} & set(all_grids))
        for axis in (left, middle, right):
            for i, k in enumerate(shaded):
                axis.axvspan(k - 0.3, k + 0.3, color="grey", alpha=0.12, label="trained sizes" if i == 0 else None)
    for axis, title in ((left, "PSNR of generated views (dB)"), (middle, "context gain (dB), 95% interval"),
                        (right, "-ELBO (nats per image)")):
        axis.set_xlabel("hotel size k (k x k mazes)")
        axis.set_xticks(all_grids)
        axis.set_title(title)
        axis.grid(alpha=0.3)
    for axis in (left, middle, right):
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saved_model", action="append", required=True, metavar="CKPT",
                        help="checkpoint to evaluate; repeat the flag for several models")
    parser.add_argument("--test_data_dir", required=True, help="directory of episode files (.pt / .pt.gz)")
    parser.add_argument("--grids", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="hotel sizes k to test")
    parser.add_argument("--out", required=True, help="directory for metrics.csv, metrics.md and metrics.png")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--queries", type=command.number(int, 0), default=None, metavar="N",
                        help=f"query views per grid size (default {DEFAULT_QUERIES}), one per maze, from ceil(N / k^2) "
                             "hotels of k x k distinct test episodes")
    amount.add_argument("--episodes", type=command.number(int, 0), default=None,
                        help="instead of --queries: this many hotels per grid size, all their k^2 queries each")
    parser.add_argument("--seed", type=command.number(int, 0, low_ok=True, high=MAX_SEED), default=0,
                        help="seed of the hotels and of the prior samples")
    parser.add_argument("--batch_size", type=command.number(int, 0), default=4,
                        help="hotels per forward pass (the prior samples depend on it)")
    parser.add_argument("--sigma", type=command.number(float, 0), default=None,
                        help=f"pixel sigma for -ELBO (default: the checkpoint's, else {DEFAULT_SIGMA})")
    parser.add_argument("--device", type=command.torch_device, default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.queries is None and args.episodes is None:
        args.queries = DEFAULT_QUERIES
    args.grids = list(dict.fromkeys(args.grids))  # each size once: a repeated one would be two rows of one result
    if blocker := command.file_in_the_way(Path(args.out) / "metrics.csv"):  # --out itself, or a folder above it
        parser.error(f"--out {args.out}: {blocker} is a file, not a directory")
    return args


def main(args) -> List[dict]:
    load, candidates = prepare(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # before the evaluation, which may take hours
    rows = run(args, load, candidates)
    table = markdown(rows, args)
    # All three reports are written before any replaces its old version: a failure (a full disk) leaves the
    # previous run's reports as they were, not a mix of two runs.
    with atomic_path(out / "metrics.csv") as csv_path, atomic_path(out / "metrics.md") as md_path, \
            atomic_path(out / "metrics.png") as png_path:
        write_csv(rows, csv_path)
        md_path.write_text(table)
        plot(rows, png_path)
    print(table)
    print(f"wrote {out / 'metrics.csv'}, {out / 'metrics.md'}, {out / 'metrics.png'}")
    return rows


def cli(argv=None) -> int:
    """The command line: 0 on success; bad inputs print one line to stderr and return 2."""
    return command.run("evaluate.py", parse_args, main, (CheckpointError, EpisodeError, EvaluationError, OSError), argv)


if __name__ == "__main__":
    sys.exit(cli())
