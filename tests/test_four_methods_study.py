"""Chapter 09's four-methods study (benchmarks/four_methods_study.py): its summary pools and pairs seeds correctly, its
data are the chapter's, and the committed results file is consistent with itself and with the script's recipe."""

import json
from pathlib import Path

import pytest

from benchmark_scripts import load_study

from sdtune.evaluation.provenance import check_weights
from sdtune.evaluation.stats import Rate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "four_methods_study_cpu.json"


@pytest.fixture(scope="module")
def study_module():
    return load_study("four_methods_study")


@pytest.fixture(scope="module")
def results():
    return json.loads(RESULTS.read_text())


def _outcomes(fidelity: int, editability: int, class_kept: int) -> dict:
    flags = lambda k, n: [True] * k + [False] * (n - k)
    return {"outcomes": {"fidelity": flags(fidelity, 18), "editability": flags(editability, 36), "class kept": flags(class_kept, 18)}}


def test_summary_pools_over_seeds_and_pairs_the_differences(study_module):
    base = _outcomes(0, 33, 18)
    runs = {s: {"DreamBooth": _outcomes(3 + s, 22, 7), "DreamBooth-LoRA": _outcomes(3 + s, 28, 13),
                "Textual Inversion": _outcomes(0, 33, 18), "hypernetwork": _outcomes(0, 32, 13)} for s in (0, 1, 2)}
    table, diffs = study_module.summarize(runs, base)
    pooled = table["DreamBooth"]["fidelity"]["pooled"]
    assert (pooled.k, pooled.n) == (3 + 4 + 5, 54)
    assert (table["base"]["class kept"]["pooled"].k, table["base"]["class kept"]["pooled"].n) == (54, 54)
    by = {(d["a"], d["b"], d["measure"]): d for d in diffs}
    assert len(by) == len(study_module.DIFFERENCES)
    kept = by[("DreamBooth", "base", "class kept")]
    assert kept["difference"] == pytest.approx(-11 / 18) and kept["resolved"] and "lower" in kept["verdict"]
    same = by[("DreamBooth-LoRA", "DreamBooth", "fidelity")]
    assert same["difference"] == 0 and not same["resolved"] and "not resolved" in same["verdict"]


def test_subject_data_and_configs_are_the_chapters_recipe(study_module, tmp_path):
    cfgs = study_module.configs(3, tmp_path, tmp_path / "runs")
    recipe = study_module.RECIPE
    assert list(cfgs) == list(study_module.METHODS)
    for method, cfg in cfgs.items():
        assert (cfg.steps, cfg.batch_size, cfg.seed, cfg.max_timestep, cfg.lr) == (
            recipe["steps"], recipe["batch_size"], 3, recipe["max_timestep"], recipe["lr"][method])
    assert cfgs["DreamBooth"].adapter == "full" and cfgs["DreamBooth-LoRA"].rank == recipe["rank"]
    assert cfgs["hypernetwork"].layer_structure == recipe["layer_structure"] and cfgs["Textual Inversion"].vectors == recipe["vectors"]
    captions = sorted(p.read_text() for p in (tmp_path / "data_ti").glob("*.txt"))
    assert len(captions) == 5 and all(c.startswith("a yellow <sks> on a ") for c in captions)
    assert all(c.startswith("a yellow sks diamond on a ") for c in (p.read_text() for p in (tmp_path / "data_db").glob("*.txt")))


def test_committed_results_are_consistent(study_module, results):
    assert check_weights(results) == [], "the study measured other weights: rerun python benchmarks/four_methods_study.py"
    settings = results["settings"]
    assert settings["subject"] == study_module.SUBJECT and settings["measure"] == study_module.MEASURE
    assert settings["recipe"] == json.loads(json.dumps(study_module.RECIPE))
    assert settings["methods"] == list(study_module.METHODS) and len(settings["seeds"]) >= 3
    seeds = [str(s) for s in settings["seeds"]]
    for method in ("base", *study_module.METHODS):
        for m in study_module.MEASURES:
            entry = results["rates"][method][m]
            per_seed = [entry["per_seed"][s] for s in seeds]
            assert (sum(r["k"] for r in per_seed), sum(r["n"] for r in per_seed)) == (entry["pooled"]["k"], entry["pooled"]["n"])
            if method != "base":  # every per-seed rate is the count of its stored outcomes
                for s, r in zip(seeds, per_seed):
                    counted = Rate.of(results["outcomes"][s][method][m])
                    assert (counted.k, counted.n) == (r["k"], r["n"])
    # the differences are those the script computes from the stored outcomes
    runs = {int(s): {method: {"outcomes": results["outcomes"][s][method]} for method in study_module.METHODS} for s in seeds}
    _, diffs = study_module.summarize(runs, {"outcomes": results["outcomes"]["base"]})
    assert [d["verdict"] for d in diffs] == [d["verdict"] for d in results["differences"]]
    assert (RESULTS.with_suffix(".png")).stat().st_size > 10_000
