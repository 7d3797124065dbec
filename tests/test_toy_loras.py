"""The shipped toy LoRAs: each shows its concept, and the LCM-LoRA draws in 2 steps what DDIM cannot (measured again)."""

import json

import pytest
from diffusers import LCMScheduler

import sdtune
from sdtune.formats import load_adapter
from sdtune.formats.adapters import remove_adapter
from sdtune.io import ASSETS
from sdtune.models.toy_loras import CONCEPTS, lcm_accuracy, presence

LORAS = ASSETS / "loras"


@pytest.fixture(scope="module")
def shipped():
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_log_records_every_lora_and_its_files_exist():
    log = json.loads((LORAS / "toy_loras.json").read_text())
    assert set(log) == set(CONCEPTS) | {"lcm"}
    assert all((LORAS / f"{name}.safetensors").is_file() for name in log)


@pytest.mark.parametrize("name", sorted(CONCEPTS))
def test_each_concept_lora_shows_its_concept(shipped, judge, name):
    attribute, value, _ = CONCEPTS[name]
    logged = json.loads((LORAS / "toy_loras.json").read_text())[name]["presence_with_lora"]
    load_adapter(shipped, LORAS / f"{name}.safetensors", name)
    try:
        measured = presence(shipped, judge, attribute, value, seed=200)  # fresh prompts
    finally:
        remove_adapter(shipped, name)
    assert measured >= min(0.4, logged - 0.2), f"{name}: {measured:.0%} (log: {logged:.0%})"


def test_lcm_lora_draws_in_two_steps(shipped, judge):
    ddim = shipped.scheduler
    without = lcm_accuracy(shipped, judge, 2)
    shipped.scheduler = LCMScheduler.from_config(ddim.config)
    load_adapter(shipped, LORAS / "lcm.safetensors", "lcm")
    try:
        with_lcm = lcm_accuracy(shipped, judge, 2)
    finally:
        remove_adapter(shipped, "lcm")
        shipped.scheduler = ddim
    mean = lambda scores: sum(scores.values()) / len(scores)  # noqa: E731
    assert mean(with_lcm) >= mean(without) + 0.3, (with_lcm, without)
    assert mean(with_lcm) >= 0.75, with_lcm  # the log: 0.83 (71 / 88 / 92%) on these 24 prompts
