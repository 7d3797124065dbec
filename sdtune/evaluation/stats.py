"""Rates with their uncertainty, and differences between methods that say when they are not resolved.

    rate = Rate(23, 24)                     # 23 of 24 images
    print(rate)                             # 23/24 = 96% [80%, 99%]   (Wilson 95% interval)
    paired_difference(a_ok, b_ok, "LoRA", "full")     # two methods, the same prompts and seeds: per-image outcomes
    rate_difference(Rate(20, 24), Rate(150, 200), "live", "study")   # two independent samples
    seed_difference([r0, r1, r2], [s0, s1, s2], "LoRA", "full")   # two methods over training seeds 0, 1, 2
    within_spread(live, [r0, r1, r2])       # a chapter's live run against the study's per-seed 95% intervals
    seed_rates({0: outcomes0, 1: outcomes1})  # {"pooled": k/n over the seeds, "per_seed": {"0": k/n, "1": k/n}}
    against(Rate(90, 96), 0.85)             # "met": the whole interval at or above the bar ("missed", "not resolved")

A difference reads "LoRA higher than full by 12 points [3, 21]" only when its 95% interval excludes zero;
otherwise "LoRA vs full: not resolved at this sample size (difference +4 points [-6, 14])". Points are
percentage points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

Z95 = 1.959963984540054  # the standard normal's 97.5% point: a two-sided 95% interval

MIN_SEEDS = 3  # the course's rule: a claim that one method beats another rests on at least 3 training seeds


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion k / n (Wilson 1927; Newcombe 1998's method 3).

    Unlike p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and does not collapse to a point at k = 0 or k = n.
    """
    _check_counts(k, n)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)  # (p + z^2/2n) / (1 + z^2/n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))  # z/(1+z^2/n) sqrt(p(1-p)/n + z^2/4n^2)
    if k == 0 or k == n:  # the bound at the edge is exactly 0 or 1; computed, it is off by rounding
        return (0.0, centre + half) if k == 0 else (centre - half, 1.0)
    return centre - half, centre + half


def _check_counts(k: int, n: int) -> None:
    if n <= 0:
        raise ValueError(f"A rate needs at least one trial: got k={k} of n={n}. Measure on at least one image.")
    if not 0 <= k <= n:
        raise ValueError(f"A rate counts k successes of n trials with 0 <= k <= n: got k={k}, n={n}.")


@dataclass(frozen=True)
class Rate:
    """k successes of n trials, with its Wilson 95% interval."""

    k: int
    n: int

    def __post_init__(self) -> None:
        _check_counts(self.k, self.n)

    @classmethod
    def of(cls, outcomes: Iterable[bool]) -> Rate:
        """Count the true outcomes: Rate.of(p == t for p, t in zip(predicted, truth))."""
        outcomes = [bool(o) for o in outcomes]
        return cls(sum(outcomes), len(outcomes))

    @property
    def value(self) -> float:
        return self.k / self.n

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    def __str__(self) -> str:
        low, high = self.interval
        return f"{self.k}/{self.n} = {100 * self.value:.0f}% [{100 * low:.0f}%, {100 * high:.0f}%]"

    def as_dict(self) -> dict[str, float]:
        """For results files: the counts, the rate and its interval."""
        low, high = self.interval
        return {"k": self.k, "n": self.n, "rate": self.value, "low": low, "high": high}


def against(rate: Rate, bar: float) -> str:
    """A rate against a threshold: "met" where its whole 95% interval lies at or above `bar`, "missed" where it lies
    below, otherwise "not resolved" (the sample cannot tell which side of the bar the method is on)."""
    low, high = rate.interval
    return "met" if low >= bar else "missed" if high < bar else "not resolved"


def bar_verdict(rates: Mapping[str, Rate], bar: Mapping[str, float]) -> tuple[str, dict[str, str]]:
    """A bar of several rates ({"style": 0.8, "shape": 0.85}): "met" where every rate meets its threshold (`against`),
    "missed" where one misses it, else "not resolved"; and the verdict per rate."""
    verdicts = {k: against(rates[k], v) for k, v in bar.items()}
    overall = "missed" if "missed" in verdicts.values() else "met" if set(verdicts.values()) == {"met"} else "not resolved"
    return overall, verdicts


def _points(x: float) -> str:
    """A difference in percentage points, one decimal where rounding would show a bound of 0 that is not 0."""
    value = 100 * x
    return f"{value:.1f}" if 0 < abs(value) < 1 else f"{value:.0f}"


