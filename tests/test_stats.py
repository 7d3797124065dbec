"""Rates and differences: known values from the literature, edge cases, and verdicts that switch exactly at zero."""

import matplotlib

matplotlib.use("Agg")

import pytest

from sdtune.evaluation.stats import (Difference, Rate, against, bar_verdict, paired_difference, rate_bars, rate_difference,
                                     seed_difference, seed_rates, study_spread, t_quantile, wilson, within_spread)


@pytest.mark.parametrize("k, n, low, high", [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Statistics in Medicine 17:857,
    # Table II, method 3 (Wilson score, no continuity correction); the same values from statsmodels 0.14
    # proportion_confint(k, n, method="wilson"), computed once: 0.2552885, 0.3662096 / 0.0623864, 0.1604872 / ...
    (81, 263, 0.2552885, 0.3662096),
    (15, 148, 0.0623864, 0.1604872),
    (0, 20, 0.0, 0.1611252),
    (1, 29, 0.0061132, 0.1717552),
    (23, 24, 0.7975819, 0.9926065),  # statsmodels, as above
])
def test_wilson_matches_published_values(k, n, low, high):
    assert wilson(k, n) == pytest.approx((low, high), abs=1e-6)


def test_rate_reads_as_counts_percent_and_interval():
    assert str(Rate(23, 24)) == "23/24 = 96% [80%, 99%]"
    assert Rate.of([True, False, True, True]) == Rate(3, 4)
    assert Rate(3, 4).as_dict()["rate"] == 0.75


def test_rate_edges_and_refusals():
    assert Rate(0, 24).interval[0] == 0.0 and Rate(0, 24).interval[1] > 0.1  # no collapse to a point at k = 0
    assert Rate(24, 24).interval[1] == 1.0 and Rate(24, 24).interval[0] < 0.9
    with pytest.raises(ValueError, match="at least one trial"):
        Rate(0, 0)
    with pytest.raises(ValueError, match="at least one trial"):
        Rate.of([])
    with pytest.raises(ValueError, match="0 <= k <= n"):
        Rate(5, 4)


def test_paired_difference_matches_the_textbook():
    # Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017), chapter 8: complete response
    # before and after consolidation therapy (Cavo et al. 2012), table [[59, 6], [16, 80]]; Newcombe square-and-add:
    # estimate -0.0621, 95% CI -0.1186 to -0.0046 (their R package contingencytables, tests/testthat, chapter 8).
    a = [1] * 59 + [1] * 6 + [0] * 16 + [0] * 80
    b = [1] * 59 + [0] * 6 + [1] * 16 + [0] * 80
    d = paired_difference(a, b, "after", "before")
    assert (d.estimate, d.low, d.high) == pytest.approx((-0.0621, -0.1186, -0.0046), abs=5e-5)
    assert d.resolved and d.verdict() == "after lower than before by 6 points [0.5, 12]"


def test_rate_difference_matches_newcombe():
    # Newcombe (1998), "Interval estimation for the difference between independent proportions", Statistics in
    # Medicine 17:873, Table II example (e): 56/70 vs 48/80, method 10 (score, no continuity correction):
    # difference 0.2000, 95% CI 0.0524 to 0.3339
    d = rate_difference(Rate(56, 70), Rate(48, 80), "a", "b")
    assert (d.estimate, d.low, d.high) == pytest.approx((0.2, 0.0524, 0.3339), abs=5e-5)
    assert not rate_difference(Rate(112, 120), Rate(255, 264)).resolved  # 93% of 120 is consistent with 97% of 264


def test_paired_difference_edges():
    same = paired_difference([True] * 10, [True] * 10)
    assert same.estimate == 0 and same.low < 0 < same.high and not same.resolved
    every = paired_difference([True] * 30, [False] * 30, "A", "B")
    assert every.resolved and every.low > 0.5
    with pytest.raises(ValueError, match="one outcome per item"):
        paired_difference([True], [True, False])
    with pytest.raises(ValueError, match="at least one trial"):
        paired_difference([], [])


def test_t_quantile_matches_the_table():
    # Student's t, two-sided 95% (any statistics table; scipy.stats.t.ppf(0.975, df))
    for df, t in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)]:
        assert t_quantile(df) == pytest.approx(t, abs=1e-4)


def test_seed_difference_is_a_t_interval_over_seeds():
    d = seed_difference([0.9, 0.8, 0.85], [0.7, 0.75, 0.6], "LoRA", "full")
    # differences 0.20, 0.05, 0.25: mean 1/6, sd 0.1041, half-width 4.3027 * 0.1041 / sqrt(3) = 0.2586
    assert (d.estimate, d.high - d.estimate) == pytest.approx((1 / 6, 0.2586), abs=1e-4)
    assert d.verdict() == "LoRA vs full: not resolved at this sample size (difference +17 points [-9, 43])"
    assert seed_difference([Rate(9, 10), Rate(8, 10), Rate(7, 10)], [Rate(5, 10)] * 3).estimate == pytest.approx(0.3)
    with pytest.raises(ValueError, match="at least 3 training seeds"):
        seed_difference([0.9, 0.8], [0.7, 0.6])
    with pytest.raises(ValueError, match="pairs the methods by training seed"):
        seed_difference([0.9, 0.8, 0.7], [0.7])


