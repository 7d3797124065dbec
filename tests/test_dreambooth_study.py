"""Chapter 08's DreamBooth measurement and its study: `subject_outcomes` counts what it says it counts, and the committed
results file (benchmarks/dreambooth_prior_study.py) holds together: it measured the shipped weights with the chapter's
recipe, its pooled rates are the sums of its per-seed rates, and its differences are the ones the per-seed rates give."""

import json
import types
from functools import partial

import pytest

from benchmark_scripts import load_study

from sdtune.data import toyworld
from sdtune.evaluation import split_disc
from sdtune.evaluation.provenance import REPO, check_weights
from sdtune.evaluation.stats import Rate, seed_difference
from sdtune.evaluation.subject import subject_outcomes

RESULTS = REPO / "benchmarks" / "results" / "dreambooth_prior_study_cpu.json"


def _study_module():
    return load_study("dreambooth_prior_study")


def test_subject_outcomes_has_one_outcome_per_image_and_asks_the_rule(tiny_pipe, judge):
    """Every prompt sampled once per image, the rule asked about subject and bare-class images only: a rule that always
    says yes makes fidelity and class drift all true; the split-disc rule on the base model finds no subject."""
    settings = {"images_per_prompt": 2, "num_inference_steps": 2, "guidance_scale": 4.0, "seed": 0}
    yes = subject_outcomes(tiny_pipe, judge, "sks circle", "circle", lambda image: True, **settings)
    backgrounds = len(toyworld.BASE_BACKGROUNDS)
    assert yes.subject_backgrounds == [b for b in toyworld.BASE_BACKGROUNDS for _ in range(2)]
    assert {m: len(v) for m, v in yes.outcomes.items()} == {"fidelity": 2 * backgrounds, "editability": 2 * backgrounds,
                                                            "class kept": len(toyworld.BASE_COLOURS) * backgrounds,
                                                            "class drift": 2 * backgrounds, "drift in context": 2 * backgrounds}
    assert all(yes.outcomes["fidelity"]) and all(yes.outcomes["class drift"]) and all(yes.outcomes["drift in context"])
    assert yes.subject_prompts[0] == "a sks circle on a white background"
    assert yes.class_prompts[len(toyworld.BASE_COLOURS) * backgrounds] == "a circle" and yes.class_prompts[-1] == "a circle on a gray background"
    rule = subject_outcomes(tiny_pipe, judge, "sks circle", "circle", partial(split_disc.shows, left="yellow", right="green"), **settings)
    assert not any(rule.outcomes["fidelity"] + rule.outcomes["class drift"] + rule.outcomes["drift in context"])


class PromptStampingPipe:
    """A stand-in pipeline whose every image remembers the prompt it was drawn for (`image.info["prompt"]`)."""

    def __call__(self, prompts, **kwargs):
        images = []
        for prompt in prompts:
            image = toyworld.render(toyworld.Scene())
            image.info["prompt"] = prompt
            images.append(image)
        return types.SimpleNamespace(images=images)


def test_each_outcome_is_read_from_the_images_of_its_own_prompts(judge):
    """A rule that sees the subject only in images of one prompt makes exactly that prompt's measure true: the class
    prompt itself for class drift, the class on a background for drift in context, the subject's for fidelity."""
    settings = {"images_per_prompt": 3, "num_inference_steps": 1, "guidance_scale": 1.0, "seed": 0}
    backgrounds = len(toyworld.BASE_BACKGROUNDS)
    expected = {"a circle": ("class drift", 3 * backgrounds), "a circle on a black background": ("drift in context", 3),
                "a sks circle on a gray background": ("fidelity", 3)}
    for prompt, (measure, count) in expected.items():
        seen = subject_outcomes(PromptStampingPipe(), judge, "sks circle", "circle",
                                lambda image, prompt=prompt: image.info["prompt"] == prompt, **settings)
        true = {m: sum(v) for m, v in seen.outcomes.items() if m in ("fidelity", "class drift", "drift in context")}
        assert true == {m: count if m == measure else 0 for m in true}, (prompt, true)


@pytest.fixture(scope="module")
def study():
    return json.loads(RESULTS.read_text())


def test_the_study_measured_the_shipped_weights_with_its_own_recipe(study):
    module = _study_module()
    assert check_weights(study) == [], "the study measured other weights: rerun python benchmarks/dreambooth_prior_study.py"
    settings = study["settings"]
    assert (settings["subject"], settings["recipe"], settings["measure"]) == (module.SUBJECT, module.RECIPE, module.MEASURE)
    assert (settings["identifier"], settings["class_noun"]) == (module.IDENTIFIER, module.CLASS_NOUN)
    assert len(settings["seeds"]) >= 3 and 0.0 in settings["weights"]
    assert (RESULTS.parent / settings["picture"]["file"]).is_file()


def _pooled_and_differences(study) -> tuple[dict, dict]:
    seeds = [str(s) for s in study["settings"]["seeds"]]
    as_rate = lambda d: Rate(d["k"], d["n"])
    pooled, differences = {}, {}
    for weight, row in study["prior"].items():
        per_seed = {s: {m: as_rate(r) for m, r in row["per_seed"][s].items()} for s in seeds}
        pooled[weight] = {m: Rate(sum(per_seed[s][m].k for s in seeds), sum(per_seed[s][m].n for s in seeds)) for m in per_seed[seeds[0]]}
        if weight != "0":
            off = study["prior"]["0"]["per_seed"]
            differences[weight] = {m: seed_difference([per_seed[s][m] for s in seeds], [as_rate(off[s][m]) for s in seeds])
                                   for m in per_seed[seeds[0]]}
    return pooled, differences


def test_the_study_pools_and_pairs_its_own_per_seed_rates(study):
    pooled, differences = _pooled_and_differences(study)
    for weight, rates in pooled.items():
        assert {m: (r.k, r.n) for m, r in rates.items()} == \
            {m: (d["k"], d["n"]) for m, d in study["prior"][weight]["pooled"].items()}
    for weight, by_measure in differences.items():
        for m, d in by_measure.items():
            recorded = study["differences"][weight][m]
            assert (d.estimate, d.low, d.high) == pytest.approx((recorded["difference"], recorded["low"], recorded["high"]))


def test_the_consistency_check_fails_on_a_tampered_file(study):
    """The pooled check above is not vacuous: one per-seed count changed, and the pooled rate no longer matches."""
    tampered = json.loads(json.dumps(study))
    seed = str(study["settings"]["seeds"][0])
    tampered["prior"]["1"]["per_seed"][seed]["class drift"]["k"] += 1
    pooled, _ = _pooled_and_differences(tampered)
    assert (pooled["1"]["class drift"].k, pooled["1"]["class drift"].n) != \
        (study["prior"]["1"]["pooled"]["class drift"]["k"], study["prior"]["1"]["pooled"]["class drift"]["n"])
