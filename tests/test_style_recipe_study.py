"""The style recipe's levers (`benchmarks/style_recipe_study.py`, three training seeds): the committed results file adds
up, measured the shipped weights, and agrees with the style-bar study where the two ran the same recipe; its summary
pairs every condition with the recipe and with the base model. The recipe's adapter at scale 0.6 and the base model
are measured again in tests/test_style_bar.py, against this file."""

import json
import random

from benchmark_scripts import load_study, readme_rows

from sdtune.evaluation.judge import SURE
from sdtune.evaluation.provenance import REPO, check_weights

RESULTS = json.loads((REPO / "benchmarks" / "results" / "style_recipe_study_cpu.json").read_text())
STYLE_BAR = json.loads((REPO / "benchmarks" / "results" / "style_bar_cpu.json").read_text())


def test_the_committed_study_has_three_seeds_adds_up_and_measured_these_weights():
    assert check_weights(RESULTS) == [], "the study measured other weights: rerun python benchmarks/style_recipe_study.py"
    assert RESULTS["judge_sure"] == SURE and not RESULTS["provenance"]["git"]["dirty"]
    seeds = [str(s) for s in RESULTS["settings"]["seeds"]]
    assert len(seeds) >= 3
    study = load_study("style_recipe_study")
    expected = [study.BASE_MODEL] + [study.condition(r, s) for r in study.RECIPES for s in study.SCALES]
    assert list(RESULTS["conditions"]) == expected
    for c, r in RESULTS["conditions"].items():
        for m, rates in r["rates"].items():
            assert list(rates["per_seed"]) == seeds, (c, m)
            assert rates["pooled"]["k"] == sum(x["k"] for x in rates["per_seed"].values()), (c, m)
            assert rates["pooled"]["n"] == study.HELD_OUT * len(seeds), (c, m)
    base = RESULTS["conditions"][study.BASE_MODEL]["rates"]
    for m, rates in base.items():  # no adapter: the same images in every seed
        assert len({x["k"] for x in rates["per_seed"].values()}) == 1, m


def test_its_recipe_arm_is_the_style_bars_locon_arm_seed_for_seed():
    """Two studies, one recipe (LoCon rank 8, 64 dotted images, batch 32, 300 steps, t < 600, seeds 0-2, the same
    held-out prompts and sampling seed, guidance 2.5): per-seed counts must agree, a check on both studies."""
    recipe = RESULTS["conditions"]["recipe, scale 1"]["rates"]
    locon = STYLE_BAR["kinds"]["locon"]["guidance"]["2.5"]
    for m in ("style", "shape", "colour", "background"):
        assert recipe[m]["per_seed"] == locon[m]["per_seed"], m


def test_the_summary_pairs_every_condition_with_the_recipe_and_shape_with_the_base_model():
    study = load_study("style_recipe_study")
    rng = random.Random(0)
    conditions = [study.BASE_MODEL] + [study.condition(r, s) for r in study.RECIPES for s in study.SCALES]
    runs = {seed: {c: {m: [rng.random() < 0.8 for _ in range(32)] for m in study.MEASURES} for c in conditions}
            for seed in range(3)}
    runs = {seed: {**r, "recipe, scale 0.6": {**r["recipe, scale 0.6"], "style": [False] * 32}} for seed, r in runs.items()}
    summary = study.summarise(runs)
    pairs = {(d["a"], d["b"], d["measure"]) for d in summary["differences"]}
    for c in conditions[1:]:
        assert (c, study.BASE_MODEL, "shape") in pairs
        if c != study.REFERENCE:
            assert {(c, study.REFERENCE, m) for m in ("style", "shape", "colour")} <= pairs
    lost = next(d for d in summary["differences"] if (d["a"], d["b"], d["measure"]) == ("recipe, scale 0.6", study.REFERENCE, "style"))
    assert lost["resolved"] and lost["difference"] < 0, lost["verdict"]  # a style that vanishes is resolved lower
    assert summary["conditions"]["recipe, scale 0.6"]["bar"]["per_measure"]["style"] == "missed"


README_ROWS = {"base model, no adapter": "base model (no adapter)", "the recipe (64 images, lr 1e-3, t < 600)": "recipe, scale 1",
               "the recipe at scale 0.8": "recipe, scale 0.8", "the recipe at scale 0.6": "recipe, scale 0.6",
               "256 images": "256 images, scale 1", "learning rate 5e-4": "lr 5e-4, scale 1", "t < 400": "t < 400, scale 1"}


def test_the_readme_table_is_the_file():
    rows = readme_rows("**Can the recipe meet the bar?**", "Personalization, one subject", README_ROWS)
    assert set(rows) == set(README_ROWS.values())
    for condition, (_, *cells) in rows.items():
        rates = RESULTS["conditions"][condition]["rates"]
        expected = [f"{rates[m]['pooled']['k']}/{rates[m]['pooled']['n']}" for m in ("style", "shape", "colour", "shape (checker)")]
        assert cells == expected, (condition, cells, expected)
    text = (REPO / "README.md").read_text()
    section = " ".join(text[text.index("**Can the recipe meet the bar?**"):text.index("Personalization, one subject")].split())
    base = RESULTS["conditions"]["base model (no adapter)"]["rates"]["shape"]["pooled"]
    assert f"{base['k']}/{base['n']} = {round(100 * base['rate'])}% [{round(100 * base['low'])}%, {round(100 * base['high'])}%]" in section
