"""The studies counted again with the sure judge (`benchmarks/results/judge_sure/`): each file is the same study as the
one the chapters read (the same settings, the same shipped weights), run from a clean checkout with --judge-sure at
the threshold the judge-agreement study tested, and says so itself."""

import json

import pytest

from benchmark_scripts import load_study

from sdtune.evaluation.judge import SURE
from sdtune.evaluation.provenance import REPO, check_weights

RESULTS = REPO / "benchmarks" / "results"
SURE_RESULTS = sorted((RESULTS / "judge_sure").glob("*.json"))


@pytest.mark.parametrize("path", SURE_RESULTS, ids=[p.stem for p in SURE_RESULTS])
def test_a_sure_count_is_the_same_study_counted_with_the_sure_judge(path):
    counted = json.loads(path.read_text())
    every = json.loads((RESULTS / path.name).read_text())  # the file the chapters read: every value named
    provenance = counted["provenance"]
    assert counted["judge_sure"] == SURE and f"--judge-sure {SURE}" in provenance["command"]
    assert provenance["git"] and not provenance["git"]["dirty"], "run it from a clean checkout, so that its commit says what ran"
    assert check_weights(counted) == [], f"{path.name} measured other weights: rerun its command"
    assert counted["settings"] == every["settings"], f"{path.name}: not the same study as {RESULTS / path.name}"
    assert every.get("judge_sure", 0) == 0


def test_there_is_something_to_check():
    """A folder emptied by mistake must not pass the check above vacuously."""
    assert len(SURE_RESULTS) >= 3


def test_the_rule_effect_tells_a_changed_conclusion_from_moved_figures_and_a_rise_from_a_drop():
    """benchmarks/judge_rule_effect.py on two made-up counts of one study: a verdict that turns from resolved to not
    resolved is a changed conclusion, one whose interval only moves is not; a rate that rose is reported as such."""
    effect_script = load_study("judge_rule_effect")
    every = {"rates": {"a": {"k": 9, "n": 10}, "b": {"k": 4, "n": 10}},
             "differences": [{"verdict": "A higher than B by 50 points [10, 90]"},
                             {"verdict": "A lower than C by 20 points [5, 35]"}]}
    sure = {"rates": {"a": {"k": 7, "n": 10}, "b": {"k": 5, "n": 10}},
            "differences": [{"verdict": "A vs B: not resolved at this sample size (difference +20 points [-10, 50])"},
                            {"verdict": "A lower than C by 25 points [8, 42]"}]}
    effect = effect_script.compare(every, sure)
    assert (effect["rates"], effect["moved"], effect["rose"], effect["verdicts"]) == (2, 2, ["/rates/b"], 2)
    assert effect_script.concluded_otherwise(effect) == [(every["differences"][0]["verdict"], sure["differences"][0]["verdict"])]
    assert len(effect["changed"]) == 2
