"""Percentile bootstrap confidence intervals: the one resampling routine behind every interval evaluate.py and
evaluate_retrieval.py report (a row's PSNR, a model's context gain, a retrieval accuracy).

The unit resampled is a *cluster* of queries, by default each query alone. Queries of one hotel share its
memory (one representation for a GQN, neighbouring nodes for a GEN), so they are not independent draws:
resampling them one by one would make the interval of a 5x5 hotel's 400 queries - only 16 hotels - far too
narrow. Evaluations pass each query's hotel as its cluster.
"""
from typing import Callable, Optional, Tuple

import torch

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0
# Elements gathered per block of resamples: 2000 resamples of 10^5 queries would otherwise need GBs at once.
BLOCK_ELEMENTS = 2 ** 22


def identity(means: torch.Tensor) -> torch.Tensor:
    """The resampled mean itself (1-D samples): (B,) -> (B,)."""
    return means


def bootstrap_interval(samples, statistic: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                       clusters=None, resamples: int = RESAMPLES, level: float = LEVEL,
                       seed: int = SEED) -> Tuple[float, float]:
    """Percentile bootstrap interval of a function of the mean of ``samples`` (Q, ...) over its rows.

    Each resample draws, with replacement, as many clusters as there are (``clusters``: one id per row, any
    values; default: every row its own cluster) and takes the mean of every row of the drawn clusters,
    column by column, keeping a row's columns together: a statistic of paired columns (a model's score with
    its own and with swapped context views) gets a paired interval. ``statistic`` maps those means (B, ...)
    to (B,) values (default: the mean itself, for 1-D samples). Returns the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` percentiles of the B values, taken as order statistics (no interpolation, so an
    infinite value cannot turn into NaN). The resamples come from ``seed`` alone: equal inputs give equal
    intervals, and two rows with as many clusters are resampled with the same indices.
    """
    samples = torch.as_tensor(samples, dtype=torch.float64)
    if samples.dim() == 0 or samples.shape[0] == 0:
        raise ValueError("bootstrap_interval needs at least one sample")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    statistic = statistic or identity
    if clusters is None:
        sums, sizes = samples, torch.ones(len(samples), dtype=torch.float64)
    else:
        clusters = torch.as_tensor(clusters).reshape(-1)
        if len(clusters) != len(samples):
            raise ValueError(f"{len(clusters)} cluster ids for {len(samples)} samples")
        ids, inverse = torch.unique(clusters, return_inverse=True)
        sums = torch.zeros((len(ids), *samples.shape[1:]), dtype=torch.float64).index_add_(0, inverse, samples)
        sizes = torch.bincount(inverse, minlength=len(ids)).double()
    n = len(sums)
    generator = torch.Generator().manual_seed(seed)
    block = max(1, BLOCK_ELEMENTS // sums.numel())
    extra = (1,) * (sums.dim() - 1)  # broadcast the resampled counts over the columns
    values = []
    for start in range(0, resamples, block):
        index = torch.randint(n, (min(block, resamples - start), n), generator=generator)
        means = sums[index].sum(dim=1) / sizes[index].sum(dim=1).reshape(-1, *extra)
        values.append(statistic(means).reshape(-1))
    values = values[0] if len(values) == 1 else torch.cat(values)
    values = values.sort().values
    tail = (1 - level) / 2
    low = values[int(tail * (resamples - 1))]  # floor: the lower bound errs outwards
    high = values[resamples - 1 - int(tail * (resamples - 1))]
    return float(low), float(high)
