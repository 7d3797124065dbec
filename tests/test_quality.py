"""The shipped tiny model and judge do what their pretraining log says, re-measured on fresh images.

The log (`sdtune/assets/pretrain_log.json`, and the judge's own `sdtune/assets/judge/train_log.json`) records the sha256
of the weights it measured; each test first checks that the shipped weights are those (`provenance.check_weights`),
then re-measures on fewer images and compares with the logged figure: a rate must be consistent with the logged one
(the 95% interval of the difference, Newcombe's square-and-add from the two Wilson intervals, includes zero), a PSNR
within a stated tolerance (PSNR_TOLERANCE_DB). The bars themselves (what the log must show) are checked on the log.
One from-scratch run of the pretraining script has its log committed in `benchmarks/results/`; its weights were not kept, so that log is checked as a record
of the current script and its bars only.
"""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import sdtune
from sdtune.data import toyworld
from sdtune.evaluation.judge import agreement_rates, to_tensor
from sdtune.evaluation.prompts import prompt_accuracy
from sdtune.evaluation.provenance import check_weights
from sdtune.evaluation.stats import Rate, rate_difference
from sdtune.models.loading import TINY_PATH
from sdtune.models.pretrain import PretrainConfig, all_concept_scenes, round_trip

ALL = ("shape", "colour", "background", "style")
SHIPPED_LOG = TINY_PATH.parent / "pretrain_log.json"
JUDGE_LOG = TINY_PATH.parent / "judge" / "train_log.json"
FROM_SCRATCH_LOG = Path(__file__).parents[1] / "benchmarks" / "results" / "pretrain_from_scratch_cpu.json"


def tied(path: Path) -> dict:
    """The log, after checking that the shipped weights are the ones it measured."""
    log = json.loads(path.read_text())
    problems = check_weights(log)
    assert problems == [], f"{path.name} describes other weights: {problems}; re-run what wrote it"
    return log


def logged(fraction: float, n: int) -> Rate:
    """A logged fraction of n images as k of n (the logs store fractions; k is an integer)."""
    k = round(fraction * n)
    assert abs(k / n - fraction) < 1e-9, f"{fraction} is not a count out of {n}: the log's sample size is another"
    return Rate(k, n)


def consistent(measured: dict[str, Rate], log: dict[str, float], n_log: int) -> dict:
    """Per attribute, the differences whose interval excludes zero (re-measured vs logged): {} when consistent."""
    out = {}
    for k, rate in measured.items():
        d = rate_difference(rate, logged(log[k], n_log), "re-measured", "logged")
        if d.resolved:
            out[k] = d.verdict()
    return out


@pytest.fixture(scope="module")
def shipped():
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(scenes):
    return to_tensor([toyworld.render(s) for s in scenes])


def test_judge_names_every_attribute_of_fresh_images(guessing_judge):
    log = tied(JUDGE_LOG)
    assert tied(SHIPPED_LOG)["judge"] == {k: v for k, v in log.items() if k != "provenance"}
    n_log = 3 * PretrainConfig().eval_images  # pretrain.train_judge: eval_images x 3 fresh scenes
    scenes = all_concept_scenes(400, seed=12345)
    measured = agreement_rates(guessing_judge.predict(_images(scenes)), scenes)
    assert consistent(measured, log["accuracy_fresh_images"], n_log) == {}, (measured, log["accuracy_fresh_images"])


