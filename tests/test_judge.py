"""The shipped judge names every attribute of fresh toy-world images (its bar is 98%, asserted at 97% here on a
smaller sample than the pretraining log's)."""

import pytest
import torch

from sdtune.data import toyworld
from sdtune.evaluation.judge import SURE, UNSURE, Judge, agreement, agreement_rates, load_judge, to_tensor
from sdtune.evaluation.stats import Rate
from sdtune.models.pretrain import all_concept_scenes


def test_judge_names_every_attribute_of_fresh_images(judge):
    scenes = all_concept_scenes(400, seed=12345)
    scores = agreement(judge.predict(to_tensor([toyworld.render(s) for s in scenes])), scenes)
    assert all(scores[k] >= 0.97 for k in toyworld.ATTRIBUTES), scores


def test_judge_save_and_load_round_trip(tmp_path):
    judge = Judge().eval()
    judge.save(tmp_path / "j")
    again = load_judge(tmp_path / "j")
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(judge(x)[k], again(x)[k]) for k in judge.attributes)


def test_missing_judge_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No judge weights"):
        load_judge(tmp_path)


def test_agreement_rates_count_what_agreement_averages():
    scenes = [toyworld.Scene("circle", "red"), toyworld.Scene("square", "blue"), toyworld.Scene("star", "pink")]
    predicted = {"shape": ["circle", "circle", "star"], "colour": ["red", "blue", "pink"]}
    rates = agreement_rates(predicted, scenes)
    assert rates == {"shape": Rate(2, 3), "colour": Rate(3, 3)}
    assert {k: r.value for k, r in rates.items()} == agreement(predicted, scenes)
    with pytest.raises(ValueError, match="one scene per image"):
        agreement_rates(predicted, scenes[:2])


def test_a_sure_judge_answers_unsure_exactly_where_its_probability_is_below_the_threshold(judge):
    """`sure` 0 names the most probable value everywhere; `sure` p names it where its probability >= p, else "unsure".
    The course's judge (`load_judge()`) is the sure one."""
    images = torch.rand(48, 3, 64, 64)  # noise: the judge is unsure of much of it
    confidence = judge.confidence(images)
    everywhere = load_judge(sure=0).predict(images)
    sure = judge.predict(images)
    assert judge.sure == SURE and UNSURE not in sum(everywhere.values(), [])
    for k in judge.attributes:
        expected = [v if p >= SURE else UNSURE for v, p in zip(everywhere[k], confidence[k])]
        assert sure[k] == expected, k
    assert UNSURE in sum(sure.values(), []), "noise should leave the judge unsure somewhere: the test would prove nothing"
    for bad in (1.0, -0.1, 2):
        with pytest.raises(ValueError, match=r"sure=.*probability in \[0, 1\)"):
            load_judge(sure=bad)


def test_one_forward_pass_named_at_two_thresholds_is_what_two_judges_predict(judge):
    """`Judge.name` applies `predict`'s rule to probabilities already computed: a judge that names every value, asked
    for its names at SURE, answers exactly as the sure judge does (benchmarks/judge_agreement.py relies on it)."""
    images = torch.rand(48, 3, 64, 64)
    everywhere = load_judge(sure=0)
    probabilities = everywhere.probabilities(images)
    assert everywhere.name(probabilities) == everywhere.predict(images)
    assert everywhere.name(probabilities, SURE) == judge.predict(images)
    with pytest.raises(ValueError, match="probability in"):
        everywhere.name(probabilities, 1.0)


def test_as_asked_says_per_image_which_attributes_the_judge_named_as_the_scene_asks():
    from sdtune.data import toyworld
    from sdtune.evaluation.judge import as_asked

    scenes = toyworld.sample_scenes(4, seed=0)
    named = {k: [getattr(s, k) for s in scenes] for k in toyworld.ATTRIBUTES}
    named["shape"][1], named["background"][2] = "unsure", "unsure"
    right = as_asked(named, scenes)
    assert right["shape"] == [True, False, True, True] and right["background"] == [True, True, False, True]
    assert right["all"] == [True, False, False, True] and set(right) == {"shape", "colour", "background", "all"}
    assert as_asked(named, scenes, ("style",))["all"] == [True] * 4
    with pytest.raises(ValueError, match="one scene per image"):
        as_asked(named, scenes[:3])
