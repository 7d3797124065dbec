"""The chapters' study files are counted with the sure judge, and `benchmarks/results/every_value/` keeps the same
studies as counted before that rule (every value named), so that benchmarks/judge_rule_effect.py can show what the
rule changed: each pair is the same study (the same settings, the same shipped weights)."""

import json

import pytest

from benchmark_scripts import load_study

from sdtune.evaluation.judge import SURE
from sdtune.evaluation.provenance import REPO, check_weights

RESULTS = REPO / "benchmarks" / "results"
EVERY_VALUE = sorted((RESULTS / "every_value").glob("*.json"))


@pytest.mark.parametrize("path", EVERY_VALUE, ids=[p.stem for p in EVERY_VALUE])
def test_the_chapters_count_with_the_sure_judge_what_every_value_counted_before(path):
    every = json.loads(path.read_text())
    counted = json.loads((RESULTS / path.name).read_text())  # the file the chapters read: counted with the sure judge
    provenance = counted["provenance"]
    assert counted["judge_sure"] == SURE and f"--judge-sure {SURE}" in provenance["command"]
    assert provenance["git"] and not provenance["git"]["dirty"], "run it from a clean checkout, so that its commit says what ran"
    assert check_weights(counted) == [], f"{path.name} measured other weights: rerun its command"
    assert counted["settings"] == every["settings"], f"{path}: not the same study as {RESULTS / path.name}"
    assert check_weights(every) == [], f"{path} measured other weights than the chapters' file"
    assert every.get("judge_sure", 0) == 0


def test_there_is_something_to_check():
    """A folder emptied by mistake must not pass the check above vacuously."""
    assert len(EVERY_VALUE) >= 3


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
