"""What an embed-and-classify model picks when it misses, on evaluate_retrieval.py's hotels and pools.

    python -m bench.retrieval_picks --saved_model RUN/models/checkpoint-final.pt --test_data_dir MAZES/test \
        --seed 0 --grids 1 3

Per grid size: the share of queries whose pick is their own view (top-1), one of their own maze's context
views, or a view of another maze; and, among the picks of an own context view, how often that view is the
one nearest the query in pose (``evaluate.py``'s pose distance; chance 1 / C) and its mean pose rank among
the C context views (0 = nearest; chance (C - 1) / 2). A model that predicts what is seen from the query's
pose but not the view itself picks the nearest context views more often than chance: the pool holds the
maze's context views as distractors, so such a prediction counts as a miss. Intervals resample hotels.
"""
import argparse

import torch

from utils.data.hotel import EpisodeCache
from utils.evaluation import retrieval
from utils.evaluation.scenes import PLANNED_CONTEXT_VIEWS, context_distances


def pose_ranks(chunk: retrieval.Chunk, picked: torch.Tensor) -> torch.Tensor:
    """Per query (N M,): the pose rank (0 = nearest the query) of the picked candidate among its maze's C
    context views, or -1 where the pick is not one of them."""
    views = chunk.context_views
    distance = context_distances(chunk.batch).flatten(0, 1)  # (N M, C)
    source = chunk.sources[torch.arange(len(picked)), picked]  # 0 own view, 1..C context views, > C others
    is_context = (source >= 1) & (source <= views)
    picked_distance = distance.gather(1, (source.clamp(1, views) - 1)[:, None])
    rank = (distance < picked_distance).sum(dim=1)
    return torch.where(is_context, rank, torch.full_like(rank, -1))


def grid_row(retriever: retrieval.Retriever, load: EpisodeCache, seed: int, grid: int, queries: int) -> dict:
    planned = max(PLANNED_CONTEXT_VIEWS, retriever.context_views)
    plans, pool_plans = retrieval.grid_plans(seed, grid, queries, len(load), retrieval.POOL_MAZES, planned)
    batches = retrieval.chunks(load, seed, grid, plans, pool_plans, retriever)
    ranks, hotels, correct = [], [], []
    for chunk, picked, hotel_ids in retrieval.picks(retriever.model, batches, "cpu"):
        correct.append((picked == chunk.answers).float())
        ranks.append(pose_ranks(chunk, picked))
        hotels.append(hotel_ids)
    ranks, hotels, correct = torch.cat(ranks)[:queries], torch.cat(hotels)[:queries], torch.cat(correct)[:queries]
    context = ranks >= 0
    views = retriever.context_views
    return {"grid": grid, "queries": len(ranks), **retrieval.rate("accuracy", correct, hotels),
            **retrieval.rate("own_context", context.float(), hotels),
            **retrieval.rate("nearest", (ranks[context] == 0).float(), hotels[context]),
            "nearest_chance": 1 / views, **retrieval.rate("rank", ranks[context], hotels[context]),
            "rank_chance": (views - 1) / 2}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saved_model", required=True)
    parser.add_argument("--test_data_dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grids", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--queries", type=int, default=retrieval.DEFAULT_QUERIES)
    args = parser.parse_args(argv)
    load = EpisodeCache(args.test_data_dir)
    retriever = retrieval.load_retriever(args.saved_model)
    print(f"{retriever.label}, {args.test_data_dir}, seed {args.seed}\n")
    print("| grid | queries | top-1 | own context view picked | of those, the nearest in pose (chance) "
          "| mean pose rank (chance) |\n|---:|---:|---:|---:|---:|---:|")
    for grid in args.grids:
        row = grid_row(retriever, load, args.seed, grid, args.queries)
        interval = lambda key: f"{row[key]:.3f} [{row[key + '_lo']:.3f}, {row[key + '_hi']:.3f}]"  # noqa: E731
        print(f"| {grid}x{grid} | {row['queries']} | {interval('accuracy')} | {interval('own_context')} "
              f"| {interval('nearest')} ({row['nearest_chance']:.3f}) | {interval('rank')} ({row['rank_chance']:.2f}) |")


if __name__ == "__main__":
    main()
