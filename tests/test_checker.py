"""The independent pixel-rule checker: right on clean renders and VAE round trips, as its logged validation says,
and honest ("unsure") where there is nothing to name."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sdtune
from sdtune.data import toyworld
from sdtune.evaluation import checker
from sdtune.evaluation.judge import UNSURE
from sdtune.evaluation.provenance import check_weights
from sdtune.evaluation.stats import Rate
from sdtune.models.pretrain import all_concept_scenes, round_trip

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "judge_agreement_cpu.json"
BARS = {"shape": 0.90, "colour": 0.95, "background": 0.95, "style": 0.90}  # the checker's own: those it holds the judge to


def accuracy(images, scenes) -> dict[str, Rate]:
    named = checker.check_all(images)
    return {k: Rate.of(n == getattr(s, k) for n, s in zip(named[k], scenes)) for k in toyworld.ATTRIBUTES}


@pytest.fixture(scope="module")
def validation():
    logged = json.loads(RESULTS.read_text())
    assert check_weights(logged) == [], "the logged validation describes other weights: rerun benchmarks/judge_agreement.py"
    return logged["validation"]


@pytest.mark.parametrize("kind", ["clean renders", "VAE round trips"])
def test_checker_matches_its_logged_validation(validation, kind):
    """A fresh sample (other scenes than the log's) re-measured: the logged rate lies in the fresh rate's interval."""
    scenes = all_concept_scenes(120, seed=31337)
    x = torch.from_numpy(np.stack([toyworld.render_array(s) for s in scenes])).float().permute(0, 3, 1, 2)
    if kind == "VAE round trips":
        with torch.no_grad():
            x = round_trip(sdtune.load_pipeline("tiny").vae, x)
    fresh = accuracy(x, scenes)
    for k, rate in fresh.items():
        low, high = rate.interval
        logged = validation[kind][k]["rate"]
        assert low <= logged <= high, f"{kind}, {k}: fresh {rate}, logged {logged:.3f}"
        assert validation[kind][k]["rate"] >= BARS[k], f"{kind}, {k}: the logged accuracy is below {BARS[k]:.0%}"


@pytest.fixture(scope="module")
def study_images():
    """The study's first base-prompt images (sampling seed 7), drawn again."""
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    return sdtune.sample(pipe, [toyworld.caption(s) for s in toyworld.base_prompts()], seed=7)


def test_agreement_on_base_prompts_matches_the_study(validation, guessing_judge, study_images):
    """The study's first base-prompt images (sampling seed 7) drawn again: judge and checker agree as logged."""
    logged = json.loads(RESULTS.read_text())["per_source"]["base prompts"]["agreement"]
    judged, checked = guessing_judge.predict(study_images), checker.check_all(study_images)
    for k in toyworld.ATTRIBUTES:
        fresh = Rate.of(j == c for j, c in zip(judged[k], checked[k]))
        low, high = fresh.interval
        assert low <= logged[k]["rate"] <= high, f"{k}: now {fresh}, the study logged {logged[k]['rate']:.3f}"


def test_agreement_where_the_judge_is_sure_matches_the_study(study_images):
    """The bar's figure: on the study's first base-prompt images (sampling seed 7) drawn again, the judge sure
    (probability >= SURE) on about as many images as logged for that source, and agreeing with the checker on the
    ones it decided about as often."""
    logged = json.loads(RESULTS.read_text())["per_source"]["base prompts"]["where_sure"]
    sure_judge = sdtune.load_judge(sure=logged["threshold"])
    judged, checked = sure_judge.predict(study_images), checker.check_all(study_images)
    for k in toyworld.ATTRIBUTES:
        sure = Rate.of(j != UNSURE for j in judged[k])
        agree = Rate.of(j == c for j, c in zip(judged[k], checked[k]) if j != UNSURE and c != checker.UNSURE)
        for fresh, name in ((sure, "sure"), (agree, "agreement_decided")):
            low, high = fresh.interval
            assert low <= logged[k][name]["rate"] <= high, f"{k} {name}: now {fresh}, the study logged {logged[k][name]['rate']:.3f}"


def test_checker_names_a_plain_scene_and_is_unsure_of_nothing():
    scene = toyworld.Scene("star", "pink", "checkerboard", "dotted", radius=18)
    assert checker.check(toyworld.render(scene)) == {"shape": "star", "colour": "pink", "background": "checkerboard",
                                                     "style": "dotted"}
    empty = np.full((64, 64, 3), 0.5)
    assert checker.check(empty) == {"shape": "unsure", "colour": "unsure", "background": "gray", "style": "unsure"}
    noise = np.random.default_rng(0).uniform(0, 1, (64, 64, 3))
    assert checker.check(noise)["background"] == "unsure"


def test_check_all_is_check_per_image():
    scenes = toyworld.sample_scenes(3, seed=5)
    images = [toyworld.render(s) for s in scenes]
    assert checker.check_all(images) == {k: [checker.check(im)[k] for im in images] for k in toyworld.ATTRIBUTES}
