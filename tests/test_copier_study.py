"""Q30's one-pair recipe study (benchmarks/copier_study.py): its summary pools and pairs seeds correctly, and the
committed results file is the one chapter 15 reads (enough seeds, the shipped weights, the chapter's LoRA settings)."""

import json
from pathlib import Path

import pytest

from benchmark_scripts import load_study

from sdtune.evaluation.provenance import check_weights

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study_module():
    return load_study("copier_study")


def _seed(shaded_base: int, shaded_edit: int, n: int = 24) -> dict:
    """One seed's outcomes: every condition the summary compares, base and edit differing only in `shaded`."""
    def outcome(k: int, area: float) -> dict:
        flags = [True] * k + [False] * (n - k)
        return {"shaded": flags, "shaded (checker)": flags, "content": [True] * n, "own shaded": flags[:8], "area": [area] * n}

    names = ["base"] + [f"{r}, x{s:g}" for r in ("pairs, B - A", "one pair, B - A", "one pair, copier", "pairs, copier")
                        for s in (1, 2, 3)] + ["one pair, B - A: A alone", "one pair, B - A: B alone"]
    conditions = {name: outcome(shaded_edit, 0.15) for name in names}
    conditions["base"] = outcome(shaded_base, 0.10)
    return {"conditions": conditions, "train_seconds": {}, "seconds": 1.0, "one_pair": "a red circle on a white background"}


def test_summary_pools_over_seeds_and_pairs_the_differences(study_module):
    per_seed = {0: _seed(2, 14), 1: _seed(1, 12), 2: _seed(3, 16)}
    summary = study_module.summarise(per_seed)
    pooled = summary["conditions"]["one pair, B - A, x2"]["shaded"]["pooled"]
    assert (pooled.k, pooled.n) == (42, 72)
    assert summary["conditions"]["one pair, B - A, x2"]["area change"]["mean"] == pytest.approx(0.5)
    d = next(d for d in summary["differences"]
             if (d["a_condition"], d["b_condition"], d["measure"]) == ("one pair, B - A, x2", "base", "shaded"))
    assert d["difference"] == pytest.approx((12 + 11 + 13) / 3 / 24) and d["resolved"]
    same = next(d for d in summary["differences"]
                if (d["a_condition"], d["b_condition"], d["measure"]) == ("one pair, B - A, x2", "pairs, B - A, x2", "shaded"))
    assert same["difference"] == 0 and not same["resolved"] and "not resolved" in same["verdict"]


def test_summary_refuses_to_compare_fewer_than_three_seeds(study_module):
    assert study_module.summarise({0: _seed(2, 14), 1: _seed(1, 12)})["differences"] == []


def test_committed_results_are_what_chapter_15_reads(study_module):
    results = json.loads((ROOT / "benchmarks" / "results" / "copier_study_cpu.json").read_text())
    assert check_weights(results) == [], "the study measured other weights: rerun python benchmarks/copier_study.py"
    assert len(results["settings"]["seeds"]) >= 3 and results["differences"]
    assert results["settings"]["lora"] == study_module.LORA
    assert (ROOT / "benchmarks" / "results" / "copier_study_cpu_grid.png").stat().st_size > 10_000
    chapter = json.loads((ROOT / "course" / "15_differential_lora.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in chapter["cells"] if c["cell_type"] == "code")
    assert "benchmarks/results/copier_study_cpu.json" in code
