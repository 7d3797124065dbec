import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

import sdtune
from sdtune.models import tiny
from sdtune.io import ASSETS
from sdtune.models.loading import ModelError, resolve_model


def test_tiny_is_a_genuine_sd_pipeline_with_sd_components(tiny_pipe):
    assert isinstance(tiny_pipe, StableDiffusionPipeline)
    assert isinstance(tiny_pipe.tokenizer, CLIPTokenizer)
    assert isinstance(tiny_pipe.text_encoder, CLIPTextModel)
    assert isinstance(tiny_pipe.unet, UNet2DConditionModel) and tiny_pipe.unet.config.cross_attention_dim
    assert isinstance(tiny_pipe.vae, AutoencoderKL) and tiny_pipe.vae_scale_factor == 8
    assert tiny_pipe.scheduler.config.clip_sample is False
    assert tiny_pipe.unet.dtype == torch.float32


def test_plain_diffusers_loads_a_tiny_folder(tiny_path):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_path)
    image = pipe("a blue square on a black background", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_shipped_assets_fit_the_package_budget():
    total = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert total <= 25 * 1024 * 1024, f"assets are {total / 2**20:.1f} MiB"


def test_sampling_is_reproducible(tiny_pipe):
    a = sdtune.sample(tiny_pipe, ["a red circle on a white background"] * 2, num_inference_steps=4, seed=5)
    b = sdtune.sample(tiny_pipe, ["a red circle on a white background"] * 2, num_inference_steps=4, seed=5)
    assert [x.tobytes() for x in a] == [x.tobytes() for x in b]


@pytest.mark.parametrize(
    "model, message",
    [("tinyy", "Unknown model 'tinyy'"), ("no/such/thing", "Unknown model")],
)
def test_unknown_models_are_refused(model, message):
    with pytest.raises(ModelError, match=message):
        resolve_model(model)


def test_a_folder_that_is_not_a_pipeline_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no model_index.json"):
        sdtune.load_pipeline(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelError, match="single file"):
        sdtune.load_pipeline(tmp_path / "model.safetensors")


def test_hub_ids_pass_through_to_from_pretrained():
    assert resolve_model("stable-diffusion-v1-5/stable-diffusion-v1-5") == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_baked_latent_normalization_standardises_latents_and_keeps_the_round_trip():
    torch.manual_seed(0)
    vae = tiny.new_vae().eval()
    x = torch.rand(6, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        mu = vae.encode(x).latent_dist.mean
        recon = vae.decode(mu).sample
        mean, std = mu.mean(dim=(0, 2, 3)), mu.std(dim=(0, 2, 3))
        tiny.bake_latent_normalization(vae, mean, std)
        dist = vae.encode(x).latent_dist
        recon2 = vae.decode(dist.mean).sample
    assert torch.allclose(dist.mean.mean(dim=(0, 2, 3)), torch.zeros(8), atol=1e-4)
    assert torch.allclose(dist.mean.std(dim=(0, 2, 3)), torch.ones(8), atol=1e-4)
    assert torch.allclose(recon, recon2, atol=1e-4)