@dataclass(frozen=True)
class Difference:
    """Rate of a minus rate of b, with its 95% interval, and what it means."""

    a: str
    b: str
    estimate: float
    low: float
    high: float
    method: str  # how the interval was computed

    @property
    def resolved(self) -> bool:
        """True when the interval excludes zero: the sign of the difference is then established."""
        return self.low > 0 or self.high < 0

    def verdict(self) -> str:
        if self.low > 0:
            return f"{self.a} higher than {self.b} by {_points(self.estimate)} points [{_points(self.low)}, {_points(self.high)}]"
        if self.high < 0:
            return f"{self.a} lower than {self.b} by {_points(-self.estimate)} points [{_points(-self.high)}, {_points(-self.low)}]"
        sign = "+" if self.estimate >= 0 else ""
        return (f"{self.a} vs {self.b}: not resolved at this sample size "
                f"(difference {sign}{_points(self.estimate)} points [{_points(self.low)}, {_points(self.high)}])")

    __str__ = verdict

    def as_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "difference": self.estimate, "low": self.low, "high": self.high,
                "resolved": self.resolved, "method": self.method, "verdict": self.verdict()}


def paired_difference(a: Sequence[bool], b: Sequence[bool], name_a: str = "A", name_b: str = "B") -> Difference:
    """Two methods judged on the same items (same prompts, same sampling seeds): p_a - p_b with its 95% interval.

    Newcombe's method 10 (Statistics in Medicine 1998; 17:2635), the square-and-add interval for paired
    proportions: Wilson intervals of the two rates, combined with the correlation phi of the paired outcomes.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference needs one outcome per item for both methods: got {len(a)} and {len(b)}.")
    a, b = [bool(x) for x in a], [bool(x) for x in b]
    n = len(a)
    both = sum(x and y for x, y in zip(a, b))
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    neither = n - both - only_a - only_b
    (l1, u1), (l2, u2) = wilson(both + only_a, n), wilson(both + only_b, n)  # refuses n = 0
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    cross = both * neither - only_a * only_b  # ad - bc
    # phi, the correlation of the paired outcomes, with Newcombe's correction: 0 unless |ad - bc| > n/2 when positive
    if margins == 0 or 0 <= cross <= n / 2:
        phi = 0.0
    else:
        phi = (cross - n / 2 if cross > 0 else cross) / math.sqrt(margins)
    d = p1 - p2
    down = math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    up = math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return Difference(name_a, name_b, d, d - down, d + up, f"paired over {n} items (Newcombe's method 10)")


def rate_difference(a: Rate, b: Rate, name_a: str = "A", name_b: str = "B") -> Difference:
    """Two rates from independent samples (say a live re-measurement and a study): p_a - p_b with its 95% interval,
    Newcombe's square-and-add interval (Statistics in Medicine 1998; 17:873, method 10) from the two Wilson intervals:
    d - sqrt((p_a - l_a)^2 + (u_b - p_b)^2) to d + sqrt((u_a - p_a)^2 + (p_b - l_b)^2)."""
    (la, ua), (lb, ub) = a.interval, b.interval
    d = a.value - b.value
    return Difference(name_a, name_b, d, d - math.hypot(a.value - la, ub - b.value), d + math.hypot(ua - a.value, b.value - lb),
                      f"independent samples of {a.n} and {b.n} (Newcombe's method 10)")


def t_quantile(df: int, q: float = 0.975) -> float:
    """The q quantile of Student's t with df degrees of freedom (12.706 for df = 1, 2.776 for df = 4).

    The density f(t) = Gamma((df+1)/2) / (sqrt(df pi) Gamma(df/2)) (1 + t^2/df)^(-(df+1)/2), integrated by
    Simpson's rule, and the quantile found by bisection: exact to about 1e-6, no scipy needed.
    """
    if df < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {df}.")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float, steps: int = 2000) -> float:  # 1/2 + integral of the density from 0 to x
        h = x / steps
        f = [math.exp(log_c - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(steps + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    low, high = 0.0, 1.0
    while cdf(high) < q:
        high *= 2
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < q else (low, mid)
    return (low + high) / 2


def seed_difference(a: Sequence[Rate | float], b: Sequence[Rate | float], name_a: str = "A", name_b: str = "B") -> Difference:
    """Two methods trained with the same seeds (a[i] and b[i] from seed i): the mean of the per-seed differences
    d_i = a_i - b_i with a t-interval over seeds, mean(d) +- t_{0.975, m-1} s / sqrt(m).

    s is the spread of the d_i, but never less than what each seed's finite sample alone would give (for Rates:
    sqrt(mean_i(p_a(1-p_a)/n_a + p_b(1-p_b)/n_b))): three seeds that happen to agree exactly do not make an interval
    of zero width."""
    if len(a) != len(b):
        raise ValueError(f"seed_difference pairs the methods by training seed: got {len(a)} and {len(b)} rates.")
    if len(a) < MIN_SEEDS:
        raise ValueError(f"seed_difference needs at least {MIN_SEEDS} training seeds per method (the course's rule for a "
                         f"claim that one method beats another), got {len(a)}: train each method again with other seeds.")
    rates_a = [r.value if isinstance(r, Rate) else float(r) for r in a]
    rates_b = [r.value if isinstance(r, Rate) else float(r) for r in b]
    d = [x - y for x, y in zip(rates_a, rates_b)]
    m = len(d)
    mean = sum(d) / m
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (m - 1))
    counted = [(r, q) for r, q in zip(a, b) if isinstance(r, Rate) and isinstance(q, Rate)]
    if len(counted) == m:  # the sampling floor: the variance one seed's k of n carries on its own
        within = sum(r.value * (1 - r.value) / r.n + q.value * (1 - q.value) / q.n for r, q in counted) / m
        sd = max(sd, math.sqrt(within))
    half = t_quantile(m - 1) * sd / math.sqrt(m)
    return Difference(name_a, name_b, mean, mean - half, mean + half, f"paired over {m} training seeds (t-interval)")


def seed_rates(outcomes: Mapping[int | str, Sequence[bool]]) -> dict:
    """One condition of a study, {training seed: per-image outcomes}: {"pooled": k/n over every seed, "per_seed":
    {seed: k/n}}, the layout the studies' results files and the chapters read."""
    return {"pooled": Rate.of(o for per_seed in outcomes.values() for o in per_seed),
            "per_seed": {str(s): Rate.of(o) for s, o in outcomes.items()}}


