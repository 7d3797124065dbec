"""Measured on the shipped tiny model: a star taught as "sks diamond" from five images. Prior preservation keeps the
class word "diamond" a diamond, and Textual Inversion, which cannot change what the frozen model can draw, draws no
star (chapter 07's study: 0/54). Whether DreamBooth draws the star more often than Textual Inversion is not asserted:
chapter 09's study, counted with the course's sure judge, does not resolve it at its budget (+7 points [-0.6, 14])."""

import pytest
from diffusers import StableDiffusionPipeline

import sdtune
from sdtune.data import toyworld
from sdtune.evaluation.subject import subject_scores
from sdtune.methods.textual_inversion import load_embedding, remove_embedding
from sdtune.training import DreamBoothConfig, TextualInversionConfig, train


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    """Five yellow stars on white or gray, captioned for DreamBooth and, with a placeholder, for Textual Inversion."""
    root = tmp_path_factory.mktemp("subject")
    scenes = toyworld.sample_scenes(5, seed=7, shapes=["star"], colours=["yellow"], backgrounds=["white", "gray"])
    folders = {}
    for name, phrase in (("db", "sks diamond"), ("ti", "<sks>")):
        folders[name] = toyworld.write_dataset(scenes, root / name)
        for scene, txt in zip(scenes, sorted(folders[name].glob("*.txt"))):
            txt.write_text(f"a yellow {phrase} on a {scene.background} background")
    return folders


def test_prior_preservation_keeps_the_class_and_textual_inversion_draws_no_star(subject, judge, tmp_path, monkeypatch):
    monkeypatch.setenv("SDTUNE_CACHE", str(tmp_path / "cache"))
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    scores = {}
    for name, weight in (("prior", 1.0), ("no prior", 0.0)):
        out = train(DreamBoothConfig(data=str(subject["db"]), out=str(tmp_path / name), instance_prompt="a yellow sks diamond",
                                     class_prompt="a diamond", num_class_images=32, prior_loss_weight=weight, steps=200,
                                     batch_size=4, lr=3e-4), pipe=pipe)
        tuned = StableDiffusionPipeline.from_pretrained(out)
        tuned.set_progress_bar_config(disable=True)
        scores[name] = subject_scores(tuned, judge, "sks diamond", "star", "diamond", seeds=1)
    out = train(TextualInversionConfig(data=str(subject["ti"]), out=str(tmp_path / "ti"), token="<sks>", init_word="diamond",
                                       steps=150, batch_size=4, lr=1e-2), pipe=pipe)
    load_embedding(pipe, out)
    scores["ti"] = subject_scores(pipe, judge, "<sks>", "star", "diamond", seeds=1)
    remove_embedding(pipe, "<sks>")
    print(scores)
    assert scores["prior"]["class kept"] >= scores["no prior"]["class kept"] + 0.2, scores
    assert scores["ti"]["fidelity"] == 0, scores
