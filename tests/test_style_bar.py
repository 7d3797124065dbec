"""The training engine's style recipe on the shipped tiny model (about 4 minutes on one core), measured again: LoCon
rank 8 on 64 dotted images, batch 32, 300 steps, learning rate 1e-3, timesteps t < 600 only (a style lives in the
low-noise steps), sampled at guidance 2.5 for 32 held-out prompts. This is the defaults study's "dotted-64" arm
(`benchmarks/defaults_study.py --part style`, three training seeds); this run must fall within that study's spread on
style, shape and colour: the 95% interval of the difference from the study's pooled rate includes zero.

The bar the recipe was tuned for (style >= 80%, shape and colour >= 85%) it met when every value the judge would name
was counted; counted with the course's sure judge, the study puts it short of that bar on shape (README, "Defaults").
"""

import json

import pytest

import sdtune
from sdtune import defaults
from sdtune.data import toyworld
from sdtune.evaluation.judge import agreement_rates
from sdtune.evaluation.provenance import REPO, check_weights
from sdtune.evaluation.stats import Rate, rate_difference
from sdtune.training import TrainConfig, train

STYLE_GUIDANCE = 2.5
STUDY = json.loads((REPO / "benchmarks" / "results" / "defaults_study_cpu.json").read_text())


@pytest.fixture(scope="module")
def dotted_locon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("style_bar")
    data = toyworld.write_dataset(toyworld.sample_scenes(64, seed=1, styles=["dotted"]), tmp / "data")
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    config = TrainConfig(data=str(data), out=str(tmp / "dotted"), adapter="locon", rank=8, steps=300, batch_size=32,
                         lr=1e-3, max_timestep=600)
    out = train(config, pipe=pipe)
    sdtune.load_adapter(pipe, out / "dotted.safetensors", "dotted")
    return pipe


def test_the_style_recipe_learns_the_style_as_the_study_measured(dotted_locon):
    assert check_weights(STUDY) == [], "the defaults study measured other weights: rerun benchmarks/defaults_study.py"
    pooled = STUDY["style"][defaults.STYLE_RECIPE]["dotted-64"]["guidance"][str(STYLE_GUIDANCE)]
    held_out = toyworld.sample_scenes(32, seed=100, styles=["dotted"])  # other shapes, colours and backgrounds
    images = sdtune.sample(dotted_locon, [toyworld.caption(s) for s in held_out], guidance_scale=STYLE_GUIDANCE, seed=0)
    rates = agreement_rates(sdtune.load_judge().predict(images), held_out)
    for measure in ("style", "shape", "colour"):
        study = Rate(pooled[measure]["pooled"]["k"], pooled[measure]["pooled"]["n"])
        difference = rate_difference(rates[measure], study, "this run", "the study")
        assert not difference.resolved, f"{measure}: {difference}"
    assert rates["style"].interval[0] > 0.5, f"the recipe should draw the style in most images: {rates['style']}"