def study_spread(per_seed: Iterable[Rate]) -> tuple[float, float]:
    """Where a study's training seeds put one rate: from the lowest of their 95% lower bounds to the highest upper
    bound. A chapter's live run (one seed of the study, with its recipe) is checked against it by `within_spread`."""
    rates = list(per_seed)
    if not rates:
        raise ValueError("study_spread needs the study's per-seed rates: got none.")
    return min(r.interval[0] for r in rates), max(r.interval[1] for r in rates)


def within_spread(live: Rate | float, per_seed: Iterable[Rate]) -> bool:
    """Is a live run consistent with the study: does the live rate's own 95% interval reach the study's spread
    (`study_spread`)? A fraction, which has no interval, must lie inside the spread.

    The live run is one seed judged on a few prompts, and the same seed need not give the same images on another
    machine or thread count: a run at a learning rate that diverges is chaotic (chapter 03's lr 0.03 drew the style
    in 12/16 images on two threads and 16/16 on one). Its own interval is the tolerance that sampling allows."""
    low, high = study_spread(per_seed)
    if isinstance(live, Rate):
        live_low, live_high = live.interval
        return live_low <= high and live_high >= low
    return low <= float(live) <= high


def rate_bars(rates: Mapping[str, Rate] | Mapping[str, Mapping[str, Rate]], ax=None, title: str | None = None,
              ylabel: str = "rate (%)"):
    """Bars of rates (%) with their Wilson 95% intervals as error bars, each labelled k/n.

    `rates`: {label: Rate} for one series, or {group: {series: Rate}} for grouped bars (e.g. attribute -> method).
    Returns the matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    if not rates:
        raise ValueError("rate_bars got no rates to draw.")
    grouped = {g: (v if isinstance(v, Mapping) else {"": v}) for g, v in rates.items()}
    series = list(dict.fromkeys(s for v in grouped.values() for s in v))
    width = 0.8 / len(series)
    ax = ax or plt.subplots(figsize=(max(4.0, 1.2 * len(grouped) * len(series)), 3))[1]
    for j, name in enumerate(series):
        xs, heights, errors, labels = [], [], [[], []], []
        for i, group in enumerate(grouped.values()):
            if name in group:
                r = group[name]
                low, high = r.interval
                xs.append(i + (j - (len(series) - 1) / 2) * width)
                heights.append(100 * r.value)
                errors[0].append(100 * (r.value - low))
                errors[1].append(100 * (high - r.value))
                labels.append(f"{r.k}/{r.n}")
        bars = ax.bar(xs, heights, width * 0.9, yerr=errors, capsize=3, label=name or None)
        ax.bar_label(bars, labels, label_type="center", fontsize=7)
    ax.set_xticks(range(len(grouped)), list(grouped))
    ax.set_ylim(0, 112)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8, loc="lower right")
    return ax