def _psnr_per_image(y: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    return (10 * torch.log10(1 / (y - x).pow(2).flatten(1).mean(1).clamp_min(1e-10))).numpy()


PSNR_TOLERANCE_DB = 0.5  # the mean PSNR of 200 scenes moves by 0.3 dB from one scene seed to another (778 vs 5: 35.19, 34.86)


def psnr_consistent(per_image: np.ndarray, logged_mean: float) -> bool:
    """The mean PSNR here is within PSNR_TOLERANCE_DB of the logged mean (other scenes than the log's, fewer of them)."""
    return abs(float(per_image.mean()) - logged_mean) <= PSNR_TOLERANCE_DB


def test_vae_round_trip_keeps_base_and_novel_concepts(shipped, guessing_judge):
    vae_log = tied(SHIPPED_LOG)["vae_shipped"]
    n_log = PretrainConfig().eval_images  # pretrain.evaluate_vae: eval_images of each kind
    with torch.no_grad():
        scenes = all_concept_scenes(300, seed=777)
        x = _images(scenes)
        y = round_trip(shipped.vae, x)
        base = toyworld.sample_scenes(200, seed=778)
        x_base = _images(base)
        y_base = round_trip(shipped.vae, x_base)
    novel = agreement_rates(guessing_judge.predict(y), scenes)
    assert consistent(novel, vae_log["judge_after_round_trip_all_concepts"], n_log) == {}, novel
    kept = agreement_rates(guessing_judge.predict(y_base), base)
    assert consistent(kept, vae_log["judge_after_round_trip_base"], n_log) == {}, kept
    assert psnr_consistent(_psnr_per_image(y, x), vae_log["psnr_all_concepts"]), vae_log["psnr_all_concepts"]
    assert psnr_consistent(_psnr_per_image(y_base, x_base), vae_log["psnr_base"]), vae_log["psnr_base"]


def test_the_model_draws_what_the_prompt_asks(shipped, guessing_judge):
    log = tied(SHIPPED_LOG)
    n = len(toyworld.base_prompts())
    scores = prompt_accuracy(shipped, guessing_judge, seeds=1)  # the first of the log's two sampling seeds
    measured = {k: logged(v, n) for k, v in scores.items()}
    assert consistent(measured, log["prompt_accuracy"], log["config"]["eval_seeds"] * n) == {}, (scores, log["prompt_accuracy"])


@pytest.mark.parametrize("log_path", [SHIPPED_LOG, FROM_SCRATCH_LOG], ids=["shipped", "from-scratch"])
def test_the_committed_log_records_the_bars(log_path: Path):
    log = tied(log_path) if log_path == SHIPPED_LOG else json.loads(log_path.read_text())
    assert min(log["prompt_accuracy"].values()) >= 0.95
    assert min(log["judge"]["accuracy_fresh_images"].values()) >= 0.98
    assert min(log["vae_shipped"]["judge_after_round_trip_base"].values()) >= 0.97
    novel = log["vae_shipped"]["judge_after_round_trip_all_concepts"]
    assert min(novel.values()) >= 0.97, novel
    assert log["vae_shipped"]["psnr_base"] >= 25 and log["vae_shipped"]["psnr_all_concepts"] >= 25
    assert np.isfinite(log["vae_shipped"]["psnr_broad_random"])


def test_the_from_scratch_log_is_one_run_of_the_default_script():
    """The from-scratch record is what `python -m sdtune.models.pretrain --out DIR` does today: no continuation,
    every stage at the script's current default settings."""
    log = json.loads(FROM_SCRATCH_LOG.read_text())
    assert "continued_from" not in log
    assert log["config"] == {**asdict(PretrainConfig()), "out": log["config"]["out"]}
    for stage in ("judge", "vae_perceptual_net", "vae", "vae_decoder_refinement", "unet"):
        assert log[stage]["minutes"] > 0, stage


def test_a_changed_weight_or_log_figure_fails_the_checks(tmp_path):
    """The ties can fail: a log whose recorded sha256 is not the shipped file's, and a logged rate the re-measurement
    contradicts."""
    log = json.loads(SHIPPED_LOG.read_text())
    name = next(iter(log["provenance"]["weights"]))
    log["provenance"]["weights"][name] = "0" * 64
    assert check_weights(log) == [f"{name}: sha256 changed since the measurement (the figures describe other weights)"]
    assert consistent({"shape": Rate(400, 400)}, {"shape": 0.9}, 1800) != {}
    assert consistent({"shape": Rate(399, 400)}, {"shape": 1.0}, 1800) == {}
