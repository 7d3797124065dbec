"""A live run against one arm of a committed study: each of its rates must be consistent with the arm's pooled rate
(the 95% interval of the difference includes zero)."""

from typing import Mapping, Sequence

from sdtune.evaluation.stats import Rate, rate_difference


def assert_within_arm(live: Mapping[str, Rate], arm: Mapping[str, dict], measures: Sequence[str] = ("style", "shape", "colour"),
                      name: str = "this run") -> None:
    """`arm`: the study's results for one recipe at one guidance, {measure: {"pooled": {"k", "n"}, ...}}."""
    for measure in measures:
        pooled = arm[measure]["pooled"]
        difference = rate_difference(live[measure], Rate(pooled["k"], pooled["n"]), name, "the study")
        assert not difference.resolved, f"{measure}: {difference}"
