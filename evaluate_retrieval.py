"""Evaluate embed-and-classify checkpoints (GEN and GQN, train_embed_classify.py) per hotel size: top-1 accuracy
of picking each query's view out of a fixed-size pool, on identical, seeded inputs (utils/evaluation/retrieval.py).

Every query's pool holds all the views (query and context views) of ``--pool_mazes`` mazes, its own and others
drawn by seed, so a model with C context views picks among pool_mazes * (C + 1) candidates at every grid size.
Writes OUT/retrieval.csv (model, grid, queries, candidates, chance, accuracy, accuracy_lo, accuracy_hi; the
interval a 95% percentile bootstrap over queries), OUT/retrieval.md and OUT/retrieval.png.

Usage::

    python evaluate_retrieval.py --saved_model runs/GEN/models/checkpoint-3000.pt \\
        --saved_model runs/GQN/models/checkpoint-3000.pt --test_data_dir data_samples/test --out results/retrieval
"""
import argparse
import sys
from pathlib import Path
from typing import List

import torch

from utils import command
from utils.evaluation import retrieval
from utils.checkpoint import CheckpointError
from utils.evaluation.trained_model import EvaluationError
from utils.data.episodes import EpisodeError
from utils.data.hotel import MAX_SEED

PROG = "evaluate_retrieval.py"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--saved_model", action="append", required=True, metavar="CKPT",
                        help="embed-and-classify checkpoint to evaluate; repeat the flag for several models")
    parser.add_argument("--test_data_dir", required=True, help="directory of episode files (.pt / .pt.gz)")
    parser.add_argument("--grids", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="hotel sizes k to test")
    parser.add_argument("--out", required=True, help="directory for retrieval.csv, retrieval.md and retrieval.png")
    parser.add_argument("--queries", type=command.number(int, 0), default=retrieval.DEFAULT_QUERIES, metavar="N",
                        help="query views per grid size, one per maze, from ceil(N / k^2) hotels")
    parser.add_argument("--pool_mazes", type=command.number(int, 0), default=retrieval.POOL_MAZES,
                        help="mazes whose views make up each query's pool: its own and this many minus one others")
    parser.add_argument("--seed", type=command.number(int, 0, low_ok=True, high=MAX_SEED), default=0,
                        help="seed of the hotels, the distractor mazes and the pool order")
    parser.add_argument("--batch_queries", type=command.number(int, 0), default=retrieval.BATCH_QUERIES,
                        help="queries per forward pass (whole hotels, at least one); results do not depend on it")
    parser.add_argument("--device", type=command.torch_device, default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    args.grids = list(dict.fromkeys(args.grids))
    if blocker := command.file_in_the_way(Path(args.out) / "retrieval.csv"):
        parser.error(f"--out {args.out}: {blocker} is a file, not a directory")
    return args


def main(args) -> List[dict]:
    load, retrievers = retrieval.prepare(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = retrieval.run(args, load, retrievers)
    print(retrieval.write_reports(rows, args, out))
    print(f"wrote {out / 'retrieval.csv'}, {out / 'retrieval.md'}, {out / 'retrieval.png'}")
    return rows


def cli(argv=None) -> int:
    """0 on success; bad inputs print one line to stderr and return 2."""
    return command.run(PROG, parse_args, main,
                       (CheckpointError, EpisodeError, EvaluationError, OSError), argv)


if __name__ == "__main__":
    sys.exit(cli())
