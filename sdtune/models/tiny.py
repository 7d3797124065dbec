"""The tiny Stable Diffusion: SD 1.x's architecture at toy scale.

The same four diffusers/transformers classes as SD 1.5, with the sizes shrunk:

| component | SD 1.5 | tiny |
|---|---|---|
| CLIPTokenizer | 49,408 BPE tokens, 77 positions | ~900 BPE tokens, 32 positions |
| CLIPTextModel | 12 layers, width 768 (123M) | 3 layers, width 128 (0.5M) |
| UNet2DConditionModel | 4 levels (320..1280), 64x64x4 latent (860M) | 3 levels (64, 128, 128), 8x8x8 latent (5.9M) |
| AutoencoderKL | 8x downsampling, 4 latent channels (84M) | 8x downsampling, 8 latent channels (2.7M) |

Images are 64x64, so the latent is 8x8 (SD's factor 8). The VAE has 8 latent channels, twice SD's
4: at 64 px a 4-channel 8x8 latent cannot keep novel styles and colours. Its latents are normalised per
channel by folding each channel's mean and std into the VAE's `quant_conv` / `post_quant_conv`
(`bake_latent_normalization`), so `scaling_factor` is 1.0 and every latent channel has unit variance,
which is what the noise schedule assumes.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .tokenizer import write_clip_vocab

RESOLUTION = 64
LATENT_CHANNELS = 8
MAX_TOKENS = 32

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 64, 128),
    layers_per_block=1,
    latent_channels=LATENT_CHANNELS,
    # One normalisation group. With 8 groups the 16-channel last stage has 2 channels per group just before
    # conv_out, and per-image group normalisation of a flat object on a flat background keeps little more than
    # the sign of each channel pair: colours collapsed (A/B, base images, 1,200 steps: 26.5 dB and 55% of
    # colours named after a round trip with 8 groups; 29.1 dB and 95% with 1).
    norm_num_groups=1,
    sample_size=RESOLUTION,
    scaling_factor=1.0,
)

UNET_CONFIG = dict(
    sample_size=RESOLUTION // 8,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    block_out_channels=(64, 128, 128),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=128,
    attention_head_dim=8,
    norm_num_groups=16,
)

TEXT_CONFIG = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=MAX_TOKENS,
    projection_dim=128,
)

# Stable Diffusion's noise schedule. clip_sample must stay off: clipping x0 to [-1, 1] is for pixels,
# and ruins latent-space sampling.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)


def new_vae() -> AutoencoderKL:
    return AutoencoderKL(**VAE_CONFIG)


def new_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**UNET_CONFIG)


def new_text_encoder(vocab_size: int, bos_token_id: int, eos_token_id: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size, bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id, **TEXT_CONFIG
    )
    return CLIPTextModel(config)


def new_train_scheduler() -> DDPMScheduler:
    """The training-time noise scheduler, read from the sampling scheduler's config as SD trainers do."""
    return DDPMScheduler.from_config(new_sample_scheduler().config)


def new_sample_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULER_CONFIG)


@torch.no_grad()
def bake_latent_normalization(vae: AutoencoderKL, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Fold per-channel latent statistics into the VAE so its latents come out standardised.

    The encoder's `quant_conv` (1x1) outputs [mu, logvar]. We want mu' = (mu - m) / s, and so
    logvar' = logvar - 2 log s. The decoder's `post_quant_conv` (1x1) must then undo it on its input:
    W z + b = W (s z' + m) + b = (W s) z' + (W m + b).
    """
    c = mean.numel()
    q = vae.quant_conv
    q.weight[:c] /= std.view(c, 1, 1, 1)
    q.bias[:c] = (q.bias[:c] - mean) / std
    q.bias[c:] -= 2 * torch.log(std)
    p = vae.post_quant_conv
    p.bias += p.weight[:, :, 0, 0] @ mean
    p.weight *= std.view(1, c, 1, 1)


def new_tokenizer(vocab_dir: str | Path) -> CLIPTokenizer:
    """Learn the BPE vocabulary into `vocab_dir` (vocab.json + merges.txt) and load it as a CLIPTokenizer."""
    return CLIPTokenizer.from_pretrained(write_clip_vocab(vocab_dir), model_max_length=MAX_TOKENS)


def assemble_pipeline(unet, vae, text_encoder, tokenizer) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline from tiny parts, with the DDIM sampler and no safety checker."""
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=new_sample_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save_pipeline(pipe: StableDiffusionPipeline, folder: str | Path, vocab_dir: str | Path) -> Path:
    """`save_pretrained`, plus CLIP's vocab.json + merges.txt beside tokenizer.json, as SD repositories ship."""
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(Path(vocab_dir) / name, folder / "tokenizer" / name)
    return folder


def save_untrained_pipeline(folder: str | Path, seed: int = 0) -> Path:
    """The tiny architecture with random weights, saved as a diffusers folder: for tests and for wiring studies."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as vocab_dir:
        tokenizer = new_tokenizer(vocab_dir)
        text_encoder = new_text_encoder(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
        pipe = assemble_pipeline(new_unet(), new_vae(), text_encoder, tokenizer)
        return save_pipeline(pipe, folder, vocab_dir)
