"""The studies counted again with the sure judge (`benchmarks/results/judge_sure/`): each file is the same study as the
one the chapters read (the same settings, the same shipped weights), run from a clean checkout with --judge-sure at
the threshold the judge-agreement study tested, and says so itself."""

import json

import pytest

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
