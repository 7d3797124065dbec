"""Chapter 13's study over three distillations (benchmarks/lcm_study.py): the committed results add up, are the
shipped recipe's, and the control the chapter's conclusion rests on (the base model with LCMScheduler at guidance 1,
no LoRA) is measured again here and compared with the logged counts."""

import json

import pytest
from diffusers import LCMScheduler

from benchmark_scripts import load_study

import sdtune
from sdtune.evaluation.judge import SURE
from sdtune.evaluation.provenance import REPO, check_weights
from sdtune.evaluation.stats import Rate, seed_difference
from sdtune.models.toy_loras import LCM, LCM_PROMPTS

RESULTS = REPO / "benchmarks" / "results" / "lcm_study_cpu.json"
CHAPTER = REPO / "course" / "13_lcm_lora.ipynb"


@pytest.fixture(scope="module")
def study():
    return load_study("lcm_study")


@pytest.fixture(scope="module")
def results():
    return json.loads(RESULTS.read_text())


def test_committed_results_are_the_shipped_recipe_counted_by_the_course_judge_and_add_up(study, results):
    assert check_weights(results) == [], "the study measured other weights: rerun python benchmarks/lcm_study.py"
    assert results["judge_sure"] == SURE and not results["provenance"]["git"]["dirty"]
    settings = results["settings"]
    seeds = [str(s) for s in settings["seeds"]]
    assert len(seeds) >= 3 and settings["recipe"] == LCM and settings["prompts"] == len(LCM_PROMPTS)
    for condition, measures in results["conditions"].items():
        for m, rates in measures.items():
            per_seed = rates["per_seed"]
            assert list(per_seed) == seeds
            assert rates["pooled"]["k"] == sum(r["k"] for r in per_seed.values())
            assert rates["pooled"]["n"] == sum(r["n"] for r in per_seed.values())
            if not condition.startswith("LCM"):  # no distillation in it: the same images for every seed
                assert len({r["k"] for r in per_seed.values()}) == 1, f"{condition}, {m}"
    assert [(d["a"], d["b"], d["measure"]) for d in results["differences"]] == [tuple(x) for x in study.DIFFERENCES]
    for d in results["differences"]:
        rates = [[Rate(r["k"], r["n"]) for r in results["conditions"][c][d["measure"]]["per_seed"].values()] for c in (d["a"], d["b"])]
        again = seed_difference(*rates, d["a"], d["b"])
        assert (d["difference"], d["low"], d["resolved"]) == pytest.approx((again.estimate, again.low, again.resolved))


def test_the_scheduler_at_guidance_1_without_the_lora_draws_what_the_study_logged(results):
    """The chapter's control, measured again: LCMScheduler on the base model, guidance 1, 2 and 4 steps, the 24
    prompts in one batch with seed 0. It involves no training, so the count must match the log within two images of
    24 (what floating-point differences between machines can move)."""
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    study = load_study("lcm_study")
    judge = sdtune.load_judge(sure=results["judge_sure"])
    for steps in (2, 4):
        right = study.evaluate(pipe, judge, LCM_PROMPTS, steps, 1.0)
        logged = results["conditions"][f"LCMScheduler g1, no LoRA {steps}"]["all"]["per_seed"]["0"]["k"]
        assert abs(sum(right["all"]) - logged) <= 2, f"{steps} steps: {sum(right['all'])} right now, {logged} logged"


def test_chapter_13_reads_the_study_and_rests_its_verdicts_on_it():
    code = "\n".join("".join(c["source"]) for c in json.loads(CHAPTER.read_text())["cells"] if c["cell_type"] == "code")
    assert "benchmarks/results/lcm_study_cpu.json" in code and "check_weights(study) == []" in code
    assert "within_spread(r[\"rates\"][\"all\"], seeds)" in code
    assert 'S("LCM-LoRA 2", "LCMScheduler g1, no LoRA 2")' in code  # the control the conclusion names
