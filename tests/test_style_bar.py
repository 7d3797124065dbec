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

from benchmark_scripts import readme_rows
from study_arms import assert_within_arm

import sdtune
from sdtune import defaults
from sdtune.data import toyworld
from sdtune.evaluation.judge import SURE, agreement_rates
from sdtune.evaluation.provenance import REPO, check_weights
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
    assert_within_arm(rates, pooled)
    assert rates["style"].interval[0] > 0.5, f"the recipe should draw the style in most images: {rates['style']}"


RECIPE_STUDY = json.loads((REPO / "benchmarks" / "results" / "style_recipe_study_cpu.json").read_text())


def _held_out_rates(pipe) -> dict:
    held_out = toyworld.sample_scenes(32, seed=100, styles=["dotted"])
    images = sdtune.sample(pipe, [toyworld.caption(s) for s in held_out], guidance_scale=STYLE_GUIDANCE, seed=0)
    return agreement_rates(sdtune.load_judge().predict(images), held_out)


def test_at_scale_0_6_the_style_goes_and_the_shapes_do_not_come_back_as_the_recipe_study_measured(dotted_locon):
    """benchmarks/style_recipe_study.py: the recipe's adapter sampled at scale 0.6 loses most of the style, while the
    judge names no more shapes than at scale 1. This run (training seed 0) must fall within the study's arm."""
    from sdtune.formats.adapters import set_adapter_scale

    assert check_weights(RECIPE_STUDY) == [], "the study measured other weights: rerun benchmarks/style_recipe_study.py"
    set_adapter_scale(dotted_locon, "dotted", 0.6)
    try:
        rates = _held_out_rates(dotted_locon)
    finally:
        set_adapter_scale(dotted_locon, "dotted", 1.0)
    assert_within_arm(rates, RECIPE_STUDY["conditions"]["recipe, scale 0.6"]["rates"])
    assert rates["style"].interval[1] < 0.5, f"at scale 0.6 the style should show in few images: {rates['style']}"


def test_the_base_model_on_the_held_out_dotted_prompts_is_the_recipe_studys_control():
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    control = RECIPE_STUDY["conditions"]["base model (no adapter)"]["rates"]
    rates = _held_out_rates(pipe)
    for m in ("shape", "colour", "style"):  # no training: the same images; 2 of 32 allowed for another CPU's rounding
        logged = control[m]["per_seed"]["0"]["k"]
        assert abs(rates[m].k - logged) <= 2, f"{m}: {rates[m]} now, {logged}/32 in the study"


# ---------------------------------------------------------------------------------------------------------------
# The style bar for every adapter kind (benchmarks/style_bar.py, three training seeds) and the README's tables of it
# ---------------------------------------------------------------------------------------------------------------

BAR_RESULTS = REPO / "benchmarks" / "results" / "style_bar_cpu.json"
README_LABELS = {"LoRA": "lora", "LoCon": "locon", "LoHa": "loha", "LoKr": "lokr", "DoRA": "dora", "full": "full",
                 "LoKr, factor 4": "lokr-f4", "LoKr, factor 2": "lokr-f2", "LoKr, factor 1": "lokr-f1"}


def _readme_rows() -> dict[str, list[str]]:
    """The rows of README "What a style takes" whose first cell names a kind of the study: {kind: cells}."""
    return readme_rows("What a style takes", "Personalization, one subject", README_LABELS)


def test_the_bar_is_met_missed_or_not_resolved_from_the_pooled_intervals():
    from benchmark_scripts import load_study

    study = load_study("style_bar")
    n = 32

    def run(shape: int, colour: int, style: int) -> dict:
        seen = {"shape": [True] * shape + [False] * (n - shape), "colour": [True] * colour + [False] * (n - colour),
                "background": [True] * n, "style": [True] * style + [False] * (n - style)}
        return {"train_s": 1.0, "peak_mb": 1.0, "load_average": 0.0, "trainable": 1, "file_mb": 0.1,
                "seen": {str(g): seen for g in study.GUIDANCES}}

    assert study.summarise({s: run(31, 31, 30) for s in range(3)})["bar"]["verdict"] == "met"  # 93/96, 90/96
    missed = study.summarise({s: run(22, 31, 30) for s in range(3)})["bar"]  # shape 66/96 = 69% [59%, 77%]
    assert missed["verdict"] == "missed" and missed["per_measure"]["shape"] == "missed"
    unresolved = study.summarise({s: run(27, 31, 30) for s in range(3)})["bar"]  # shape 81/96 = 84% [76%, 90%]
    assert unresolved["verdict"] == "not resolved" and unresolved["per_measure"]["shape"] == "not resolved"


def test_the_committed_study_has_three_seeds_adds_up_and_is_what_the_readme_prints():
    results = json.loads(BAR_RESULTS.read_text())
    assert check_weights(results) == [], "the study measured other weights: rerun python benchmarks/style_bar.py"
    assert results["judge_sure"] == SURE and not results["provenance"]["git"]["dirty"]
    seeds = [str(s) for s in results["settings"]["seeds"]]
    assert len(seeds) >= 3
    rows = _readme_rows()
    assert set(rows) == set(results["kinds"]), "every kind of the study has its README row, and no other"
    for kind, r in results["kinds"].items():
        at_recipe = r["guidance"]["2.5"]
        for m, rates in at_recipe.items():
            assert list(rates["per_seed"]) == seeds
            assert rates["pooled"]["k"] == sum(x["k"] for x in rates["per_seed"].values())
        printed = [f"{round(100 * at_recipe[m]['pooled']['k'] / at_recipe[m]['pooled']['n'])}%" for m in ("shape", "colour", "style")]
        cells = rows[kind]
        assert cells[-4:-1] == printed, f"README row {cells[0]}: {cells[-4:-1]}, the study {printed}"
        assert cells[-1].startswith(r["bar"]["verdict"]), f"README row {cells[0]}: {cells[-1]}, the study {r['bar']['verdict']}"


def test_the_style_bars_locon_arm_is_the_defaults_studys_dotted_64_arm_image_for_image():
    """Two studies, one recipe (LoCon rank 8, 64 dotted images, batch 32, 300 steps, t < 600, seeds 0-2, the same
    held-out prompts and sampling seed): their per-seed counts must agree, a check on both studies' reproducibility."""
    bar = json.loads(BAR_RESULTS.read_text())["kinds"]["locon"]["guidance"]
    arm = STUDY["style"][defaults.STYLE_RECIPE]["dotted-64"]["guidance"]
    for g in ("2.5", "4.0"):
        for m in ("style", "shape", "colour"):
            assert bar[g][m]["per_seed"] == arm[g][m]["per_seed"], (g, m)
