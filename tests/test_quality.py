"""The shipped tiny model and judge meet their quality bars, re-measured on fresh images (asserted a little
below the bars, which the pretraining log records at full evaluation size); so did one from-scratch run of the
pretraining script, whose log is committed in `benchmarks/results/`."""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

import sdtune
from sdtune.data import toyworld
from sdtune.evaluation.judge import agreement, to_tensor
from sdtune.evaluation.prompts import prompt_accuracy
from sdtune.models.loading import TINY_PATH
from sdtune.models.pretrain import PretrainConfig, all_concept_scenes, psnr, round_trip

ALL = ("shape", "colour", "background", "style")


@pytest.fixture(scope="module")
def shipped():
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(scenes):
    return to_tensor([toyworld.render(s) for s in scenes])


def test_judge_names_every_attribute_of_fresh_images(judge):
    scenes = all_concept_scenes(400, seed=12345)
    scores = agreement(judge.predict(_images(scenes)), scenes)
    assert all(scores[k] >= 0.97 for k in ALL), scores


def test_vae_round_trip_keeps_base_and_novel_concepts(shipped, judge):
    scenes = all_concept_scenes(300, seed=777)
    x = _images(scenes)
    y = round_trip(shipped.vae, x)
    scores = agreement(judge.predict(y), scenes)
    assert all(scores[k] >= 0.95 for k in ("shape", "colour", "background")), scores
    assert scores["style"] >= 0.95, scores
    assert psnr(y, x) >= 25.0
    base = toyworld.sample_scenes(200, seed=778)
    assert all(v >= 0.97 for v in agreement(judge.predict(round_trip(shipped.vae, _images(base))), base).values())


def test_the_model_draws_what_the_prompt_asks(shipped, judge):
    scores = prompt_accuracy(shipped, judge, seeds=1)
    assert all(v >= 0.90 for v in scores.values()), scores


FROM_SCRATCH_LOG = Path(__file__).parents[1] / "benchmarks" / "results" / "pretrain_from_scratch_cpu.json"


@pytest.mark.parametrize("log_path", [TINY_PATH.parent / "pretrain_log.json", FROM_SCRATCH_LOG],
                         ids=["shipped", "from-scratch"])
def test_the_committed_log_records_the_bars(log_path: Path):
    log = json.loads(log_path.read_text())
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
