"""SD 1.5 and SDXL with random weights: every real-model code path, run where no weights can be downloaded.

`random_pipeline("sd15")` and `random_pipeline("sdxl")` build the exact architectures (SD 1.5's 860M-parameter UNet,
CLIP ViT-L/14's text encoder, the SD VAE; SDXL's 2.6B UNet and both text encoders): what time and memory depend on,
for the GPU benchmark. `small=True` shrinks every width and depth but keeps what tells the families apart and what
the code reads (SD 1.5's 768-wide text embeddings, SDXL's two text encoders, 2048-wide cross-attention, size/crop
time ids and float32 VAE upcast), at 64 px: the tests and CI run the learner's GPU code (the chapters' "at scale"
cells) on these, on a CPU, in seconds. The tokenizer is the tiny model's, padded to CLIP's 77 tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .loading import TINY_PATH
from .tiny import SCHEDULER_CONFIG

KINDS = ("sd15", "sdxl")


def _text_config(tokenizer: CLIPTokenizer, width: int, small: bool) -> CLIPTextConfig:
    """CLIP ViT-L/14's text tower (768 wide: SD 1.5, SDXL's first encoder) or OpenCLIP bigG's (1280: SDXL's second)."""
    if small:
        size = dict(intermediate_size=64, num_hidden_layers=1, num_attention_heads=width // 64)
    elif width == 1280:
        size = dict(intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu")
    else:
        size = dict(intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    return CLIPTextConfig(vocab_size=len(tokenizer) if small else 49408, max_position_embeddings=77, hidden_size=width,
                          projection_dim=width, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **size)


def _vae(small: bool, resolution: int, scaling: float, force_upcast: bool) -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(16, 32, 32, 32) if small else (128, 256, 512, 512), latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
                         norm_num_groups=8 if small else 32, sample_size=resolution, scaling_factor=scaling, force_upcast=force_upcast)


def random_pipeline(kind: str, small: bool = False, seed: int = 0) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A float32 pipeline of `kind` ('sd15' or 'sdxl') with random weights, on the CPU."""
    if kind not in KINDS:
        raise ValueError(f"Unknown architecture {kind!r}: choose one of {', '.join(KINDS)}.")
    tokenizer = CLIPTokenizer.from_pretrained(TINY_PATH / "tokenizer")
    tokenizer.model_max_length = 77
    torch.manual_seed(seed)
    if kind == "sd15":
        resolution = 64 if small else 512
        unet = UNet2DConditionModel(
            sample_size=resolution // 8, block_out_channels=(32, 32, 64, 64) if small else (320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            layers_per_block=1 if small else 2, cross_attention_dim=768, attention_head_dim=8, norm_num_groups=8 if small else 32)
        return StableDiffusionPipeline(vae=_vae(small, resolution, 0.18215, False), text_encoder=CLIPTextModel(_text_config(tokenizer, 768, small)),
                                       tokenizer=tokenizer, unet=unet, scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    resolution = 64 if small else 1024
    time_width = 8 if small else 256
    unet = UNet2DConditionModel(
        sample_size=resolution // 8, block_out_channels=(32, 64, 64) if small else (320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1 if small else 2,
        transformer_layers_per_block=(1, 1, 2) if small else (1, 2, 10), attention_head_dim=(2, 4, 4) if small else (5, 10, 20),
        cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=time_width,
        projection_class_embeddings_input_dim=time_width * 6 + 1280, norm_num_groups=8 if small else 32)
    return StableDiffusionXLPipeline(
        vae=_vae(small, resolution, 0.13025, True), text_encoder=CLIPTextModel(_text_config(tokenizer, 768, small)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer, 1280, small)), tokenizer=tokenizer, tokenizer_2=tokenizer,
        unet=unet, scheduler=DDIMScheduler(**SCHEDULER_CONFIG))


def save_random_pipeline(kind: str, folder: str | Path, small: bool = False, dtype: torch.dtype = torch.float32) -> Path:
    """`random_pipeline(kind, small)` saved as a diffusers folder, which `load_pipeline(folder)` loads like a hub model."""
    folder = Path(folder)
    random_pipeline(kind, small).to(dtype=dtype).save_pretrained(folder)
    return folder
