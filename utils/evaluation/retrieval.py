"""Retrieval accuracy of embed-and-classify checkpoints (models/embed_classify.py) per hotel size, on identical,
seeded inputs and a candidate pool of FIXED size, so that the grid sizes are comparable (evaluate_retrieval.py).

In training, a query is classified among every view of its batch, a pool that grows with the batch; here every
query has its own pool: all the views (the query view and the context views) of ``pool_mazes`` mazes, the
query's own maze and ``pool_mazes - 1`` other test episodes drawn by seed. A model with C context views thus
picks among P = pool_mazes * (C + 1) candidates at every grid size, and chance is 1 / P.

Inputs, for grid size k and ``queries`` N: ceil(N / k^2) hotels of k x k distinct test episodes, hotel i being
``utils.data.hotel.plan_step(seed, i, ...)`` (the hotels evaluate.py scores renderers on); one query per maze, the
last hotel's first queries making up the count. A model with C context views sees the first C of the
``PLANNED_CONTEXT_VIEWS`` planned per maze. A query's distractor mazes, their views and the order of its pool
are functions of (seed, k, hotel, maze) alone (:func:`pool_plan`, :func:`pool_order`): every checkpoint is
scored on the same images. The pool is shuffled by seed so that the true view's position carries no
information (and a tie of scores, which ``argmax`` gives to the first, favours no one).
"""
import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, NamedTuple, Sequence, Tuple

import torch

from models.embed_classify import EmbedClassifier, EmbedClassifierConfig, judge
from utils.evaluation import report
from utils.evaluation.bootstrap import bootstrap_interval
from utils.checkpoint import EMBED_CLASSIFY, CheckpointError, load_checkpoint, load_model_state, require_task
from utils.data.episodes import to_unit
from utils.data.hotel import EpisodeCache, HotelBatch, StepPlan, build_hotels, plan_step
from utils.evaluation.trained_model import EvaluationError, check_grids, run_name, unique_labels
from utils.evaluation.scenes import PLANNED_CONTEXT_VIEWS

POOL_MAZES = 4  # the query's own maze and 3 other test mazes

DEFAULT_QUERIES = 400  # per grid size: a 95% interval of an accuracy near 0.5 spans about +-0.05
BATCH_QUERIES = 32  # queries per forward pass (whole hotels; at least one hotel)
COLUMNS = ("model", "grid", "queries", "candidates", "chance", "accuracy", "accuracy_lo", "accuracy_hi",
           "maze_chance", "maze_accuracy", "maze_accuracy_lo", "maze_accuracy_hi")


# ---- models ----------------------------------------------------------------------------------------
@dataclass
class Retriever:
    label: str  # starts with GEN or GQN
    model: EmbedClassifier
    img_size: int
    context_views: int
    raw_poses: bool
    max_grid: int
    steps: object = None


def load_retriever(path, device="cpu") -> Retriever:
    """An embed-and-classify checkpoint (train_embed_classify.py's) in eval mode; ``CheckpointError`` for
    anything else (a renderer's, a file that is not a checkpoint, one without saved args)."""
    checkpoint = load_checkpoint(path)
    require_task(checkpoint, EMBED_CLASSIFY, path)
    args = checkpoint.get("args")
    if not args:
        raise CheckpointError(f"{path} has no saved args (an original-format checkpoint?): its image size and "
                              f"context views are unknown")
    try:
        config = EmbedClassifierConfig(img_size=int(args.get("img_size", 64)), baseline=bool(args.get("baseline")),
                                       memory_norm=args.get("memory_norm"),
                                       embedding_norm=bool(args.get("embedding_norm", False)))
        context_views = int(args.get("context_views", 8))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: its saved args do not describe a model ({error})") from None
    model = EmbedClassifier(config)
    load_model_state(model, checkpoint["model_state_dict"], path)
    kind = "GQN" if config.baseline else "GEN"
    return Retriever(label=f"{kind} ({run_name(path)})", model=model.to(device).eval(), img_size=config.img_size,
                     context_views=context_views, raw_poses=bool(args.get("raw_poses", False)),
                     max_grid=config.max_grid, steps=checkpoint.get("epoch"))


