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
    assert bootstrap_interval(paired, lambda m: m[..., 0] - m[..., 1]) == (0.0, 0.0)
    # ...and a constant offset comes back exactly, however noisy the columns.
    paired = torch.stack([samples + 0.5, samples], dim=1)
    low, high = bootstrap_interval(paired, lambda m: m[..., 0] - m[..., 1])
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)


def test_many_samples_are_resampled_in_blocks_and_infinities_do_not_become_nan(monkeypatch):
    import utils.evaluation.bootstrap as bootstrap

    samples = torch.arange(50, dtype=torch.float64)
    whole = bootstrap_interval(samples, resamples=300)
    monkeypatch.setattr(bootstrap, "BLOCK_ELEMENTS", 7 * 50)  # 7 resamples a block: the same draws
    assert bootstrap_interval(samples, resamples=300) == whole
    low, high = bootstrap_interval(torch.zeros(5), lambda m: -10 * torch.log10(m))
    assert low == high == math.inf


def test_clustered_queries_are_resampled_by_cluster_and_then_cover_the_true_mean():
    # 20 hotels of 20 queries each, the hotel's shared effect (sd 1) far larger than the per-query noise (sd
    # 0.1): 400 queries that carry about 20 draws' worth of information about the mean.
    g = torch.Generator().manual_seed(2)
    hotels = torch.arange(20).repeat_interleave(20)
    covered_by_query = covered_by_hotel = 0
    sets = 100
    for _ in range(sets):
        samples = torch.randn(20, generator=g, dtype=torch.float64)[hotels] + 0.1 * torch.randn(
            400, generator=g, dtype=torch.float64)
        low, high = bootstrap_interval(samples, resamples=500)
        covered_by_query += low <= 0 <= high
        low, high = bootstrap_interval(samples, clusters=hotels, resamples=500)
        assert low <= samples.mean().item() <= high
        covered_by_hotel += low <= 0 <= high
    # Resampling queries treats 400 correlated values as independent: an interval ~4.5x too narrow, which
    # covers the true mean about a third of the time (30 of these 100 sets); resampling hotels brings it
    # back to 89 of 100 (the percentile bootstrap runs a little narrow on 20 clusters).
    assert covered_by_query / sets < 0.6, covered_by_query
    assert 0.85 <= covered_by_hotel / sets <= 1.0, covered_by_hotel


def test_one_query_per_cluster_is_the_plain_bootstrap_and_cluster_ids_are_only_labels():
    g = torch.Generator().manual_seed(3)
    samples = torch.rand(30, 2, generator=g, dtype=torch.float64)
    difference = lambda m: m[..., 0] - m[..., 1]  # noqa: E731
    plain = bootstrap_interval(samples, difference)
    assert bootstrap_interval(samples, difference, clusters=torch.arange(30)) == pytest.approx(plain, abs=1e-12)
    hotels = torch.arange(10).repeat_interleave(3)
    by_hotel = bootstrap_interval(samples, difference, clusters=hotels)
    assert by_hotel != pytest.approx(plain, abs=1e-12)
    # Only which rows share an id matters, not the ids' values.
    assert bootstrap_interval(samples, difference, clusters=hotels * 7 + 100) == by_hotel
    with pytest.raises(ValueError):
        bootstrap_interval(samples, clusters=hotels[:-1])


def test_no_samples_or_a_bad_level_is_refused():
    with pytest.raises(ValueError):
        bootstrap_interval(torch.zeros(0))
    with pytest.raises(ValueError):
        bootstrap_interval(torch.zeros(3), level=1.0)
