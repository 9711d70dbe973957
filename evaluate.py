"""Evaluate GEN and GQN checkpoints per hotel size on identical, seeded inputs.

For every grid size k the same hotels (k x k distinct episodes, context views, one query per maze,
hotel position) are drawn from ``(seed, hotel index)`` by ``utils.hotel.plan_step``, independently of
the models, so every checkpoint is scored on the same images (a model with C context views sees the first C
of the ``PLANNED_CONTEXT_VIEWS`` planned per maze). Per model and k the table holds:

* ``neg_elbo``: -ELBO in nats per query image (``nll + kl``), the training loss at the checkpoint's
  final pixel sigma (column ``sigma``). The likelihood is a continuous Gaussian, so this is a *density*
  (it can be negative) and only comparable between runs at the same sigma. ``bits_per_dim`` =
  ``neg_elbo / (3 S^2 ln 2)``; ``kl`` in nats per image.
* ``mse`` / ``psnr`` / ``ssim`` of the view *generated* from the prior (the model never sees the query
  image) against the ground truth, pixels in [0, 1]; ``mse`` is the mean over all queries and pixels
  and ``psnr = -10 log10(mse)`` of that same row. ``rec_*``: the same for the posterior
  reconstruction (the model sees the query image: an upper bound on what the representation allows).
* two references that need no model: ``nearest context view`` (copy the context image of the query's
  own maze whose pose is nearest, see :func:`pose_distance`) and ``mean image`` (the mean of the query
  maze's context images).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

from models.scene import SceneModel
from utils import command
from utils.atomic import atomic_path
from utils.checkpoint import CheckpointError, model_from_checkpoint
from utils.dataset import EpisodeError, list_episodes, load_episode, to_unit
from utils.hotel import MAX_SEED, WORLD_MAZES, HotelBatch, StepPlan, build_hotels, episode_views, plan_step

DEFAULT_SIGMA = 0.7  # the pixel sigma at the end of the original schedule, for checkpoints without one
YAW_WEIGHT = 0.5  # world units per radian in pose_distance: a 90 degree turn ~ 0.8 units ~ 3 maze squares
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Wang et al. (2004)
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2  # (K * data range)^2 with data range 1
NEAREST, MEAN = "nearest context view", "mean image"
# Context views planned per maze; a model with C views sees the first C. Fixed, so that a model's inputs do
# not depend on the other checkpoints of the command (only one with more views than this changes them).
PLANNED_CONTEXT_VIEWS = 64
COLUMNS = ("model", "grid", "hotels", "queries", "img_size", "context_views", "sigma", "neg_elbo",
           "bits_per_dim", "kl", "mse", "psnr", "ssim", "rec_mse", "rec_psnr", "rec_ssim", "seconds", "steps", "train_grids", "inputs")


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


def plan_digest(plans: Sequence[StepPlan]) -> str:
    """Short hash of the episodes, view fractions and hotel positions: equal digests, equal inputs."""
    digest = hashlib.sha256()
    for plan in plans:
        for tensor in (plan.episodes, plan.views, plan.origin):
            digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


class EpisodeCache:
    """``load(index) -> Episode`` over a directory, each file read once; ``views(img_size)`` is
    ``build_hotels``'s reader of their views."""

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
        return lambda index, fractions, taken: episode_views(self(index), fractions, img_size)


# ---- models ----------------------------------------------------------------------------------------
@dataclass
class Candidate:
    label: str
    model: SceneModel
    img_size: int
    context_views: int
    raw_poses: bool
    max_grid: int
    sigma: float
    steps: object = None  # training steps of the checkpoint ("epoch"), if saved
    train_grids: tuple = ()  # grid sizes it was trained on, if saved


def run_name(path) -> str:
    """The checkpoint's file name, with its run folder for the training script's RUN/models/NAME.pt."""
    path = Path(path)
    return f"{path.parent.parent.name}/{path.name}" if path.parent.name == "models" else path.name


def load_candidate(path, device, sigma=None) -> Candidate:
    try:
        model, checkpoint = model_from_checkpoint(path, device)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as error:  # saved args that do not describe a model
        raise CheckpointError(f"{path}: its saved args do not describe a model ({type(error).__name__}: "
                              f"{error})") from None
    args = checkpoint.get("args") or {}
    kind = "GQN" if args.get("baseline", False) else "GEN"
    return Candidate(label=f"{kind} ({run_name(path)})", model=model, img_size=model.config.img_size,
                     context_views=int(args.get("context_views", 8)), raw_poses=bool(args.get("raw_poses", False)),
                     max_grid=model.config.max_grid,
                     sigma=float(sigma if sigma is not None else checkpoint.get("sigma", DEFAULT_SIGMA)),
                     steps=checkpoint.get("epoch"), train_grids=tuple(args.get("train_grids") or ()))


