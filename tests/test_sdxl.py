"""The SDXL wiring (two text encoders, pooled embedding, size/crop time ids) on tiny random SDXL components."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from adapter_images import through_both_layouts
from sdtune.data import toyworld
from sdtune.models.tiny import SCHEDULER_CONFIG
from sdtune.training import TrainConfig, train


@pytest.fixture(scope="module")
def sdxl(tiny_path):
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(tiny_path / "tokenizer")
    text = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=len(tokenizer),
                max_position_embeddings=tokenizer.model_max_length, projection_dim=32,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 32, norm_num_groups=8,
    )
    vae = AutoencoderKL(block_out_channels=(16, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8, sample_size=64)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**text)), text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text)),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(pipe):
    return pipe("a striped red circle", num_inference_steps=2, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


def test_sdxl_lora_with_both_text_encoders_trains_and_loads_in_both_layouts(sdxl, tmp_path):
    data = toyworld.write_dataset(toyworld.sample_scenes(4, seed=3, styles=["striped"]), tmp_path / "data")
    out = train(TrainConfig(data=str(data), out=str(tmp_path / "xl"), steps=3, batch_size=2, lr=1e-2, train_text_encoder=True), pipe=sdxl)
    kohya = load_file(out / "xl.safetensors")
    assert {k.split("_")[1] for k in kohya} == {"unet", "te1", "te2"}
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj") for k in kohya)
    diffusers_keys = load_file(out / "pytorch_lora_weights.safetensors")
    assert {k.split(".")[0] for k in diffusers_keys} == {"unet", "text_encoder", "text_encoder_2"}

    base = images(sdxl)
    a, b = through_both_layouts(sdxl, out, out / "xl.safetensors", images)
    assert abs(a - base).max() > 1e-4
    assert abs(a - b).max() < 1e-5


def test_b_lora_lives_in_two_sdxl_blocks_and_recombines_across_images(sdxl, tmp_path):
    from sdtune.formats import load_adapter
    from sdtune.formats.adapters import remove_adapter
    from sdtune.io import staged_file
    from sdtune.methods.blora import SDXL_BLOCKS, block_part, recombine
    from safetensors.torch import save_file

    outs = []
    for i, style in enumerate(("striped", "dotted")):
        data = toyworld.write_dataset(toyworld.sample_scenes(1, seed=i, styles=[style]), tmp_path / f"image{i}")
        outs.append(train(TrainConfig(data=str(data), out=str(tmp_path / f"b{i}"), steps=2, batch_size=1, lr=1e-2,
                                      blocks=",".join(SDXL_BLOCKS.values())), pipe=sdxl))
    loras = [load_file(out / f"b{i}.safetensors") for i, out in enumerate(outs)]
    prefixes = ("lora_unet_up_blocks_0_attentions_0_", "lora_unet_up_blocks_0_attentions_1_")
    assert all(k.startswith(prefixes) for k in loras[0]) and any(k.startswith(prefixes[1]) for k in loras[0])
    mixed = recombine(loras[0], loras[1])
    assert set(mixed) == set(block_part(loras[0], SDXL_BLOCKS["content"])) | set(block_part(loras[1], SDXL_BLOCKS["style"]))
    assert all(torch.equal(mixed[k], loras[1][k]) for k in block_part(loras[1], SDXL_BLOCKS["style"]))
    with staged_file(tmp_path / "mixed.safetensors") as tmp:
        save_file(mixed, str(tmp))
    base = images(sdxl)
    load_adapter(sdxl, tmp_path / "mixed.safetensors", "mixed")
    assert abs(images(sdxl) - base).max() > 1e-4
    remove_adapter(sdxl, "mixed")
    with pytest.raises(ValueError, match="no such UNet block"):
        train(TrainConfig(data=str(tmp_path / "image0"), out=str(tmp_path / "bad"), blocks="up_blocks.7.attentions.0"), pipe=sdxl)


def test_sdxl_composite_is_the_mean_of_the_separate_predictions(sdxl):
    """The added conditioning (pooled text embedding, time ids) is repeated with the batch for every LoRA's copy."""
    from peft import LoraConfig

    from sdtune.composition import compose
    from sdtune.formats.adapters import add_adapter, remove_adapter

    names = ["a", "b"]
    for i, name in enumerate(names):  # a conv LoRA too: slices of a 4-d batch
        torch.manual_seed(i)
        add_adapter(sdxl.unet, LoraConfig(r=2 + i, init_lora_weights=False, target_modules=["to_q", "to_v", "proj_in", "conv1"]), name)
    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 64, generator=g)
    added = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.tensor([[64, 64, 0, 0, 64, 64], [64, 48, 8, 0, 64, 64.0]])}
    with torch.no_grad():
        separate = []
        for name in names:
            sdxl.set_adapters(name)
            separate.append(sdxl.unet(z, torch.tensor([500, 20]), c, added_cond_kwargs=added).sample)
        with compose(sdxl, names, "composite", weights=[0.5, 2.0]):
            composite = sdxl.unet(z, torch.tensor([500, 20]), c, added_cond_kwargs=added).sample
        for name, weight in zip(names, [0.5, 2.0]):
            sdxl.set_adapters(name, weight)
            separate.append(sdxl.unet(z, torch.tensor([500, 20]), c, added_cond_kwargs=added).sample)
    for name in names:
        remove_adapter(sdxl, name)
    assert not torch.allclose(separate[0], separate[1], atol=1e-4)
    assert torch.allclose(composite, torch.stack(separate[2:]).mean(0), atol=1e-5)


def test_torch_compile_trains_the_same_adapter_as_eager(sdxl, tmp_path, monkeypatch):
    """--torch-compile through dynamo's graph capture and AOT autograd; the inductor backend (C++ code generation,
    about two minutes here) is left to `benchmarks/train_speed.py`, which trains with it."""
    compiled_modules, real_compile = [], torch.compile

    def aot_eager(module, **options):
        compiled_modules.append(module)
        return real_compile(module, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", aot_eager)
    data = toyworld.write_dataset(toyworld.sample_scenes(4, seed=3, styles=["striped"]), tmp_path / "data")
    runs = {}
    for compiled in (False, True):
        cfg = TrainConfig(data=str(data), out=str(tmp_path / str(compiled)), steps=3, batch_size=2, lr=1e-2, torch_compile=compiled)
        out = train(cfg, pipe=sdxl)
        runs[compiled] = load_file(out / "pytorch_lora_weights.safetensors"), json.loads((out / "loss.json").read_text())["loss"]
    (eager, eager_loss), (compiled, compiled_loss) = runs[False], runs[True]
    assert compiled_modules == [sdxl.unet], "only the --torch-compile run compiles, and it compiles the UNet"
    assert eager_loss[0] == pytest.approx(compiled_loss[0], rel=1e-5), "the first step sees the same weights"
    assert eager.keys() == compiled.keys()
    moved = max(v.abs().max().item() for k, v in eager.items() if "lora_B" in k)  # B starts at zero
    assert moved > 1e-3, "three steps at lr 1e-2 move LoRA's B off zero"
    assert max((eager[k] - compiled[k]).abs().max().item() for k in eager) < 0.02 * moved
