"""Chapter 07's study (benchmarks/textual_inversion_study.py): it measures what the chapter measures, its summary pools
and pairs seeds correctly, and the committed results file holds together (the shipped weights, the script's recipe,
pooled rates that are the sums of the per-seed rates, differences that the per-seed rates give)."""

import json

import pytest
import torch

from benchmark_scripts import load_study

from sdtune.evaluation.provenance import REPO, check_weights
from sdtune.evaluation.stats import Rate, seed_difference
from sdtune.evaluation.subject import subject_scores
from sdtune.sampling import TINY_GUIDANCE

RESULTS = REPO / "benchmarks" / "results" / "textual_inversion_study_cpu.json"


@pytest.fixture(scope="module")
def study_module():
    return load_study("textual_inversion_study")


def test_outcomes_are_subject_scores_image_by_image(study_module, tiny_pipe, judge):
    """The study's per-image outcomes give the chapter's fractions (subject_scores with one sampling seed, its defaults)."""
    assert study_module.EVAL == {"num_inference_steps": 15, "guidance_scale": TINY_GUIDANCE, "seed": 0}
    measured, shapes, images = study_module.outcomes(tiny_pipe, judge, "diamond", "star")
    expected = subject_scores(tiny_pipe, judge, "diamond", "star", "diamond", seeds=1)
    assert {m: Rate.of(measured[m]).value for m in expected} == pytest.approx(expected)
    assert {m: len(v) for m, v in measured.items()} == {"fidelity": 18, "colour": 18, "background": 18, "editability": 36,
                                                       "class kept": 18}
    assert len(shapes) == 18 and images.shape == (18, 64, 64, 3)


def test_nearest_finds_the_word_itself(study_module):
    table = torch.eye(4) + 0.1
    found = study_module.nearest(table[2], ["circle", "square", "triangle", "star"], table, k=2)
    assert found[0] == ("triangle", pytest.approx(1.0))


def _seed(fidelity: dict[str, int], editability: dict[str, int]) -> dict:
    """One seed's per-image outcomes for every run: k of 18 fidelity, k of 36 editability, everything else all true."""
    def flags(k: int, n: int) -> list[bool]:
        return [True] * k + [False] * (n - k)

    runs = {}
    for name in ("star, 1 vector", "triangle, 1 vector", "star, 4 vectors"):
        e = flags(editability[name], 36)
        runs[name] = {"fidelity": flags(fidelity[name], 18), "editability": e, "colour": e[:18], "background": e[18:],
                      "class kept": [True] * 18, "shapes seen": {"square": 18},
                      "vectors": [{"norm": 1.0, "nearest": [["triangle", 0.8], ["shape", 0.2], ["blue", 0.1]]}]}
    return {"runs": runs, "train_seconds": {}, "seconds": 1.0}


BASE = {"fidelity": [False] * 18, "colour": [True] * 18, "background": [True] * 18, "editability": [True] * 36,
        "class kept": [True] * 18, "fidelity (triangle)": [False] * 18, "shapes seen": {"diamond": 18},
        "vectors": [{"norm": 0.3, "nearest": [["diamond", 1.0]]}], "word median norm": 0.2}


def test_summary_pools_over_seeds_and_pairs_the_differences(study_module):
    per_seed = {s: _seed({"star, 1 vector": 0, "triangle, 1 vector": 18 - s, "star, 4 vectors": 0},
                         {"star, 1 vector": 33, "triangle, 1 vector": 35, "star, 4 vectors": 19 + s}) for s in range(3)}
    summary = study_module.summarise(per_seed, BASE)
    pooled = summary["runs"]["triangle, 1 vector"]["fidelity"]["pooled"]
    assert (pooled.k, pooled.n) == (18 + 17 + 16, 54)
    assert (summary["runs"]["before"]["editability"]["pooled"].n, summary["runs"]["star, 4 vectors"]["editability"]["pooled"].k) == (36, 60)
    assert summary["runs"]["triangle, 1 vector"]["nearest word"] == {"triangle": 3}
    d = next(d for d in summary["differences"]
             if (d["a_run"], d["b_run"], d["measure"]) == ("star, 4 vectors", "star, 1 vector", "editability"))
    assert d["difference"] == pytest.approx((-14 - 13 - 12) / 3 / 36) and d["resolved"] and "lower than" in d["verdict"]
    same = next(d for d in summary["differences"]
                if (d["a_run"], d["b_run"], d["measure"]) == ("star, 4 vectors", "star, 1 vector", "fidelity"))
    assert same["difference"] == 0 and not same["resolved"] and "not resolved" in same["verdict"]


def test_summary_refuses_to_compare_fewer_than_three_seeds(study_module):
    two = {s: _seed({n: 0 for n in ("star, 1 vector", "triangle, 1 vector", "star, 4 vectors")},
                    {n: 30 for n in ("star, 1 vector", "triangle, 1 vector", "star, 4 vectors")}) for s in range(2)}
    assert study_module.summarise(two, BASE)["differences"] == []


@pytest.fixture(scope="module")
def study():
    return json.loads(RESULTS.read_text())


def test_committed_results_are_the_scripts_recipe_on_the_shipped_weights(study, study_module):
    assert check_weights(study) == [], "the study measured other weights: rerun python benchmarks/textual_inversion_study.py"
    s = study["settings"]
    assert (s["recipe"], s["data"], s["evaluation"]) == (study_module.RECIPE, study_module.DATA, study_module.EVAL)
    assert (s["token"], s["init_word"], s["class_noun"]) == (study_module.TOKEN, study_module.INIT_WORD, study_module.CLASS_NOUN)
    assert s["runs"] == {name: {"subject": shape, "vectors": k} for name, (shape, k) in study_module.RUNS.items()}
    assert len(s["seeds"]) >= 3 and s["seeds"][0] == 0, "the chapter's live run is training seed 0 of the study"
    assert (REPO / "benchmarks" / "results" / s["picture"]["file"]).stat().st_size > 10_000


def test_committed_pooled_rates_are_the_sums_of_the_per_seed_rates_and_the_differences_follow(study, study_module):
    seeds = [str(s) for s in study["settings"]["seeds"]]
    for m in study_module.MEASURES:  # the base model trains nothing: measured once, the same rate for every seed
        before = study["runs"]["before"][m]
        assert all(before["per_seed"][s] == before["pooled"] for s in seeds) and sorted(before["per_seed"]) == sorted(seeds)
    for name in study_module.RUNS:
        for m in study_module.MEASURES:
            row = study["runs"][name][m]
            assert sorted(row["per_seed"]) == sorted(seeds)
            assert row["pooled"]["k"] == sum(row["per_seed"][s]["k"] for s in seeds), (name, m)
            assert row["pooled"]["n"] == sum(row["per_seed"][s]["n"] for s in seeds), (name, m)
    assert {(d["a_run"], d["b_run"], d["measure"]) for d in study["differences"]} == {
        (a, b, m) for a, b in study_module.COMPARED for m in study_module.MEASURES}
    for d in study["differences"]:
        rates = [[Rate(r["k"], r["n"]) for r in (study["runs"][run][d["measure"]]["per_seed"][s] for s in seeds)]
                 for run in (d["a_run"], d["b_run"])]
        assert d["verdict"] == seed_difference(*rates, d["a_run"], d["b_run"]).verdict()


def test_chapter_07_reads_the_committed_results():
    chapter = json.loads((REPO / "course" / "07_textual_inversion.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in chapter["cells"] if c["cell_type"] == "code")
    assert "benchmarks/results/textual_inversion_study_cpu.json" in code
