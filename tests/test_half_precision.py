"""Every method trains on a model loaded in half precision, as `load_pipeline` loads SD 1.5 and SDXL on a GPU.

On the CPU, bfloat16 stands in for the GPU's float16 (the same dtype mismatches, and autocast works on the CPU in
bfloat16); float16 mixed precision needs a GPU and is refused with one message here. Each method runs under
--mixed-precision no and bf16 on the tiny architecture, and LoRA on tiny random SD 1.5 and SDXL pipelines; the loss
stays finite and the files load back and draw finite images.
"""

import json

import pytest
import torch
from accelerate.state import AcceleratorState

import sdtune
from random_pipelines import random_sd15, random_sdxl
from sdtune.data import toyworld
from sdtune.methods.hypernetwork import detach, load_hypernetwork
from sdtune.methods.textual_inversion import load_embedding, remove_embedding
from sdtune.training import DreamBoothConfig, HypernetworkConfig, LCMConfig, TextualInversionConfig, TrainConfig, train


@pytest.fixture(autouse=True)
def fresh_accelerator():
    """accelerate fixes the precision once per process: each case starts, and leaves, a fresh state."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def half_tiny(tiny_path):
    pipe = sdtune.load_pipeline(tiny_path, dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return toyworld.write_dataset(toyworld.sample_scenes(4, seed=3, styles=["dotted"]), tmp_path_factory.mktemp("d") / "dotted")


@pytest.fixture(scope="module")
def token_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ti") / "star"
    toyworld.write_dataset(toyworld.sample_scenes(4, seed=4, shapes=["star"]), folder)
    for caption in folder.glob("*.txt"):
        caption.write_text("a <star> on a background")
    return folder


def quick(cls, data, out, **options):
    return cls(**(dict(data=str(data), out=str(out), steps=3, batch_size=2, lr=1e-3) | options))


CASES = {
    "lora": (TrainConfig, {}),
    "lora + text encoder": (TrainConfig, {"train_text_encoder": True}),
    "locon": (TrainConfig, {"adapter": "locon"}),
    "loha": (TrainConfig, {"adapter": "loha"}),
    "lokr": (TrainConfig, {"adapter": "lokr"}),
    "dora": (TrainConfig, {"adapter": "dora"}),
    "full": (TrainConfig, {"adapter": "full", "lr": 1e-5}),
    "dreambooth": (DreamBoothConfig, {"instance_prompt": "a sks circle", "class_prompt": "a circle", "num_class_images": 2}),
    "dreambooth-lora": (DreamBoothConfig, {"adapter": "lora", "instance_prompt": "a sks circle", "class_prompt": "a circle",
                                           "num_class_images": 2}),
    "hypernetwork": (HypernetworkConfig, {}),
    "lcm": (LCMConfig, {}),
}


def finite_images(pipe) -> bool:
    images = pipe(["a dotted red circle"], num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    return bool(torch.isfinite(torch.as_tensor(images)).all())


def loads_back(pipe, out) -> None:
    """The result goes back into the half-precision pipeline it was trained on and draws finite images."""
    config = json.loads((out / "training_config.json").read_text())
    if config["adapter"] == "full":
        trained = type(pipe).from_pretrained(out, dtype=torch.bfloat16)
        trained.set_progress_bar_config(disable=True)
        assert finite_images(trained)
    elif config["adapter"] == "hypernetwork":
        load_hypernetwork(pipe.unet, out)
        assert finite_images(pipe)
        detach(pipe.unet)
    elif config["adapter"] == "textual-inversion":
        load_embedding(pipe, out)
        assert finite_images(pipe)
        remove_embedding(pipe, config["token"])
    else:
        name = sdtune.load_adapter(pipe, out / f"{out.name}.safetensors", "back")
        assert finite_images(pipe)
        sdtune.formats.adapters.remove_adapter(pipe, name)


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_method_trains_on_a_half_precision_model(case, precision, half_tiny, folder, tmp_path, monkeypatch):
    monkeypatch.setenv("SDTUNE_CACHE", str(tmp_path / "cache"))
    cls, options = CASES[case]
    out = train(quick(cls, folder, tmp_path / "out", mixed_precision=precision, **options), pipe=half_tiny)
    losses = json.loads((out / "loss.json").read_text())["loss"]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses))), losses
    assert half_tiny.unet.dtype == torch.bfloat16 and half_tiny.text_encoder.dtype == torch.bfloat16, "the caller's pipeline as it came"
    loads_back(half_tiny, out)


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_textual_inversion_trains_on_a_half_precision_model(precision, half_tiny, token_folder, tmp_path):
    out = train(quick(TextualInversionConfig, token_folder, tmp_path / "ti", token="<star>", init_word="star", lr=5e-3,
                      mixed_precision=precision), pipe=half_tiny)
    assert all(torch.isfinite(torch.tensor(json.loads((out / "loss.json").read_text())["loss"])))
    assert half_tiny.text_encoder.dtype == torch.bfloat16
    loads_back(half_tiny, out)


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
def test_lora_trains_on_half_precision_sd15_and_sdxl(architecture, precision, tiny_path, folder, tmp_path):
    pipe = (random_sd15 if architecture == "sd15" else random_sdxl)(tiny_path).to(dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    out = train(quick(TrainConfig, folder, tmp_path / architecture, mixed_precision=precision, train_text_encoder=True), pipe=pipe)
    assert all(torch.isfinite(torch.tensor(json.loads((out / "loss.json").read_text())["loss"])))
    loads_back(pipe, out)


def test_fp16_training_on_a_cpu_is_one_clear_message(folder, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="--mixed-precision fp16 needs a CUDA GPU"):
        train(quick(TrainConfig, folder, tmp_path / "o", mixed_precision="fp16"))
    assert not (tmp_path / "o").exists()