def unique_labels(candidates: Sequence[Candidate]) -> None:
    seen: Dict[str, int] = {}
    for candidate in candidates:
        seen[candidate.label] = seen.get(candidate.label, 0) + 1
        if seen[candidate.label] > 1:
            candidate.label = f"{candidate.label} #{seen[candidate.label]}"


# ---- evaluation ------------------------------------------------------------------------------------
def image_row(generated: torch.Tensor, truth: torch.Tensor, prefix: str = "") -> dict:
    """Sums for mse and ssim over a chunk; finished by :func:`finish`."""
    return {f"{prefix}se": (generated - truth).pow(2).sum().item(), f"{prefix}pixels": truth.numel(),
            f"{prefix}ssim_sum": ssim(generated, truth).sum().item()}


def accumulate(total: dict, part: dict) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0) + value


def finish(total: dict, queries: int) -> dict:
    """Means per query / pixel from the sums; psnr from that same mean mse."""
    row = {}
    for prefix in ("", "rec_"):
        if f"{prefix}se" in total:
            mse = total[f"{prefix}se"] / total[f"{prefix}pixels"]
            row.update({f"{prefix}mse": mse, f"{prefix}psnr": psnr(mse),
                        f"{prefix}ssim": total[f"{prefix}ssim_sum"] / queries})
    for key in ("neg_elbo", "kl"):
        if key in total:
            row[key] = total[key] / queries
    return row


@torch.no_grad()
def evaluate_model(candidate: Candidate, batches, seed: int, device, progress=None) -> dict:
    """Metrics of one model on one grid size's batches. The prior samples are drawn from ``seed``, chunk
    after chunk, so they also depend on how many hotels a chunk holds (``--batch_size``)."""
    torch.manual_seed(seed)
    model, total, queries, seconds = candidate.model, {}, 0, 0.0
    for batch in batches:
        started = time.perf_counter()  # model time only: decoding the views is not the model's
        context_frames, context_poses, query_frames, query_poses, origin, grid = batch.model_inputs(device)
        r = model.represent(context_frames, context_poses, query_poses, origin, grid)  # (N * M, r_dim)
        x, v = query_frames.flatten(0, 1), query_poses.flatten(0, 1)  # (N * M, 3, S, S), (N * M, 7)
        losses = model.elbo(x, v, r, candidate.sigma)  # the training loss, per image
        accumulate(total, {"neg_elbo": losses.loss.sum().item(), "kl": losses.kl.sum().item()})
        accumulate(total, image_row(model.generate(v, r), x))
        accumulate(total, image_row(model.reconstruct(x, v, r), x, "rec_"))
        queries += x.shape[0]
        seconds += time.perf_counter() - started
        if progress is not None:
            progress.update(1)
    row = finish(total, queries)
    size = candidate.img_size
    row.update(model=candidate.label, queries=queries, img_size=size, context_views=candidate.context_views,
               steps=candidate.steps, train_grids=" ".join(map(str, candidate.train_grids)),
               sigma=candidate.sigma, bits_per_dim=row["neg_elbo"] / (3 * size * size * math.log(2)),
               seconds=seconds)
    return row


def evaluate_references(batches, progress=None) -> List[dict]:
    totals, seconds, queries = {NEAREST: {}, MEAN: {}}, {NEAREST: 0.0, MEAN: 0.0}, 0
    for batch in batches:
        truth = to_unit(batch.query_frames.flatten(0, 1))
        for name, answer in ((NEAREST, nearest_view), (MEAN, mean_view)):
            started = time.perf_counter()
            accumulate(totals[name], image_row(answer(batch), truth))
            seconds[name] += time.perf_counter() - started
        queries += truth.shape[0]
        if progress is not None:
            progress.update(1)
    return [dict(finish(total, queries), model=name, queries=queries, seconds=seconds[name])
            for name, total in totals.items()]


def check_grids(grids: Sequence[int], n_episodes, candidates: Sequence[Candidate], directory) -> None:
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

    def chunks(plans, candidate_size, views, raw):
        for start in range(0, len(plans), args.batch_size):
            plan = merged([with_context_views(p, views) for p in plans[start:start + args.batch_size]])
            yield build_hotels(plan, load.views(candidate_size), raw)

    n_chunks = math.ceil(args.episodes / args.batch_size)
    rows = []
    with tqdm(total=n_chunks * len(args.grids) * (len(candidates) + len(settings)), desc="evaluating",
              unit="batch", file=sys.stderr, dynamic_ncols=True) as progress:
        for grid in args.grids:
            plans = evaluation_plans(args.seed, args.episodes, len(load), grid, planned_views)
            digest = plan_digest(plans)
            common = dict(grid=grid, hotels=len(plans), inputs=digest)
            for candidate in candidates:
                progress.set_postfix_str(f"{candidate.label} k={grid}")
                batches = chunks(plans, candidate.img_size, candidate.context_views, candidate.raw_poses)
                rows.append({**evaluate_model(candidate, batches, args.seed, device, progress), **common})
            for size, views in settings:
                suffix = f" ({size}px, {views} views)" if len(settings) > 1 else ""
                for row in evaluate_references(chunks(plans, size, views, False), progress):
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


