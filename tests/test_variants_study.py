"""Chapter 05's study of the adapter kinds (benchmarks/variants_study.py): its summary pools and pairs seeds correctly,
and the committed results file is the one chapter 05 reads (at least 3 seeds, the shipped weights, the chapter's recipe,
pooled counts that are the sums of the per-seed counts, differences that the per-seed rates give)."""

import json

import pytest

from benchmark_scripts import load_study

from sdtune.evaluation.provenance import REPO, check_weights
from sdtune.evaluation.stats import Rate, seed_difference

RESULTS = REPO / "benchmarks" / "results" / "variants_study_cpu.json"
CHAPTER = REPO / "course" / "05_lora_variants.ipynb"


@pytest.fixture(scope="module")
def study():
    return load_study("variants_study")


def _run(study, kind: str, style: int, n: int = 32) -> dict:
    """One cached run as `run` returns it: `style` of n prompts dotted, every shape and colour right."""
    return {"recipe": study.recipe(kind), "train_s": 1.0,
            "outcomes": {"style": [True] * style + [False] * (n - style), "shape": [True] * n, "colour": [True] * n}}


def test_summary_pools_seeds_and_pairs_each_kind_with_lora_and_the_base_model(study):
    base = {"style": [False] * 32, "shape": [True] * 32, "colour": [True] * 32}
    runs = {"lora": {0: _run(study, "lora", 10), 1: _run(study, "lora", 12), 2: _run(study, "lora", 11)},
            "loha": {0: _run(study, "loha", 20), 1: _run(study, "loha", 22), 2: _run(study, "loha", 21)},
            "dora": {0: _run(study, "dora", 11), 1: _run(study, "dora", 11), 2: _run(study, "dora", 11)}}
    summary = study.summarise(base, runs)
    assert summary["kinds"]["loha"]["pooled"]["style"] == Rate(63, 96)
    assert [r.k for r in summary["kinds"]["lora"]["per_seed"]["style"].values()] == [10, 12, 11]
    loha = summary["against_lora"]["loha"]["style"]
    assert loha.estimate == pytest.approx(10 / 32) and loha.resolved and "LoHa higher than LoRA" in loha.verdict()
    dora = summary["against_lora"]["dora"]["style"]
    assert dora.estimate == pytest.approx(0) and not dora.resolved and "not resolved" in dora.verdict()
    assert summary["against_base"]["lora"]["style"].resolved and not summary["against_base"]["lora"]["shape"].resolved
    assert "lora" not in summary["against_lora"]


def test_summary_makes_no_claim_from_fewer_than_three_seeds(study):
    base = {"style": [False] * 32, "shape": [True] * 32, "colour": [True] * 32}
    runs = {k: {0: _run(study, k, 10), 1: _run(study, k, 20)} for k in ("lora", "loha")}
    summary = study.summarise(base, runs)
    assert summary["against_lora"] == {} and summary["against_base"] == {}
    assert summary["kinds"]["loha"]["pooled"]["style"] == Rate(30, 64)


def test_committed_results_are_the_chapters_recipe_and_add_up(study):
    results = json.loads(RESULTS.read_text())
    assert check_weights(results) == [], "the study measured other weights: rerun python benchmarks/variants_study.py"
    settings = results["settings"]
    seeds = [str(s) for s in settings["seeds"]]
    assert len(seeds) >= 3 and str(study.PICTURE_SEED) in seeds
    assert settings["recipe"] == study.RECIPE and settings["lr"] == study.LR and settings["sampling"] == study.SAMPLING
    assert settings["held_out_prompts"] == study.HELD_OUT and set(results["kinds"]) == set(study.KINDS)
    for kind, row in results["kinds"].items():
        assert row["recipe"] == study.recipe(kind)
        for m in study.MEASURES:
            per_seed = row["per_seed"][m]
            assert list(per_seed) == seeds and all(r["n"] == study.HELD_OUT for r in per_seed.values())
            assert row["pooled"][m]["k"] == sum(r["k"] for r in per_seed.values())
            assert row["pooled"][m]["n"] == sum(r["n"] for r in per_seed.values())
            if kind != "lora":
                d = seed_difference([Rate(r["k"], r["n"]) for r in per_seed.values()],
                                    [Rate(r["k"], r["n"]) for r in results["kinds"]["lora"]["per_seed"][m].values()])
                assert results["against_lora"][kind][m]["difference"] == pytest.approx(d.estimate)
                assert results["against_lora"][kind][m]["resolved"] == d.resolved
    assert (RESULTS.parent / settings["picture"]["file"]).stat().st_size > 10_000


def test_chapter_05_reads_the_study_and_runs_its_recipe(study):
    code = "\n".join("".join(c["source"]) for c in json.loads(CHAPTER.read_text())["cells"] if c["cell_type"] == "code")
    assert "benchmarks/results/variants_study_cpu.json" in code and "check_weights(study) == []" in code
    assert "within_study(results[kind][m]" in code and 'settings["recipe"], settings["lr"], settings["sampling"]' in code
