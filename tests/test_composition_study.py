"""The composition study's bookkeeping (benchmarks/composition_study.py), without a pipeline: which prompts each cell
asks, when it names a winner, and whether its committed results file adds up. The study itself trains eight LoRAs per
training seed and runs for about 40 minutes."""

import json
from pathlib import Path

import pytest
from benchmark_scripts import load_study

from sdtune.data import toyworld
from sdtune.evaluation.stats import Rate

study = load_study("composition_study")
RESULTS = json.loads(Path(study.RESULTS).read_text())


def test_every_prompt_asks_for_every_concept_of_its_combination():
    for n in (2, 3, 4):
        asked = study.prompts_for(n, seed=0, per_combination=2)
        assert len(asked) == {2: 6, 3: 4, 4: 1}[n]
        for names, scenes in asked.items():
            assert len(scenes) == (8 if n == 4 else 2)
            for scene in scenes:
                assert all(getattr(scene, attribute) == value for attribute, value in (study.CONCEPTS[k] for k in names))
    seed0, seed1 = study.prompts_for(2, seed=0, per_combination=4), study.prompts_for(2, seed=1, per_combination=4)
    for names in seed0:  # with two attributes left free, each seed draws its own prompts
        assert [toyworld.caption(s) for s in seed0[names]] != [toyworld.caption(s) for s in seed1[names]]


def _rows(method: str, outcomes: list[bool]) -> list[dict]:
    return [{"method": method, "all": a, "seed": i % 3} for i, a in enumerate(outcomes)]


def test_a_winner_needs_a_resolved_difference_over_the_training_seeds_with_every_other_method():
    clear = {"merge": _rows("merge", [True] * 30 + [False] * 6), "composite": _rows("composite", [False] * 30 + [True] * 6)}
    assert study.compare(clear, [0, 1, 2])["winner"] == "merge"
    close = {"merge": _rows("merge", [True] * 19 + [False] * 17), "composite": _rows("composite", [True] * 17 + [False] * 19)}
    result = study.compare(close, [0, 1, 2])
    assert result["winner"] == "not resolved" and result["best"] == "merge"
    assert result["composite - merge"]["seeds"].method.startswith("paired over 3 training seeds")


@pytest.mark.parametrize("broken", ["all True", "no seeds"])
def test_the_comparison_fails_on_a_broken_input(broken):
    rows = {"merge": _rows("merge", [True] * 12), "composite": _rows("composite", [True] * 12)}
    if broken == "all True":  # identical methods: no winner
        assert study.compare(rows, [0, 1, 2])["winner"] == "not resolved"
    else:  # a seed with no images cannot be compared
        with pytest.raises(ValueError):
            study.compare(rows, [0, 1, 7])


def test_interactions_are_averaged_over_the_seeds():
    per_seed = [{"a": {"overlap": 0.2, "cosines": [0.1, 0.3]}}, {"a": {"overlap": 0.4, "cosines": [0.3, 0.5]}}]
    assert study.mean_effects(per_seed) == {"a": {"overlap": pytest.approx(0.3), "cosines": pytest.approx([0.2, 0.4])}}


def test_the_committed_results_agree_with_the_script_and_with_themselves():
    settings, seeds = RESULTS["settings"], RESULTS["settings"]["seeds"]
    assert len(seeds) >= 3 and settings["seeds_are"].startswith("training seeds")
    assert settings["train_steps"] == study.TRAIN_STEPS and settings["recipe"] == study.RECIPE
    assert settings["max_timestep"] == study.MAX_TIMESTEP and settings["sampling_steps"] == study.STEPS
    assert len(RESULTS["loras"]) == len(study.SETS) * len(study.NAMES) * len(seeds)
    images = RESULTS["images"]
    for lora_set, per_lora in RESULTS["alone"].items():  # each LoRA alone: the per-seed counts sum to the pooled one
        for name, pooled in per_lora.items():
            per_seed = RESULTS["alone_per_seed"][lora_set][name]
            assert len(per_seed) == len(seeds)
            assert (sum(r["k"] for r in per_seed), sum(r["n"] for r in per_seed)) == (pooled["k"], pooled["n"])
    for cell in RESULTS["grid"]:  # every rate recounted from the per-image records, every verdict recomputed
        rows = {m: [i for i in images if (i["set"], i["n"], i["weight"], i["method"]) == (cell["set"], cell["n"], cell["weight"], m)]
                for m in cell["methods"]}
        for m, summary in cell["methods"].items():
            assert (sum(r["all"] for r in rows[m]), len(rows[m])) == (summary["all"]["k"], summary["all"]["n"])
            assert [Rate(r["k"], r["n"]) for r in summary["all_per_seed"]] == \
                [Rate.of(r["all"] for r in rows[m] if r["seed"] == s) for s in seeds]
        assert study.compare(rows, seeds)["winner"] == cell["comparison"]["winner"]