TABLES = (("psnr", "PSNR of generated views (dB, higher is better)"),
          ("ssim", "SSIM of generated views (higher is better)"),
          ("mse", "MSE of generated views (pixels in [0, 1])"),
          ("neg_elbo", "-ELBO (nats per image, lower is better)"),
          ("bits_per_dim", "-ELBO (bits per dimension)"),
          ("kl", "KL (nats per image)"),
          ("rec_psnr", "PSNR of posterior reconstructions (dB)"))


def markdown(rows: Sequence[dict], args) -> str:
    """Readable tables: one per metric, grid sizes down, models (and references) across."""
    labels = list(dict.fromkeys(row["model"] for row in rows))
    grids = list(dict.fromkeys(row["grid"] for row in rows))
    by_key = {(row["model"], row["grid"]): row for row in rows}
    model_rows = [row for row in rows if "neg_elbo" in row]
    sigmas = sorted({row["sigma"] for row in model_rows})
    first = next(iter(by_key.values()))
    sigma_source = "set by --sigma" if args.sigma is not None else "the checkpoint's final sigma"
    lines = [f"# Evaluation on `{args.test_data_dir}`", "",
             f"{first['hotels']} hotels per grid size (k x k distinct episodes each, one query per maze, seed "
             f"{args.seed}); every model sees identical inputs (column `inputs` of metrics.csv). "
             f"Generated views are sampled from the prior; -ELBO uses a Gaussian pixel likelihood with sigma "
             f"{', '.join(cell(s) for s in sigmas)} ({sigma_source}), so it is a density, "
             f"comparable only at equal sigma. References: `{NEAREST}` copies the query maze's context "
             f"image with the nearest pose (|dxy| + {YAW_WEIGHT} |dyaw|), `{MEAN}` is the mean of its "
             f"context images.", ""]
    for key, title in TABLES:
        columns = [label for label in labels if any(by_key.get((label, g), {}).get(key) is not None for g in grids)]
        if not columns:
            continue
        lines += [f"## {title}", "", "| grid | " + " | ".join(columns) + " |",
                  "|---:|" + "---:|" * len(columns)]
        for grid in grids:
            values = [cell(by_key.get((label, grid), {}).get(key)) for label in columns]
            lines.append(f"| {grid}x{grid} | " + " | ".join(values) + " |")
        lines.append("")
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
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for label in labels:
        series = sorted((row["grid"], row) for row in rows if row["model"] == label)
        grids = [g for g, _ in series]
        reference = "neg_elbo" not in series[0][1]
        left.plot(grids, [row["psnr"] for _, row in series], "--" if reference else "-o", label=label,
                  alpha=0.6 if reference else 1.0)
        if not reference:
            right.plot(grids, [row["neg_elbo"] for _, row in series], "-o", label=label)
    all_grids = sorted({row["grid"] for row in rows})
    trained = {row["train_grids"] for row in rows if row.get("train_grids")}
    if len(trained) == 1:  # every model trained on the same sizes: shade those that were evaluated
        shaded = sorted({int(k) for k in trained.pop().split()} & set(all_grids))
        for axis in (left, right):
            for i, k in enumerate(shaded):
                axis.axvspan(k - 0.3, k + 0.3, color="grey", alpha=0.12, label="trained sizes" if i == 0 else None)
    for axis, title in ((left, "PSNR of generated views (dB)"), (right, "-ELBO (nats per image)")):
        axis.set_xlabel("hotel size k (k x k mazes)")
        axis.set_xticks(all_grids)
        axis.set_title(title)
        axis.grid(alpha=0.3)
    left.legend(fontsize=8)
    right.legend(fontsize=8)
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
    parser.add_argument("--episodes", type=command.number(int, 0), default=16, help="hotels per grid size")
    parser.add_argument("--seed", type=command.number(int, 0, low_ok=True, high=MAX_SEED), default=0,
                        help="seed of the hotels and of the prior samples")
    parser.add_argument("--batch_size", type=command.number(int, 0), default=4,
                        help="hotels per forward pass (the prior samples depend on it)")
    parser.add_argument("--sigma", type=command.number(float, 0), default=None,
                        help=f"pixel sigma for -ELBO (default: the checkpoint's, else {DEFAULT_SIGMA})")
    parser.add_argument("--device", type=command.torch_device, default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
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
