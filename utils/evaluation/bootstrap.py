"""Percentile bootstrap confidence intervals: the one resampling routine behind every interval evaluate.py
reports (a row's PSNR, a model's context gain)."""
from typing import Callable, Optional, Tuple

import torch

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0
# Elements gathered per block of resamples: 2000 resamples of 10^5 queries would otherwise need GBs at once.
BLOCK_ELEMENTS = 2 ** 22


def mean_statistic(resampled: torch.Tensor) -> torch.Tensor:
    """The mean of each resample: (B, Q) -> (B,)."""
    return resampled.mean(dim=1)


def bootstrap_interval(samples, statistic: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                       resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED) -> Tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over the rows of ``samples``.

    ``samples`` (Q, ...) holds one entry per independent unit (a query); each resample draws Q rows with
    replacement, keeping a row's columns together, so a statistic of paired columns (a model's score with
    its own and with swapped context views) gets a paired interval. ``statistic`` maps a block of resamples
    (B, Q, ...) to (B,) values (default: the mean of 1-D samples). Returns the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` percentiles of the B values, taken as order statistics (no interpolation, so an
    infinite value cannot turn into NaN). The resamples come from ``seed`` alone: equal inputs give equal
    intervals, and two rows with as many queries are resampled with the same indices.
    """
    samples = torch.as_tensor(samples, dtype=torch.float64)
    if samples.dim() == 0 or samples.shape[0] == 0:
        raise ValueError("bootstrap_interval needs at least one sample")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    statistic = statistic or mean_statistic
    n = samples.shape[0]
    generator = torch.Generator().manual_seed(seed)
    block = max(1, BLOCK_ELEMENTS // samples.numel())
    values = []
    for start in range(0, resamples, block):
        index = torch.randint(n, (min(block, resamples - start), n), generator=generator)
        values.append(statistic(samples[index]).reshape(-1))
    values = values[0] if len(values) == 1 else torch.cat(values)
    values = values.sort().values
    tail = (1 - level) / 2
    low = values[int(tail * (resamples - 1))]  # floor: the lower bound errs outwards
    high = values[resamples - 1 - int(tail * (resamples - 1))]
    return float(low), float(high)
