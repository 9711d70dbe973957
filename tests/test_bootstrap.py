"""utils/evaluation/bootstrap.py: the percentile bootstrap behind evaluate.py's intervals."""
import math

import pytest
import torch

from utils.evaluation.bootstrap import bootstrap_interval


def test_the_95_percent_interval_covers_a_known_mean_about_95_times_in_100():
    g = torch.Generator().manual_seed(0)
    true_mean, covered, sets = 3.0, 0, 200
    for _ in range(sets):
        samples = true_mean + torch.randn(60, generator=g, dtype=torch.float64)
        low, high = bootstrap_interval(samples)
        assert low <= samples.mean().item() <= high
        covered += low <= true_mean <= high
    # 193 of 200 with these draws; at a true 95%, 200 sets spread by about 1.5 points (binomial), and the
    # percentile bootstrap runs a little narrow on small samples, hence the band.
    assert 0.90 <= covered / sets <= 0.99, covered


def test_intervals_are_fixed_by_the_seed_and_paired_columns_resample_together():
    g = torch.Generator().manual_seed(1)
    samples = torch.rand(40, generator=g, dtype=torch.float64)
    assert bootstrap_interval(samples) == bootstrap_interval(samples.clone())
    assert bootstrap_interval(samples) != bootstrap_interval(samples, seed=1)
    # A difference of two columns that are equal row by row is exactly 0 in every resample...
    paired = torch.stack([samples, samples], dim=1)
    assert bootstrap_interval(paired, lambda s: s[..., 0].mean(1) - s[..., 1].mean(1)) == (0.0, 0.0)
    # ...and a constant offset comes back exactly, however noisy the columns.
    paired = torch.stack([samples + 0.5, samples], dim=1)
    low, high = bootstrap_interval(paired, lambda s: s[..., 0].mean(1) - s[..., 1].mean(1))
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)


def test_many_samples_are_resampled_in_blocks_and_infinities_do_not_become_nan(monkeypatch):
    import utils.evaluation.bootstrap as bootstrap

    samples = torch.arange(50, dtype=torch.float64)
    whole = bootstrap_interval(samples, resamples=300)
    monkeypatch.setattr(bootstrap, "BLOCK_ELEMENTS", 7 * 50)  # 7 resamples a block: the same draws
    assert bootstrap_interval(samples, resamples=300) == whole
    low, high = bootstrap_interval(torch.zeros(5), lambda s: -10 * torch.log10(s.mean(1)))
    assert low == high == math.inf


def test_no_samples_or_a_bad_level_is_refused():
    with pytest.raises(ValueError):
        bootstrap_interval(torch.zeros(0))
    with pytest.raises(ValueError):
        bootstrap_interval(torch.zeros(3), level=1.0)