# ---- inputs ----------------------------------------------------------------------------------------
def random_key(*parts) -> int:
    """A 64-bit seed hashed from ``parts``: each random stream a function of its own key only."""
    return int.from_bytes(hashlib.blake2b(",".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def hotel_count(queries: int, grid: int) -> int:
    return math.ceil(queries / (grid * grid))


def hotel_plans(seed: int, grid: int, hotels: int, n_episodes: int,
                planned_views: int = PLANNED_CONTEXT_VIEWS) -> List[StepPlan]:
    """The fixed hotels of one grid size: hotel i is ``plan_step(seed, i, ...)`` (evaluate.py's)."""
    return [plan_step(seed, i, 0, n_episodes, grid * grid, [grid], planned_views) for i in range(hotels)]


def first_views(fractions: torch.Tensor, views: int) -> torch.Tensor:
    """Planned view fractions (..., planned + 1) -> the first ``views`` context views and the query (last)."""
    return torch.cat([fractions[..., :views], fractions[..., -1:]], dim=-1)


class PoolPlan(NamedTuple):
    distractors: torch.Tensor  # (M, D) episode indices, D = pool_mazes - 1, none the maze's own
    views: torch.Tensor  # (M, D, planned + 1) view fractions of each distractor maze


def pool_plan(seed: int, grid: int, hotel: int, episodes: torch.Tensor, n_episodes: int, pool_mazes: int,
              planned_views: int = PLANNED_CONTEXT_VIEWS) -> PoolPlan:
    """The distractor mazes of hotel ``hotel``'s queries: for maze m, ``pool_mazes - 1`` distinct test episodes
    other than its own (``episodes`` (M,)), each with its planned views; a function of its key alone."""
    distractors, views = [], []
    for m, own in enumerate(episodes.tolist()):
        g = torch.Generator().manual_seed(random_key("pool", seed, grid, hotel, m))
        others = torch.randperm(n_episodes - 1, generator=g)[:pool_mazes - 1]
        distractors.append(others + (others >= own).long())  # skip the maze's own episode
        views.append(torch.rand(pool_mazes - 1, planned_views + 1, generator=g))
    return PoolPlan(torch.stack(distractors), torch.stack(views))


def grid_plans(seed: int, grid: int, queries: int, n_episodes: int, pool_mazes: int = POOL_MAZES,
               planned_views: int = PLANNED_CONTEXT_VIEWS) -> Tuple[List[StepPlan], List[PoolPlan]]:
    """One grid size's hotels and each hotel's pool plan: the same inputs for every model scored on them."""
    plans = hotel_plans(seed, grid, hotel_count(queries, grid), n_episodes, planned_views)
    return plans, [pool_plan(seed, grid, i, plan.episodes[0], n_episodes, pool_mazes, planned_views)
                   for i, plan in enumerate(plans)]


def pool_order(seed: int, grid: int, hotel: int, maze: int, size: int) -> torch.Tensor:
    """The seeded shuffle of a pool of ``size``: pool position j holds unshuffled candidate ``order[j]``."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(random_key("order", seed, grid, hotel, maze,
                                                                                  size)))


class Chunk(NamedTuple):
    batch: HotelBatch  # the hotels, as the model sees them
    pools: torch.Tensor  # (N M, P, 3, S, S) uint8, each query's candidates
    answers: torch.Tensor  # (N M,) the position of each query's own view in its pool
    # (N M, P) what each pool position holds: 0 the query's own view, 1..C its maze's context views in order,
    # above C the views of the distractor mazes
    sources: torch.Tensor
    context_views: int  # C

    @property
    def own_maze(self) -> torch.Tensor:
        """(N M, P) bool, True at the views of the query's own maze (its own view included)."""
        return self.sources <= self.context_views


def build_pools(batch: HotelBatch, first_hotel: int, pool_plans: Sequence[PoolPlan], views, context_views: int,
                seed: int) -> Chunk:
    """Each query's pool: its own view, its own maze's context views, then every view of its distractor mazes
    (``views(episode, fractions)`` as ``EpisodeCache.views``), shuffled by :func:`pool_order`.
    ``first_hotel``: the index of the batch's first hotel in its grid size."""
    hotels, mazes = batch.query_frames.shape[:2]
    context = batch.context_frames.unflatten(1, (mazes, context_views))  # (N, M, C, 3, S, S)
    pools, answers, sources = [], [], []
    for h in range(hotels):
        plan = pool_plans[h]
        for m in range(mazes):
            members = [batch.query_frames[h, m, None], context[h, m]]
            for episode, fractions in zip(plan.distractors[m].tolist(), plan.views[m]):
                members.append(views(episode, first_views(fractions, context_views))[0])
            pool = torch.cat(members)  # (P, 3, S, S), the true view first
            order = pool_order(seed, batch.grid, first_hotel + h, m, len(pool))
            pools.append(pool[order])
            answers.append(int((order == 0).nonzero()))
            sources.append(order)
    return Chunk(batch, torch.stack(pools), torch.tensor(answers), torch.stack(sources), context_views)


def chunks(load: EpisodeCache, seed: int, grid: int, plans: Sequence[StepPlan], pool_plans: Sequence[PoolPlan],
           retriever: Retriever, batch_queries: int = BATCH_QUERIES):
    """The chunks of one grid size as ``retriever`` sees them (its image size and context views)."""
    per_pass = max(1, batch_queries // (grid * grid))
    views = load.views(retriever.img_size)
    for start in range(0, len(plans), per_pass):
        part = plans[start:start + per_pass]
        plan = StepPlan(grid, torch.cat([p.episodes for p in part]),
                        first_views(torch.cat([p.views for p in part]), retriever.context_views),
                        torch.cat([p.origin for p in part]))
        batch = build_hotels(plan, views, retriever.raw_poses)
        yield build_pools(batch, start, pool_plans[start:start + per_pass], views, retriever.context_views, seed)


# ---- scoring ---------------------------------------------------------------------------------------
@torch.no_grad()
def pick(model: EmbedClassifier, chunk: Chunk, device) -> torch.Tensor:
    """Per query (N M,): the pool position of the model's top-scoring candidate."""
    context_frames, context_poses, _, query_poses, origin, grid = chunk.batch.model_inputs(device)
    scores = model.score_pool(context_frames, context_poses, query_poses, origin, grid,
                              to_unit(chunk.pools.to(device)))
    return judge(scores, chunk.answers.to(device)).picked.cpu()


def picks(model: EmbedClassifier, batches, device, progress=None):
    """Per chunk of ``batches``: (chunk, each query's picked pool position, each query's hotel id counted across
    the chunks, for intervals that resample whole hotels)."""
    seen = 0
    for chunk in batches:
        yield chunk, pick(model, chunk, device), chunk.batch.query_hotels(seen)
        seen += len(chunk.batch.query_frames)
        if progress is not None:
            progress.update(1)


def rate(name: str, hits: torch.Tensor, hotels=None) -> dict:
    """``name``, ``name_lo``, ``name_hi``: the mean of per-query 0/1 ``hits`` with its 95% percentile bootstrap
    interval, resampling whole hotels where each query's ``hotels`` id is given (queries of a hotel share its
    memory)."""
    hits = hits.double()
    low, high = bootstrap_interval(hits, clusters=hotels)
    return {name: hits.mean().item(), f"{name}_lo": low, f"{name}_hi": high}


def accuracy_row(correct: torch.Tensor, candidates: int, hotels=None) -> dict:
    """A row's numbers from per-query 0/1 correctness: the pool, chance and the accuracy (``rate``)."""
    return {"queries": len(correct), "candidates": candidates, "chance": 1 / candidates,
            **rate("accuracy", correct, hotels)}


def evaluate_model(retriever: Retriever, batches, queries: int, device, progress=None) -> dict:
    """One model on one grid size's chunks, over their first ``queries`` queries: top-1 (the pick is the query's
    own view) and maze accuracy (the pick is a view of the query's own maze)."""
    correct, same_maze, hotels = [], [], []
    for chunk, picked, hotel_ids in picks(retriever.model, batches, device, progress):
        correct.append((picked == chunk.answers).float())
        same_maze.append(chunk.own_maze[torch.arange(len(picked)), picked].float())
        hotels.append(hotel_ids)
        candidates = chunk.pools.shape[1]
    hotels = torch.cat(hotels)[:queries]
    pool_mazes = candidates // (retriever.context_views + 1)
    return {**accuracy_row(torch.cat(correct)[:queries], candidates, hotels), "maze_chance": 1 / pool_mazes,
            **rate("maze_accuracy", torch.cat(same_maze)[:queries], hotels)}


def check_pools(pool_mazes: int, n_episodes: int, directory) -> None:
    if pool_mazes < 1:
        raise EvaluationError(f"the pool needs at least the query's own maze, got {pool_mazes} mazes")
    if n_episodes < pool_mazes:
        raise EvaluationError(f"{directory} holds {n_episodes} episodes; pools of {pool_mazes} mazes need at least "
                              f"{pool_mazes} (the query's own and {pool_mazes - 1} others)")


def prepare(args):
    """The test episodes and the checkpoints, checked: (EpisodeCache, retrievers)."""
    load = EpisodeCache(args.test_data_dir)
    retrievers = [load_retriever(path, args.device) for path in args.saved_model]
    unique_labels(retrievers)
    check_pools(args.pool_mazes, len(load), args.test_data_dir)
    check_grids(args.grids, len(load), retrievers, args.test_data_dir)
    return load, retrievers


def run(args, load: EpisodeCache, retrievers: Sequence[Retriever]) -> List[dict]:
    """Every model's row at every grid size."""
    from tqdm import tqdm

    planned = max([PLANNED_CONTEXT_VIEWS] + [r.context_views for r in retrievers])
    passes = sum(math.ceil(hotel_count(args.queries, k) / max(1, args.batch_queries // (k * k))) for k in args.grids)
    rows = []
    with tqdm(total=passes * len(retrievers), desc="retrieval", unit="batch", file=sys.stderr,
              dynamic_ncols=True) as progress:
        for grid in args.grids:
            plans, pool_plans = grid_plans(args.seed, grid, args.queries, len(load), args.pool_mazes, planned)
            for retriever in retrievers:
                progress.set_postfix_str(f"{retriever.label} k={grid}")
                batches = chunks(load, args.seed, grid, plans, pool_plans, retriever, args.batch_queries)
                row = evaluate_model(retriever, batches, args.queries, args.device, progress)
                rows.append({"model": retriever.label, "grid": grid, **row})
    return rows


# ---- reports ---------------------------------------------------------------------------------------
def markdown(rows: Sequence[dict], args) -> str:
    """Grid sizes down, models across: accuracy [95% interval], then the pool size and chance."""
    labels = list(dict.fromkeys(row["model"] for row in rows))
    grids = list(dict.fromkeys(row["grid"] for row in rows))
    by_key = {(row["model"], row["grid"]): row for row in rows}
    lines = [f"# Retrieval accuracy on `{args.test_data_dir}`", "",
             f"Each query picks its own view out of a fixed pool: every view (query and context views) of "
             f"{args.pool_mazes} mazes, its own and {args.pool_mazes - 1} other test mazes drawn by seed {args.seed}; "
             "the same hotels, pools and pool order for every model. Accuracy with its 95% percentile bootstrap "
             "interval over hotels (a hotel's queries share its memory); chance = 1 / candidates.", "",
             "| grid | " + " | ".join(labels) + " | candidates | chance | queries |",
             "|---:|" + "---:|" * len(labels) + "---:|---:|---:|"]
    for grid in grids:
        cells = []
        for label in labels:
            row = by_key.get((label, grid))
            cells.append(f"{row['accuracy']:.3f} [{row['accuracy_lo']:.3f}, {row['accuracy_hi']:.3f}]" if row else "")
        first = next(by_key[(label, grid)] for label in labels if (label, grid) in by_key)
        pools = sorted({by_key[(label, grid)]["candidates"] for label in labels if (label, grid) in by_key})
        chance = " / ".join(f"{1 / p:.3f}" for p in pools)
        lines.append(f"| {grid}x{grid} | " + " | ".join(cells) + f" | {' / '.join(map(str, pools))} | {chance} | "
                     f"{first['queries']} |")
    lines += ["", f"Maze accuracy: the picked candidate is a view of the query's own maze (chance 1 / {args.pool_mazes}): "
              "what the model's memory keeps of which maze is which, without the view's pose.", "",
              "| grid | " + " | ".join(labels) + " | chance |", "|---:|" + "---:|" * len(labels) + "---:|"]
    for grid in grids:
        cells = [f"{row['maze_accuracy']:.3f} [{row['maze_accuracy_lo']:.3f}, {row['maze_accuracy_hi']:.3f}]"
                 if (row := by_key.get((label, grid))) else "" for label in labels]
        lines.append(f"| {grid}x{grid} | " + " | ".join(cells) + f" | {1 / args.pool_mazes:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = (("accuracy", "chance", "top-1 retrieval accuracy"),
              ("maze_accuracy", "maze_chance", "pick is a view of the query's own maze"))
    for axis, (key, chance_key, title) in zip(axes, panels):
        for label in dict.fromkeys(row["model"] for row in rows):
            series = sorted((row for row in rows if row["model"] == label), key=lambda row: row["grid"])
            grids = [row["grid"] for row in series]
            line, = axis.plot(grids, [row[key] for row in series], "-o", label=label)
            axis.fill_between(grids, [row[f"{key}_lo"] for row in series], [row[f"{key}_hi"] for row in series],
                              color=line.get_color(), alpha=0.15)
        chance = sorted({(row["grid"], row[chance_key]) for row in rows})
        axis.plot([g for g, _ in chance], [c for _, c in chance], "k--", lw=0.8, label="chance")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("hotel size k (k x k mazes)")
        axis.set_xticks(sorted({row["grid"] for row in rows}))
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)


def write_reports(rows: Sequence[dict], args, out: Path) -> str:
    """retrieval.csv, retrieval.md and retrieval.png under ``out`` (``report.write_reports``); returns the
    Markdown table."""
    table = markdown(rows, args)
    report.write_reports(out, "retrieval", rows, table, plot, COLUMNS)
    return table
