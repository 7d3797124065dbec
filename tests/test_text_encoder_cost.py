"""benchmarks/text_encoder_cost.py: the committed timing of chapter 04's two recipes adds up and is what chapter 04
reads (its figures are times on one machine: a test compares the file with itself and the chapter, not with a new
timing, which would measure the test machine)."""

import json

import pytest

from benchmark_scripts import load_study

from sdtune.evaluation.provenance import REPO, check_weights
from sdtune.evaluation.stats import seed_difference

RESULTS = REPO / "benchmarks" / "results" / "text_encoder_cost_cpu.json"
CHAPTER = REPO / "course" / "04_unet_vs_text_encoder_lora.ipynb"


def test_the_timing_is_of_chapter_04s_recipe_and_its_difference_is_the_rounds():
    results = json.loads(RESULTS.read_text())
    assert check_weights(results) == [], "timed on other weights: rerun python benchmarks/text_encoder_cost.py"
    study = load_study("unet_vs_text_encoder")
    settings = results["settings"]
    assert settings["recipe"] == study.FIXED and settings["text_encoder_lr"] == study.TE_LR and settings["rounds"] >= 2
    seconds = results["seconds"]
    assert len(seconds["UNet"]) == len(seconds["TE + UNet"]) == settings["rounds"] == len(results["load_average"])
    again = seed_difference(seconds["TE + UNet"], seconds["UNet"])
    d = results["difference"]
    assert (d["seconds"], d["low"], d["high"], d["resolved"]) == pytest.approx((again.estimate, again.low, again.high, again.resolved))


def test_chapter_04_takes_the_cost_in_time_from_it():
    code = "\n".join("".join(c["source"]) for c in json.loads(CHAPTER.read_text())["cells"] if c["cell_type"] == "code")
    assert "benchmarks/results/text_encoder_cost_cpu.json" in code and 'study["train_s_difference"]' not in code
