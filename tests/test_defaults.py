"""sdtune.defaults: what a run gets when the user gives no option, and that it does what it is for.

Fast: the table (every family, method and adapter gives options the trainer accepts, each with a source; the tiny
model's values are the recipes `benchmarks/defaults_study.py` measured) and the split-disc rule (clean renders pass,
near misses fail).

Trained (marked slow; times on one core of the 2-core CI machine in the functions' docstrings): the two users of
issue 23, each on a folder the recipes never saw. The study tuned on dotted and striped styles and on a blue | yellow
disc; here a new style is *outlined* and a new subject a red | green disc, rendered at other places.
"""

import json
import types
from dataclasses import fields
from pathlib import Path

import pytest
from PIL import Image

import sdtune
from sdtune import defaults
from sdtune.data import toyworld
from sdtune.evaluation import split_disc
from sdtune.evaluation.judge import agreement_rates
from sdtune.evaluation.provenance import REPO, check_weights
from sdtune.training import DreamBoothConfig, HypernetworkConfig, LCMConfig, TextualInversionConfig, TrainConfig, train

# The bars. The trained tests below ask, on a folder no recipe saw, that the new style or subject shows in most images
# (NEW_BARS). Measured at 8d30df0 on one core with the judge naming every value: outlined style 24/32, shape 20/32,
# colour 26/32; counted with the course's sure judge (at 16661cb): style 23/32, shape 14/32, colour 26/32. The recipe
# keeps the prompted shape where the judge is sure in under half of the images; the shape bar guards against losing it
# outright (the base model on its 72 base prompts: 69/72, chapter 00). The red | green subject: 11/16 for its prompt
# and 0/16 in a new context, which no default reaches yet and is not barred.
NEW_BARS = {"style": {"style": 0.5, "shape": 0.35, "colour": 0.75},
            "subject": {"training prompt": 0.5}}
ADAPTERS_OF = {"lora": ("lora", "locon", "dora", "loha", "lokr"), "full": ("full",),
               "dreambooth": ("full", "lora", "locon", "dora", "loha", "lokr"), "textual-inversion": ("textual-inversion",),
               "hypernetwork": ("hypernetwork",), "lcm": ("lora", "locon", "dora")}


def _config(method: str, adapter: str, tmp_path: Path, **values):
    common = {"data": str(tmp_path), "out": str(tmp_path / "out")}
    if method == "dreambooth":
        return DreamBoothConfig(**common, adapter=adapter, instance_prompt="a sks toy", class_prompt="a toy", **values)
    if method == "textual-inversion":
        return TextualInversionConfig(**common, token="<toy>", init_word="toy", **values)
    if method == "hypernetwork":
        return HypernetworkConfig(**common, **values)
    if method == "lcm":
        return LCMConfig(**common, adapter=adapter, **values)
    return TrainConfig(**common, adapter=adapter, **values)


@pytest.mark.parametrize("family", defaults.FAMILIES)
@pytest.mark.parametrize("method", defaults.METHODS)
def test_every_default_is_an_option_the_trainer_accepts_and_names_its_source(family, method, tmp_path):
    names = {f.name for f in fields(TrainConfig)} | {"sample_guidance"}
    for adapter in ADAPTERS_OF[method]:
        table = defaults.recommended(family, method, adapter)
        assert set(table) <= names, set(table) - names
        assert all(isinstance(d, defaults.Default) and d.source for d in table.values())
        if method == "lcm":  # LCM distils at the teacher's guidance; its own sampling guidance is about 1
            assert table["sample_guidance"].value <= 2
        values = {k: d.value for k, d in table.items() if k != "sample_guidance"}
        _config(method, adapter, tmp_path, **values).validate()


def test_unknown_family_method_or_adapter_is_one_clear_error():
    for args, word in ((("sd3", "lora", "lora"), "family"), (("tiny", "loraa", "lora"), "method"), (("tiny", "lora", "ia3"), "adapter")):
        with pytest.raises(ValueError, match=f"Unknown {word} .*choose one of"):
            defaults.recommended(*args)


def test_model_family_reads_the_architecture(tiny_pipe):
    assert defaults.model_family(tiny_pipe) == "tiny"
    unet = types.SimpleNamespace(config=types.SimpleNamespace(cross_attention_dim=768))
    assert defaults.model_family(types.SimpleNamespace(unet=unet)) == "sd1"
    unet.config.cross_attention_dim = 1024
    assert defaults.model_family(types.SimpleNamespace(unet=unet)) == "sd2"
    assert defaults.model_family(types.SimpleNamespace(unet=unet, text_encoder_2=object())) == "sdxl"


BEFORE = "lora-attn r4 b8 (before)"  # the study's name for sdtune's fixed defaults before the table
DEMO_FOLDER = "dotted-64"  # the demo's training folder: 64 dotted images


def _study() -> dict:
    study = json.loads((REPO / defaults.STUDY).read_text())
    assert check_weights(study) == [], "the study measured other weights: rerun benchmarks/defaults_study.py"
    return study


def _assert_table_is_recipe(study: dict, part: str, key: str, method: str) -> dict:
    recipe = study["settings"][part]["recipes"][key]
    table = defaults.recommended("tiny", method, "lora")
    for name, d in table.items():
        if name != "sample_guidance":
            assert recipe[name] == d.value, (name, recipe[name], d.value)
            assert defaults.STUDY in d.source and key in d.source
    return table


