"""The composition study's bookkeeping (benchmarks/composition_study.py), without a pipeline: which prompts each cell
asks, and when it names a winner. The study itself trains eight LoRAs and runs for about 25 minutes."""


import pytest

from benchmark_scripts import load_study

from sdtune.data import toyworld

study = load_study("composition_study")


def test_every_prompt_asks_for_every_concept_of_its_combination():
    for n in (2, 3, 4):
        asked = study.prompts_for(n, seeds=[0, 1, 2], per_combination=2)
        assert len(asked) == {2: 6, 3: 4, 4: 1}[n]
        for names, scenes in asked.items():
            for _, scene in scenes:
                assert all(getattr(scene, attribute) == value for attribute, value in (study.CONCEPTS[k] for k in names))
            assert [seed for seed, _ in scenes] == sorted(seed for seed, _ in scenes)  # grouped by seed: one noise each
    pairs = study.prompts_for(2, seeds=[0, 1], per_combination=4)
    for scenes in pairs.values():  # with two attributes left free, each seed draws its own prompts
        assert [toyworld.caption(s) for seed, s in scenes if seed == 0] != [toyworld.caption(s) for seed, s in scenes if seed == 1]


def _rows(method: str, outcomes: list[bool]) -> list[dict]:
    return [{"method": method, "all": a, "seed": i % 3} for i, a in enumerate(outcomes)]


def test_a_winner_needs_a_resolved_difference_with_every_other_method():
    clear = {"merge": _rows("merge", [True] * 30 + [False] * 6), "composite": _rows("composite", [False] * 30 + [True] * 6)}
    assert study.compare(clear, [0, 1, 2])["winner"] == "merge"
    close = {"merge": _rows("merge", [True] * 19 + [False] * 17), "composite": _rows("composite", [True] * 17 + [False] * 19)}
    result = study.compare(close, [0, 1, 2])
    assert result["winner"] == "not resolved" and result["best"] == "merge"
    assert result["composite - merge"]["seeds"].method.startswith("paired over 3 sampling seeds")


@pytest.mark.parametrize("broken", ["all True", "no seeds"])
def test_the_comparison_fails_on_a_broken_input(broken):
    rows = {"merge": _rows("merge", [True] * 12), "composite": _rows("composite", [True] * 12)}
    if broken == "all True":  # identical methods: no winner
        assert study.compare(rows, [0, 1, 2])["winner"] == "not resolved"
    else:  # a seed with no images cannot be compared
        with pytest.raises(ValueError):
            study.compare(rows, [0, 1, 7])
