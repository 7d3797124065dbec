"""Chapter 11's combinations over three trainings of its two LoRAs (benchmarks/fusion_study.py): the committed results
add up and are the chapter's settings, and the prediction errors of the shipped pair (the study's training seed 0)
are computed again here and compared with the logged ones."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from benchmark_scripts import load_study

import sdtune
from sdtune.algebra import combine
from sdtune.data import toyworld
from sdtune.evaluation.judge import SURE
from sdtune.evaluation.provenance import REPO, check_weights
from sdtune.evaluation.stats import Rate, seed_difference
from sdtune.formats.adapters import remove_adapter

RESULTS = REPO / "benchmarks" / "results" / "fusion_study_cpu.json"
CHAPTER = REPO / "course" / "11_lora_fusion.ipynb"
LORAS = Path(sdtune.__file__).parent / "assets" / "loras"


@pytest.fixture(scope="module")
def study():
    return load_study("fusion_study")


@pytest.fixture(scope="module")
def results():
    return json.loads(RESULTS.read_text())


def test_committed_results_are_the_chapters_recipes_counted_by_the_course_judge_and_add_up(study, results):
    assert check_weights(results) == [], "the study measured other weights: rerun python benchmarks/fusion_study.py"
    assert results["judge_sure"] == SURE and not results["provenance"]["git"]["dirty"]
    settings = results["settings"]
    seeds = [str(s) for s in settings["seeds"]]
    assert len(seeds) >= 3 and (settings["prompts"], settings["steps"], settings["weights"]) == (study.N, study.STEPS, study.WEIGHTS)
    assert settings["recipes"] == {name: [method, kw] for name, (method, kw) in study.RECIPES.items()}
    assert list(results["rates"]) == ["pink", "dotted", *study.RECIPES]
    for condition, measures in results["rates"].items():
        for rates in measures.values():
            assert list(rates["per_seed"]) == seeds and all(r["n"] == study.N for r in rates["per_seed"].values())
            assert rates["pooled"]["k"] == sum(r["k"] for r in rates["per_seed"].values())
    assert [(d["a"], d["b"], d["measure"]) for d in results["differences"]] == [tuple(x) for x in study.DIFFERENCES]
    for d in results["differences"]:
        per_seed = [[Rate(r["k"], r["n"]) for r in results["rates"][c][d["measure"]]["per_seed"].values()] for c in (d["a"], d["b"])]
        again = seed_difference(*per_seed)
        assert (d["difference"], d["low"], d["resolved"]) == pytest.approx((again.estimate, again.low, again.resolved))


def test_the_shipped_pairs_prediction_errors_are_the_logged_seed_0s(study, results, tmp_path):
    """The shipped pink and dotted LoRAs are the study's training seed 0: combined again by linear and by svd at rank
    8, their prediction errors must be the logged ones within 0.02 (exact algebra and one UNet pass per file)."""
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    prompts = [toyworld.caption(s) for s in study.scenes()]
    loras = [load_file(LORAS / "pink.safetensors"), load_file(LORAS / "dotted.safetensors")]
    base = study.unet_out(pipe, prompts)
    sdtune.load_adapter(pipe, LORAS / "pink.safetensors", "pink")
    sdtune.load_adapter(pipe, LORAS / "dotted.safetensors", "dotted")
    pipe.set_adapters(["pink", "dotted"], study.WEIGHTS)
    both = study.unet_out(pipe, prompts)
    remove_adapter(pipe, "pink")
    remove_adapter(pipe, "dotted")
    for name in ("linear", "svd k=8"):
        method, kw = study.RECIPES[name]
        path = tmp_path / f"{method}.safetensors"
        save_file({k: v.half() for k, v in combine(loras, study.WEIGHTS, method, **kw)[0].items()}, str(path))
        sdtune.load_adapter(pipe, path, "combo")
        error = float((study.unet_out(pipe, prompts) - both).norm() / (both - base).norm())
        remove_adapter(pipe, "combo")
        assert error == pytest.approx(results["prediction_error"][name]["0"], abs=0.02), name


def test_chapter_11_reads_the_study():
    code = "\n".join("".join(c["source"]) for c in json.loads(CHAPTER.read_text())["cells"] if c["cell_type"] == "code")
    assert "benchmarks/results/fusion_study_cpu.json" in code and "check_weights(fusion) == []" in code
    assert "within_spread(" in code
