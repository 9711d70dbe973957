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
import sys
from pathlib import Path
from typing import List

import torch

from utils import command
from utils.checkpoint import CheckpointError
from utils.data.episodes import EpisodeError
from utils.data.hotel import MAX_SEED
from utils.evaluation.trained_model import DEFAULT_SIGMA, EvaluationError
from utils.evaluation.report import markdown, plot, write_reports
from utils.evaluation.scenes import DEFAULT_QUERIES, prepare, run



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
    write_reports(out, "metrics", rows, table, plot)
    print(table)
    print(f"wrote {out / 'metrics.csv'}, {out / 'metrics.md'}, {out / 'metrics.png'}")
    return rows


def cli(argv=None) -> int:
    """The command line: 0 on success; bad inputs print one line to stderr and return 2."""
    return command.run("evaluate.py", parse_args, main, (CheckpointError, EpisodeError, EvaluationError, OSError), argv)


if __name__ == "__main__":
    sys.exit(cli())
