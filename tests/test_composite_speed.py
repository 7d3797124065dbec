"""benchmarks/composite_speed.py's results file adds up, and README's figures are the file's (timings are not asserted:
a benchmark prints them; tests/test_composition.py checks that the batched composite's prediction is the mean of the
separate passes')."""

import json
import statistics

from sdtune.evaluation.provenance import REPO, check_weights

RESULTS = json.loads((REPO / "benchmarks" / "results" / "composite_speed_cpu.json").read_text())
BATCHED, SEQUENTIAL = "composite, one batched call (sdtune)", "composite, sequential 3 passes (reference)"


def test_the_file_adds_up():
    assert check_weights(RESULTS) == [] and not RESULTS["provenance"]["git"]["dirty"]
    per_round = RESULTS["seconds_per_image"]
    ratios = [b / s for b, s in zip(per_round[BATCHED], per_round[SEQUENTIAL])]
    assert RESULTS["ratio_per_round"] == ratios and RESULTS["ratio_median"] == statistics.median(ratios)
    assert RESULTS["median_seconds_per_image"] == {k: statistics.median(v) for k, v in per_round.items()}
    assert RESULTS["target_met_every_round"] == (max(ratios) <= RESULTS["target"])
    assert len(ratios) == RESULTS["settings"]["rounds"] >= 3


def test_the_readme_quotes_the_file():
    text = " ".join((REPO / "README.md").read_text().split())
    at = text.index("python benchmarks/composite_speed.py")
    paragraph = text[at:at + 1200]
    median = RESULTS["median_seconds_per_image"]
    for setting in median:
        assert f"{median[setting]:.3f}" in paragraph, setting
    assert f"{RESULTS['ratio_median']:.2f}x of the sequential passes" in paragraph
    assert "per round " + ", ".join(f"{r:.2f}" for r in RESULTS["ratio_per_round"][:-1]) in paragraph
    assert f"difference {RESULTS['max_image_difference']:.1e}" in paragraph
