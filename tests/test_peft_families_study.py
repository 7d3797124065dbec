"""Chapter 06's PEFT families study (benchmarks/peft_families_study.py): its summary pools and pairs seeds correctly,
its `prepare` and `fit` are seeded and train only what each family trains, and the committed results file is
consistent (per-seed counts sum to the pooled ones, the settings are the script's, the shipped weights) and read by
chapter 06."""

import json
from pathlib import Path

import pytest
import torch

from benchmark_scripts import load_study

from sdtune.evaluation.provenance import check_weights
from sdtune.evaluation.stats import Rate, seed_difference

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "peft_families_study_cpu.json"


@pytest.fixture(scope="module")
def study_module():
    return load_study("peft_families_study")


def _run(style_k: int, n: int = 24, params: int = 10) -> dict:
    """One cached run as `run` stores it: style right in the first style_k images, every other measure right."""
    flags = [True] * style_k + [False] * (n - style_k)
    return {"params": params, "train_s": 1.0, "outcomes": {"style": flags, "shape": [True] * n, "colour": [True] * n,
                                                            "background": [True] * n}}


def test_summary_pools_over_seeds_and_pairs_the_differences(study_module):
    style_k = {"LoRA r=4": (12, 11, 13), "(IA)3": (12, 11, 13), "BitFit": (10, 9, 11), "Textual Inversion": (1, 0, 1)}
    runs = {f: {s: _run(k) for s, k in enumerate(ks)} for f, ks in style_k.items()}
    base = _run(1)["outcomes"]
    summary = study_module.summarise(runs, base, [0, 1, 2])

    lora = summary["families"]["LoRA r=4"]
    assert (lora["pooled"]["style"].k, lora["pooled"]["style"].n) == (36, 72)
    assert [r.k for r in lora["per_seed"]["style"].values()] == [12, 11, 13]
    up = lora["against_base"]["style"]
    assert up.estimate == pytest.approx((12 + 11 + 13) / 3 / 24 - 1 / 24) and up.resolved
    assert "higher than the base model" in up.verdict()
    assert not summary["families"]["Textual Inversion"]["against_base"]["style"].resolved
    same = summary["against_lora"]["(IA)3"]["style"]
    assert same.estimate == 0 and not same.resolved and "not resolved" in same.verdict()
    down = summary["against_lora"]["Textual Inversion"]["style"]
    assert down.high < 0 and "lower than LoRA r=4" in down.verdict()
    assert set(summary["against_lora"]) == {"(IA)3", "BitFit", "Textual Inversion"}


def test_judged_compares_each_attribute_with_its_scene(study_module):
    scenes = study_module.held_out_scenes()[:2]
    predicted = {m: [getattr(s, m) for s in scenes] for m in study_module.MEASURES}
    predicted["style"] = ["flat", scenes[1].style]
    assert study_module.judged(predicted, scenes) == {"style": [False, True], "shape": [True, True],
                                                       "colour": [True, True], "background": [True, True]}


def test_prepare_and_fit_are_seeded_and_train_only_their_parameters(study_module, tiny_pipe, tmp_path):
    from sdtune.data import toyworld

    tiny_pipe.unet.requires_grad_(False)
    tiny_pipe.text_encoder.requires_grad_(False)
    data = toyworld.write_dataset(toyworld.sample_scenes(4, seed=1, styles=[study_module.STYLE]), tmp_path / "data")
    families = study_module.Families(tiny_pipe, data)
    counts = {}
    for family in study_module.LRS:
        p, params, text_trains = families.prepare(family, seed=0)
        counts[family] = sum(q.numel() for q in params)
        assert text_trains == (family == "Textual Inversion")
    assert counts == {"LoRA r=4": 46_592, "(IA)3": 5_632, "BitFit": 20_488, "Textual Inversion": 128}

    lora = lambda seed: [q.detach().clone() for q in families.prepare("LoRA r=4", seed)[1]]
    assert all(torch.equal(a, b) for a, b in zip(lora(0), lora(0)))  # the seed sets the initialisation
    assert not all(torch.equal(a, b) for a, b in zip(lora(0), lora(1)))

    losses = []
    for seed in (0, 0, 1):
        p, params, text_trains = families.prepare("BitFit", seed)
        weights = {n: q.detach().clone() for n, q in p.unet.named_parameters() if not n.endswith("bias")}
        losses.append(families.fit(p, params, 1e-3, text_trains, seed, steps=2)[1])
        assert all(torch.equal(q, weights[n]) for n, q in p.unet.named_parameters() if not n.endswith("bias"))
    assert losses[0] == losses[1] and losses[0] != losses[2]  # the seed sets the batches, noise and timesteps
    assert torch.equal(tiny_pipe.unet.conv_in.bias, families.pipe.unet.conv_in.bias)  # the base stays untouched
    with pytest.raises(ValueError, match="unknown family"):
        families.prepare("LoRA", 0)


