"""Chapter 14's probe and cut over three trainings of the concept LoRAs (benchmarks/block_cut_study.py): the committed
results add up and are the chapter's settings, and the probe of the shipped pink LoRA (the study's training seed 0)
is measured again here and compared with the logged losses."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from benchmark_scripts import load_study

import sdtune
from sdtune.evaluation import blocks
from sdtune.evaluation.judge import SURE
from sdtune.evaluation.provenance import REPO, check_weights
from sdtune.evaluation.stats import Rate, seed_difference

RESULTS = REPO / "benchmarks" / "results" / "block_cut_study_cpu.json"
CHAPTER = REPO / "course" / "14_b_lora.ipynb"
LORAS = Path(sdtune.__file__).parent / "assets" / "loras"


@pytest.fixture(scope="module")
def study():
    return load_study("block_cut_study")


@pytest.fixture(scope="module")
def results():
    return json.loads(RESULTS.read_text())


def test_committed_results_are_the_chapters_settings_counted_by_the_course_judge_and_add_up(study, results):
    assert check_weights(results) == [], "the study measured other weights: rerun python benchmarks/block_cut_study.py"
    assert results["judge_sure"] == SURE and not results["provenance"]["git"]["dirty"]
    settings = results["settings"]
    seeds = [str(s) for s in settings["seeds"]]
    assert len(seeds) >= 3 and (settings["probe_prompts"], settings["probe_steps"], settings["mix_prompts"]) == (
        study.N_PROBE, study.PROBE_STEPS, study.N_MIX)
    for pair, methods in results["rates"].items():
        assert list(methods) == list(study.METHODS)
        for measures in methods.values():
            for rates in measures.values():
                assert list(rates["per_seed"]) == seeds and all(r["n"] == study.N_MIX for r in rates["per_seed"].values())
                assert rates["pooled"]["k"] == sum(r["k"] for r in rates["per_seed"].values())
    assert [(d["pair"], d["measure"], d["a"], d["b"]) for d in results["differences"]] == [tuple(x) for x in study.DIFFERENCES]
    for d in results["differences"]:
        per_seed = [[Rate(r["k"], r["n"]) for r in results["rates"][d["pair"]][m][d["measure"]]["per_seed"].values()]
                    for m in (d["a"], d["b"])]
        again = seed_difference(*per_seed)
        assert (d["difference"], d["low"], d["resolved"]) == pytest.approx((again.estimate, again.low, again.resolved))
    for concept, tops in results["probe"]["top"].items():
        for seed, group in tops.items():
            losses = results["probe"]["loss"][concept][seed]
            assert losses[group] == max(losses.values())


def test_the_probe_of_the_shipped_pink_lora_reproduces_the_logged_losses(study, results):
    """The shipped pink LoRA is the study's training seed 0 (saved in half precision): its probe, run again, must give
    the logged loss of every block group within 0.1 (a score is a mean over 8 images)."""
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    judge = sdtune.load_judge(sure=results["judge_sure"])
    update = blocks.deltas(pipe.unet, load_file(LORAS / "pink.safetensors"))
    heat = blocks.probe(pipe, judge, update, "colour", "pink", study.concept_prompts(["pink"], study.N_PROBE), study.PROBE_STEPS)
    logged = results["probe"]["loss"]["pink"]["0"]
    for group, loss in blocks.losses(heat).items():
        assert loss == pytest.approx(logged[group], abs=0.1), group


def test_chapter_14_reads_the_study():
    code = "\n".join("".join(c["source"]) for c in json.loads(CHAPTER.read_text())["cells"] if c["cell_type"] == "code")
    assert "benchmarks/results/block_cut_study_cpu.json" in code and "check_weights(cut_study) == []" in code
    assert "within_spread(" in code
