"""The training loop: a folder of captioned images in, an adapter file out.

One step of diffusion fine-tuning, the same for SD 1.5 and the tiny model:

    z0  = VAE.encode(x) * scaling_factor                    (cached once: the VAE is frozen)
    c   = TextEncoder(tokens(caption))                       (cached once when the text encoder is frozen)
    t ~ U{0..T-1},  eps ~ N(0, I)
    z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps             (noise_scheduler.add_noise)
    L   = || eps - UNet_theta(z_t, t, c) ||^2                (theta: only the adapter's weights)

Runs through `accelerate`, so `accelerate launch -m sdtune train ...` is data-parallel on several GPUs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler, StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from tqdm.auto import tqdm

from .config import option
from .data.folder import load_examples, scan_folder
from .io import check_output_folder, staged_folder
from .models.loading import load_pipeline

TARGET_PRESETS = {
    "attn": ["to_q", "to_k", "to_v", "to_out.0"],
    "attn-mlp": ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"],
}


@dataclass
class LoraTrainConfig:
    """Everything a LoRA training run needs; the CLI's options are these fields."""

    data: str = option("Folder of images with same-name .txt captions (or metadata.jsonl).")
    out: str = option("Output folder for the adapter, its config and loss log; must be empty unless overwrite.")
    model: str = option("'tiny', a diffusers pipeline folder, or a hub id (SD 1.x/2.x).", "tiny")
    rank: int = option("LoRA rank r: the inner dimension of B A.", 4)
    alpha: float | None = option("LoRA alpha; the update is scaled by alpha / rank. Default: alpha = rank.", None)
    targets: str = option(f"Which layers get adapters: {', '.join(TARGET_PRESETS)}.", "attn")
    steps: int = option("Optimizer steps.", 300)
    batch_size: int = option("Images per step.", 8)
    lr: float = option("Learning rate (AdamW).", 1e-3)
    warmup_steps: int = option("Linear learning-rate warmup steps.", 0)
    seed: int = option("Seed for initialisation, noise and batches.", 0)
    instance_prompt: str | None = option("Caption for images that have no caption file.", None)
    mixed_precision: str = option("'no', 'fp16' or 'bf16' (fp16/bf16 need a GPU).", "no")
    overwrite: bool = option("Replace the output folder's contents if it already holds results.", False)

    def validate(self) -> None:
        """Check every option before any work starts; each problem names the option and the fix."""
        if self.rank <= 0:
            raise ValueError(f"--rank must be a positive integer, got {self.rank}.")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"--alpha must be positive, got {self.alpha}.")
        if self.targets not in TARGET_PRESETS:
            raise ValueError(f"Unknown --targets {self.targets!r}: choose one of {', '.join(TARGET_PRESETS)}.")
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError(f"--steps and --batch-size must be positive, got {self.steps} and {self.batch_size}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}.")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"--mixed-precision must be no, fp16 or bf16, got {self.mixed_precision!r}.")
        if not self.out:
            raise ValueError("--out is required: the folder the trained adapter is written to.")
        check_output_folder(self.out, self.overwrite)


def lora_config(cfg: LoraTrainConfig) -> LoraConfig:
    """The peft LoraConfig; `init_lora_weights="gaussian"` draws A ~ N(0, 1/r) and sets B = 0."""
    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha or cfg.rank,
        init_lora_weights="gaussian",
        target_modules=TARGET_PRESETS[cfg.targets],
    )


@torch.no_grad()
def encode_dataset(pipe, pixels: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cache what the frozen VAE and text encoder produce: latent means and stds, and prompt embeddings."""
    dists = [pipe.vae.encode(b.to(pipe.device, pipe.vae.dtype)).latent_dist for b in pixels.split(64)]
    scale = pipe.vae.config.scaling_factor
    mean = torch.cat([d.mean for d in dists]).float() * scale
    std = torch.cat([d.std for d in dists]).float() * scale
    ids = pipe.tokenizer(
        captions, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    embeds = torch.cat([pipe.text_encoder(b.to(pipe.device))[0] for b in ids.split(64)]).float()
    return mean, std, embeds


def _optimize_and_save(cfg: LoraTrainConfig, accelerator: Accelerator, unet, lat_mean, lat_std, embeds, noise_config) -> Path:
    """The training loop over cached latents and embeddings, then the staged write of the output folder."""
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:  # train the adapter in fp32 even if the base model is in half precision
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    warmup = max(1, cfg.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    unet, optimizer, scheduler = accelerator.prepare(unet, optimizer, scheduler)
    noise_scheduler = DDPMScheduler.from_config(noise_config)

    gen = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    unet.train()
    start = time.time()
    for step in (bar := tqdm(range(cfg.steps), desc="lora", disable=not accelerator.is_main_process)):
        idx = torch.randint(0, len(lat_mean), (cfg.batch_size,), generator=gen)
        z0 = lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=gen)
        z_t = noise_scheduler.add_noise(z0, noise, t)
        device = accelerator.device
        with accelerator.autocast():
            pred = unet(z_t.to(device), t.to(device), embeds[idx].to(device)).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Loss became {loss.item()} at step {step}: lower --lr (now {cfg.lr}).")
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")

    unet = accelerator.unwrap_model(unet)
    out = Path(cfg.out)
    if accelerator.is_main_process:
        with staged_folder(out) as tmp:
            StableDiffusionPipeline.save_lora_weights(
                tmp, unet_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True,
                unet_lora_adapter_metadata=lora_config(cfg).to_dict(),
            )
            (tmp / "training_config.json").write_text(json.dumps(asdict(cfg), indent=1))
            (tmp / "loss.json").write_text(json.dumps({"loss": losses, "seconds": time.time() - start}))
    return out


def train_lora(cfg: LoraTrainConfig, pipe: StableDiffusionPipeline | None = None) -> Path:
    """Train a UNet LoRA on a folder; returns the output folder.

    The folder holds `pytorch_lora_weights.safetensors` (loads with `pipe.load_lora_weights(out)`),
    `training_config.json` and `loss.json`. Everything is written to a temporary folder first and moved
    into place at the end, so a crash never leaves half an output.
    """
    cfg.validate()
    examples = scan_folder(cfg.data, cfg.instance_prompt)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    torch.manual_seed(cfg.seed)
    pipe = pipe or load_pipeline(cfg.model, device=str(accelerator.device))
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.requires_grad_(False)
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    pixels = load_examples(examples, resolution)
    lat_mean, lat_std, embeds = encode_dataset(pipe, pixels, [e.caption for e in examples])

    unet = pipe.unet
    unet.add_adapter(lora_config(cfg))
    try:
        out = _optimize_and_save(cfg, accelerator, unet, lat_mean, lat_std, embeds, pipe.scheduler.config)
    finally:
        pipe.unet.delete_adapters("default")  # leave the caller's pipeline as it came, also after an error
    accelerator.wait_for_everyone()
    return out