def inconsistencies(results: dict, module) -> list[str]:
    """What in a results file disagrees with itself or with the script: one line per problem."""
    problems = []
    seeds = results["settings"]["seeds"]
    if {k: v for k, v in results["settings"].items() if k not in ("seeds", "threads", "picture")} != json.loads(json.dumps(module.SETTINGS)):
        problems.append("settings differ from the script's SETTINGS")
    if len(seeds) < 3 or module.PICTURE_SEED not in seeds:
        problems.append(f"seeds {seeds}: at least 3, including the picture's")
    for f, row in results["families"].items():
        for m in module.MEASURES:
            per_seed = [row["per_seed"][m][str(s)] for s in seeds]
            if [sum(r["k"] for r in per_seed), sum(r["n"] for r in per_seed)] != [row["pooled"][m]["k"], row["pooled"][m]["n"]]:
                problems.append(f"{f}, {m}: per-seed counts do not sum to the pooled one")
            rates = [Rate(r["k"], r["n"]) for r in per_seed]
            base = Rate(results["base model"][m]["k"], results["base model"][m]["n"])
            if row["against_base"][m]["verdict"] != seed_difference(rates, [base] * len(seeds), f, "the base model").verdict():
                problems.append(f"{f}, {m}: the difference against the base model is not the per-seed one")
            if f in results["against_lora"]:
                lora = [Rate(r["k"], r["n"]) for r in (results["families"]["LoRA r=4"]["per_seed"][m][str(s)] for s in seeds)]
                if results["against_lora"][f][m]["verdict"] != seed_difference(rates, lora, f, "LoRA r=4").verdict():
                    problems.append(f"{f}, {m}: the difference against LoRA is not the per-seed one")
        if row["lr"] != module.LRS[f]:
            problems.append(f"{f}: lr {row['lr']} is not the script's")
    if list(results["families"]) != list(module.LRS):
        problems.append("families differ from the script's")
    return problems


def test_committed_results_are_consistent_and_read_by_chapter_06(study_module):
    results = json.loads(RESULTS.read_text())
    assert check_weights(results) == [], "the study measured other weights: rerun python benchmarks/peft_families_study.py"
    assert inconsistencies(results, study_module) == []
    assert {f: row["params"] for f, row in results["families"].items()} == \
        {"LoRA r=4": 46_592, "(IA)3": 5_632, "BitFit": 20_488, "Textual Inversion": 128}
    assert (RESULTS.parent / results["settings"]["picture"]["file"]).stat().st_size > 10_000
    chapter = json.loads((ROOT / "course" / "06_peft_and_its_families.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in chapter["cells"] if c["cell_type"] == "code")
    assert "benchmarks/results/peft_families_study_cpu.json" in code


def test_the_consistency_check_catches_a_tampered_file(study_module):
    results = json.loads(RESULTS.read_text())
    results["families"]["BitFit"]["pooled"]["style"]["k"] += 1
    results["settings"]["steps"] += 1
    results["against_lora"]["(IA)3"]["style"]["verdict"] = "(IA)3 higher than LoRA r=4"
    problems = inconsistencies(results, study_module)
    assert "BitFit, style: per-seed counts do not sum to the pooled one" in problems
    assert "settings differ from the script's SETTINGS" in problems
    assert "(IA)3, style: the difference against LoRA is not the per-seed one" in problems