def test_the_tiny_style_defaults_are_the_study_recipe_that_beat_the_old_ones():
    """The table holds no number of its own: the tiny model's `train lora` defaults are a recipe of the committed study.
    Paired over 3 training seeds it shows the dotted style in more images than the old defaults (resolved), and the
    striped one in more by its estimate (not resolved at three seeds, as the README says). Its figures on the demo's
    folder are re-measured by tests/test_style_bar.py and the demo's test."""
    study = _study()
    table = _assert_table_is_recipe(study, "style", defaults.STYLE_RECIPE, "lora")
    guidance = str(table["sample_guidance"].value)
    versus_old = {style: next(d for d in study["differences"] if (d["on"], d["guidance"], d["measure"], d["a"], d["b"])
                              == (style, guidance, "style", defaults.STYLE_RECIPE, BEFORE)) for style in ("dotted", "striped")}
    assert versus_old["dotted"]["resolved"] and versus_old["dotted"]["low"] > 0, versus_old["dotted"]["verdict"]
    assert versus_old["striped"]["difference"] > 0, versus_old["striped"]["verdict"]
    assert DEMO_FOLDER in study["style"][defaults.STYLE_RECIPE]


def test_the_split_disc_rule_sees_the_subject_and_nothing_else():
    palette = ("red", "green", "blue", "yellow", "purple", "orange")
    renders = [im for left, right in (("red", "green"), ("blue", "yellow"), ("purple", "orange"))
               for im in split_disc.training_images(left, right, n=6, seed=3, backgrounds=("white", "gray", "black"))]
    pairs = [(left, right) for left, right in (("red", "green"), ("blue", "yellow"), ("purple", "orange")) for _ in range(6)]
    assert all(split_disc.shows(im, *pair) for im, pair in zip(renders, pairs))
    neighbour = {"red": "orange", "green": "cyan", "blue": "purple", "yellow": "orange", "purple": "blue", "orange": "yellow"}
    for left in palette:
        for right in palette:
            if left == right:
                continue
            near_misses = [split_disc.render(right, left), split_disc.render(left, left), split_disc.render(right, right),
                           split_disc.render(neighbour[left], right), split_disc.render(left, neighbour[right])]
            near_misses += [split_disc.render(left, right, shape=s) for s in ("square", "diamond", "triangle", "star", "cross")]
            assert not any(split_disc.shows(im, left, right) for im in near_misses), (left, right)
    assert not split_disc.shows(Image.new("RGB", (64, 64), (245, 245, 245)), "red", "green")
    assert not any(split_disc.shows(toyworld.render(s), "red", "green") for s in toyworld.sample_scenes(60, seed=3, shapes=["circle"]))
    assert [split_disc.background_of(split_disc.render("red", "green", b)) for b in ("white", "black", "gray")] == ["white", "black", "gray"]


@pytest.mark.slow
def test_a_new_style_shows_under_the_default_options(tmp_path):
    """`sdtune train lora --data DIR --out DIR` on 32 images of a style no recipe was tuned on. About 2 minutes on one
    core (training 1.5, sampling 0.2)."""
    data = toyworld.write_dataset(toyworld.sample_scenes(32, seed=7, styles=["outlined"]), tmp_path / "outlined")
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    out = train(TrainConfig(data=str(data), out=str(tmp_path / "lora")), pipe=pipe)
    sdtune.load_adapter(pipe, out / "lora.safetensors", "outlined")
    held_out = toyworld.sample_scenes(32, seed=100, styles=["outlined"])
    guidance = defaults.recommended("tiny", "lora", "lora")["sample_guidance"].value
    images = sdtune.sample(pipe, [toyworld.caption(s) for s in held_out], guidance_scale=guidance, seed=0)
    rates = agreement_rates(sdtune.load_judge().predict(images), held_out)
    for measure, bar in NEW_BARS["style"].items():
        assert rates[measure].value >= bar, {m: str(r) for m, r in rates.items()}


@pytest.mark.slow
def test_a_new_subject_shows_under_the_dreambooth_lora_defaults(tmp_path, monkeypatch):
    """`sdtune train dreambooth --lora --instance-prompt "a sks toy" --class-prompt "a circle"` on 6 unlabeled images
    of a disc split in two colours, every other option at its default. About 2 minutes on one core."""
    monkeypatch.setenv("SDTUNE_CACHE", str(tmp_path / "cache"))
    subject = ("red", "green")
    data = split_disc.write_folder(tmp_path / "toy", split_disc.training_images(*subject, n=6, seed=11, backgrounds=("white", "black")))
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    out = train(DreamBoothConfig(data=str(data), out=str(tmp_path / "db"), adapter="lora", instance_prompt="a sks toy",
                                 class_prompt="a circle"), pipe=pipe)
    sdtune.load_adapter(pipe, out / "db.safetensors", "toy")
    guidance = defaults.recommended("tiny", "dreambooth", "lora")["sample_guidance"].value
    shown = {"training prompt": split_disc.rate(sdtune.sample(pipe, ["a sks toy"] * 16, guidance_scale=guidance, seed=0), *subject)}
    for measure, bar in NEW_BARS["subject"].items():
        assert shown[measure].value >= bar, {m: str(r) for m, r in shown.items()}