def test_seeds_that_agree_exactly_keep_their_sampling_uncertainty():
    """Three seeds with the same difference, each 20/32 vs 18/32: the spread over seeds is 0, the interval is not."""
    d = seed_difference([Rate(20, 32)] * 3, [Rate(18, 32)] * 3)
    floor = ((20 / 32) * (12 / 32) / 32 + (18 / 32) * (14 / 32) / 32) ** 0.5
    assert d.high - d.estimate == pytest.approx(4.3027 * floor / 3 ** 0.5, abs=1e-4) and not d.resolved
    assert seed_difference([0.625] * 3, [0.5625] * 3).high == pytest.approx(0.0625)  # plain numbers: no floor to add


@pytest.mark.parametrize("low, high, expected", [
    (0.001, 0.2, "A higher than B by 10 points [0.1, 20]"),
    (0.0, 0.2, "A vs B: not resolved at this sample size (difference +10 points [0, 20])"),
    (-0.001, 0.2, "A vs B: not resolved at this sample size (difference +10 points [-0.1, 20])"),
])
def test_verdict_switches_exactly_when_the_interval_leaves_zero(low, high, expected):
    assert Difference("A", "B", 0.1, low, high, "test").verdict() == expected
    mirrored = Difference("A", "B", -0.1, -high, -low, "test")
    assert mirrored.resolved == (low > 0)
    assert mirrored.verdict().startswith("A lower than B by 10 points" if low > 0 else "A vs B: not resolved")


def test_seed_verdict_switches_when_the_seeds_agree():
    spread = seed_difference([0.9, 0.8, 0.7], [0.8, 0.8, 0.8])  # differences +10, 0, -10: unresolved
    steady = seed_difference([0.9, 0.9, 0.9], [0.8, 0.79, 0.81])  # +10 every seed
    assert not spread.resolved and steady.resolved and steady.verdict().startswith("A higher than B by 10 points")


def test_rate_bars_draw_the_intervals():
    ax = rate_bars({"shape": {"judge": Rate(20, 24), "checker": Rate(12, 24)}, "colour": {"judge": Rate(24, 24)}})
    bars = [p for p in ax.patches]
    assert [round(b.get_height(), 3) for b in bars] == [83.333, 100.0, 50.0]
    errorbars = [c for c in ax.containers if hasattr(c, "has_yerr") and c.has_yerr]
    low, high = Rate(20, 24).interval
    segment = errorbars[0].lines[2][0].get_segments()[0]  # the first bar's vertical error line
    assert [y for _, y in segment] == pytest.approx([100 * low, 100 * high])
    assert "20/24" in [t.get_text() for t in ax.texts]
    with pytest.raises(ValueError, match="no rates"):
        rate_bars({})


def test_a_live_run_is_within_the_spread_of_the_study_seeds_intervals():
    seeds = [Rate(10, 24), Rate(14, 24), Rate(12, 24)]
    low, high = study_spread(seeds)
    assert (low, high) == (Rate(10, 24).interval[0], Rate(14, 24).interval[1])
    assert within_spread(Rate(12, 24), seeds) and within_spread(low, seeds) and within_spread(high, seeds)
    assert not within_spread(Rate(24, 24), seeds) and not within_spread(Rate(0, 24), seeds)
    assert not within_spread(high + 1e-9, seeds)
    # a live rate's own interval is its tolerance: 16/16 [81%, 100%] reaches seeds of 14/16, not seeds of 2/16
    assert within_spread(Rate(16, 16), [Rate(14, 16)] * 3) and not within_spread(Rate(16, 16), [Rate(2, 16)] * 3)
    with pytest.raises(ValueError, match="per-seed rates"):
        study_spread([])


def test_a_rate_meets_a_bar_only_where_its_whole_interval_clears_it():
    """90/96 = 94% [87%, 97%] clears 85%; 82/96 = 85% [77%, 91%] straddles it; 70/96 = 73% [63%, 81%] is below."""
    assert against(Rate(90, 96), 0.85) == "met"
    assert against(Rate(82, 96), 0.85) == "not resolved"
    assert against(Rate(70, 96), 0.85) == "missed"
    assert against(Rate(0, 5), 0.0) == "met"  # a bar of zero is always cleared


def test_a_bar_of_several_rates_is_missed_by_one_miss_and_met_only_when_every_rate_meets_it():
    bar = {"style": 0.8, "shape": 0.85}
    assert bar_verdict({"style": Rate(90, 96), "shape": Rate(92, 96)}, bar) == ("met", {"style": "met", "shape": "met"})
    assert bar_verdict({"style": Rate(90, 96), "shape": Rate(82, 96)}, bar)[0] == "not resolved"
    assert bar_verdict({"style": Rate(60, 96), "shape": Rate(82, 96)}, bar) == ("missed", {"style": "missed", "shape": "not resolved"})


def test_seed_rates_pools_every_seeds_outcomes_and_keeps_each_seeds_count():
    rates = seed_rates({0: [True, True, False], 1: [False, False, False], 2: [True, True, True]})
    assert rates["pooled"] == Rate(5, 9)
    assert rates["per_seed"] == {"0": Rate(2, 3), "1": Rate(0, 3), "2": Rate(3, 3)}
