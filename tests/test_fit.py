"""Settings that fit the learner's GPU (`sdtune.fit`), and the chapters' "at scale" path on tiny random pipelines."""

import os

import pytest
import torch

import sdtune
from sdtune.course.at_scale import ENV, at_scale
from sdtune.fit import MARGIN_GB, plan
from sdtune.training import TrainConfig, train


def test_sd15_lora_fits_a_t4_without_savers_and_sdxl_needs_them():
    sd15 = plan("sd1", "lora", 15, bf16=False)
    assert sd15.settings["mixed_precision"] == "fp16" and not sd15.settings["offload_frozen"] and sd15.settings["batch_size"] > 1
    sdxl = plan("sdxl", "lora", 15, bf16=False)
    assert sdxl.settings["offload_frozen"] and sdxl.settings["gradient_checkpointing"] and sdxl.settings["optimizer"] == "adamw"
    assert sdxl.need_gb <= 15 - MARGIN_GB
    assert plan("sdxl", "lora", 80, bf16=True).settings | {"batch_size": 1} == {
        "mixed_precision": "bf16", "batch_size": 1, "gradient_checkpointing": False, "optimizer": "adamw", "offload_frozen": False}


def test_full_dreambooth_of_sd15_on_a_t4_takes_8bit_adam_and_sdxl_full_does_not_fit():
    dreambooth = plan("sd1", "dreambooth", 15, bf16=False)
    assert dreambooth.settings["optimizer"] == "adamw8bit" and dreambooth.settings["gradient_checkpointing"]
    assert any("bitsandbytes" in reason for reason in dreambooth.reasons)
    with pytest.raises(ValueError, match="needs about .* GB even with every saver"):
        plan("sdxl", "full", 15, bf16=False)


def test_offloading_the_frozen_parts_trains_the_same_weights(tiny_pipe, tmp_path):
    from sdtune.data import toyworld

    data = toyworld.write_dataset(toyworld.sample_scenes(4, seed=2), tmp_path / "d")
    common = dict(data=str(data), steps=2, batch_size=2, lr=1e-3, rank=4, validation_prompt="a red circle", validation_every=1)
    a = train(TrainConfig(out=str(tmp_path / "a"), **common), pipe=tiny_pipe)
    b = train(TrainConfig(out=str(tmp_path / "b"), offload_frozen=True, **common), pipe=tiny_pipe)
    from safetensors.torch import load_file

    wa, wb = load_file(a / "pytorch_lora_weights.safetensors"), load_file(b / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert tiny_pipe.vae.device == tiny_pipe.unet.device == tiny_pipe.text_encoder.device


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_an_at_scale_cell_runs_on_the_tiny_random_pipeline(kind, capsys):
    assert os.environ.get(ENV[kind]), "the root conftest names the tiny random pipelines"
    scale = at_scale(kind, "lora")
    assert scale.ci and "CI:" in capsys.readouterr().out
    out = train(TrainConfig(model=scale.model, data=scale.data("my_photos", "your photos"), out=scale.out("out/x"), rank=4,
                            steps=scale.steps(1500), lr=1e-4, **scale.settings))
    pipe = sdtune.load_pipeline(scale.model)
    sdtune.load_adapter(pipe, out, "mine", scale=0.8)
    image = sdtune.sample(pipe, "a red bicycle in my style", **scale.sampling(30, 7.5))[0]
    assert image.size == (64, 64)


def test_missing_learner_data_is_one_clear_message(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV["sd15"], raising=False)
    from sdtune.course.at_scale import AtScale

    scale = AtScale("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", {}, ci=False)
    with pytest.raises(FileNotFoundError, match="missing or empty: download the ComposLoRA"):
        scale.data(str(tmp_path / "ComposLoRA"), "download the ComposLoRA LoRAs into it")
