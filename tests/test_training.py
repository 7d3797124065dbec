import json

import pytest
import torch
from safetensors.torch import load_file

from sdtune.data import toyworld
from sdtune.training import LoraTrainConfig, train_lora


@pytest.fixture(scope="module")
def striped_folder(tmp_path_factory):
    return toyworld.write_dataset(
        toyworld.sample_scenes(8, seed=1, styles=["striped"]), tmp_path_factory.mktemp("data") / "striped"
    )


def test_lora_file_loads_in_plain_diffusers_and_changes_the_output(tiny_pipe, striped_folder, tmp_path):
    out = train_lora(
        LoraTrainConfig(data=str(striped_folder), out=str(tmp_path / "lora"), steps=6, batch_size=4, lr=1e-2), pipe=tiny_pipe
    )
    assert not getattr(tiny_pipe.unet, "peft_config", None), "training must leave the caller's pipeline without adapters"
    weights = load_file(out / "pytorch_lora_weights.safetensors")
    assert weights and all(k.startswith("unet.") and ("lora_A" in k or "lora_B" in k) for k in weights)
    assert any("attn2.to_k.lora_B" in k for k in weights)
    losses = json.loads((out / "loss.json").read_text())["loss"]
    assert len(losses) == 6 and all(map(lambda v: v == v, losses))
    assert json.loads((out / "training_config.json").read_text())["rank"] == 4

    prompt = "a striped red circle on a white background"
    kwargs = dict(num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    base = tiny_pipe(prompt, **kwargs).images
    tiny_pipe.load_lora_weights(out)
    kwargs["generator"] = torch.Generator().manual_seed(0)
    adapted = tiny_pipe(prompt, **kwargs).images
    tiny_pipe.unload_lora_weights()
    assert abs(adapted - base).max() > 1e-3


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(rank=0), "--rank must be a positive"),
        (dict(alpha=-1.0), "--alpha must be positive"),
        (dict(targets="everything"), "Unknown --targets"),
        (dict(lr=0.0), "--lr must be a positive"),
        (dict(steps=0), "--steps and --batch-size"),
        (dict(mixed_precision="fp8"), "--mixed-precision"),
    ],
)
def test_bad_options_are_refused_before_work(change, message, striped_folder, tmp_path):
    with pytest.raises(ValueError, match=message):
        train_lora(LoraTrainConfig(data=str(striped_folder), out=str(tmp_path / "o"), **change))
    assert not (tmp_path / "o").exists()


def test_existing_results_are_not_overwritten(striped_folder, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="--overwrite"):
        train_lora(LoraTrainConfig(data=str(striped_folder), out=str(out)))
    assert (out / "keep.txt").read_text() == "precious"
