"""Settings that fit the learner's GPU: batch size, precision, gradient checkpointing, 8-bit Adam, offloading.

    settings = sdtune.fit.settings_for("sdxl", "lora")        # reads the GPU's memory; prints what it chose and why
    train(TrainConfig(model=..., data=..., out=..., **settings))

The rules start from what the training needs at batch 1 and add savers until it fits, with a margin of 1.5 GB for
the CUDA context and fragmentation. What each saver costs and saves (fp16 weights: 2 bytes per parameter):

- half precision (fp16 on a T4, bf16 where the GPU has it: Ampere and newer): the frozen weights and activations
  at half the size; always on a GPU. bf16 needs no loss scaling, so it is preferred where supported.
- gradient checkpointing: activations recomputed in the backward pass, about 30% slower;
- 8-bit AdamW (bitsandbytes): the optimizer's two moments in 1 byte each instead of 4: matters only when many
  weights train (full fine-tuning, DreamBooth), not for a LoRA;
- offloading the frozen VAE and text encoders to the CPU once their outputs are cached (kohya's
  cache_text_encoder_outputs): SDXL's two text encoders are 1.6 GB in fp16.

The needs below are estimates at batch 1, 512 px (SD 1.x/2.x) or 1024 px (SDXL), from the parameter counts and
published figures: diffusers' DreamBooth README (full DreamBooth of SD 1.5 in 16 GB with checkpointing and 8-bit
Adam; SDXL DreamBooth-LoRA under 16 GB), and sdtune's own run on an H100 (`benchmarks/results/gpu_h100.json`: SD 1.5
LoRA 5.4 GB with fp16 and checkpointing). That run's SDXL LoRA peak, 20.1 GB, came before the training step, from the
VAE encoding 32 images of 1024 px in one call; latents are now encoded one such image at a time
(`sdtune.data.latents`), so it is not the step's need. These are a plan, printed with its reasons, not a guarantee:
on a GPU, `benchmarks/gpu_real_resolution.py` measures them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MARGIN_GB = 1.5  # CUDA context, allocator fragmentation

# GB at batch 1 in half precision: what is always there, what checkpointing / 8-bit Adam / offloading saves
NEEDS = {
    # (family, method): (base, saved by checkpointing, saved by 8-bit Adam, saved by offloading frozen parts, per extra image)
    ("sd1", "lora"): (6.5, 1.5, 0.0, 0.6, 1.0),
    ("sd1", "textual-inversion"): (6.5, 1.5, 0.0, 0.0, 1.0),
    ("sd1", "dreambooth-lora"): (7.0, 1.5, 0.0, 0.6, 1.0),
    ("sd1", "dreambooth"): (24.0, 4.0, 6.5, 0.6, 1.5),
    ("sd1", "full"): (24.0, 4.0, 6.5, 0.6, 1.5),
    ("sdxl", "lora"): (16.0, 5.0, 0.0, 2.0, 4.0),
    ("sdxl", "textual-inversion"): (16.0, 5.0, 0.0, 0.0, 4.0),
    ("sdxl", "dreambooth-lora"): (16.5, 5.0, 0.0, 2.0, 4.0),
    ("sdxl", "dreambooth"): (60.0, 10.0, 16.0, 2.0, 6.0),
    ("sdxl", "full"): (60.0, 10.0, 16.0, 2.0, 6.0),
}
NEEDS |= {("sd2", method): need for (family, method), need in NEEDS.items() if family == "sd1"}


@dataclass
class Fit:
    """The chosen TrainConfig settings, the memory they are estimated to need, and why each was chosen."""

    settings: dict
    need_gb: float
    memory_gb: float
    reasons: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"settings for a {self.memory_gb:.0f} GB GPU (estimated need {self.need_gb:.1f} GB):"]
        return "\n".join(lines + [f"  {reason}" for reason in self.reasons])


def gpu_memory_gb() -> float | None:
    """The first CUDA GPU's memory in GB, or None without one."""
    return torch.cuda.get_device_properties(0).total_memory / 1e9 if torch.cuda.is_available() else None


def plan(family: str, method: str, memory_gb: float, bf16: bool) -> Fit:
    """The settings for one model family ('sd1', 'sd2', 'sdxl') and method ('lora', 'dreambooth', 'dreambooth-lora',
    'textual-inversion', 'full') on a GPU of `memory_gb` GB (with bfloat16 units if `bf16`)."""
    if (family, method) not in NEEDS:
        known = sorted({m for _, m in NEEDS})
        raise ValueError(f"No memory plan for {family} {method}: the families are sd1, sd2, sdxl and the methods {', '.join(known)}.")
    base, checkpointing, adam8, offload, per_image = NEEDS[(family, method)]
    budget = memory_gb - MARGIN_GB
    precision = "bf16" if bf16 else "fp16"
    fit = Fit({"mixed_precision": precision, "batch_size": 1, "gradient_checkpointing": False, "optimizer": "adamw",
               "offload_frozen": False}, base, memory_gb,
              [f"mixed_precision={precision}: " + ("bfloat16 units: no loss scaling needed" if bf16 else "this GPU has no bfloat16 units")])
    for name, value, saves, why in (("offload_frozen", True, offload, "the VAE and text encoders wait on the CPU while the UNet trains"),
                                    ("gradient_checkpointing", True, checkpointing, "activations recomputed in the backward pass (~30% slower)"),
                                    ("optimizer", "adamw8bit", adam8, "AdamW's moments in 8 bits (bitsandbytes)")):
        if fit.need_gb > budget and saves > 0:
            fit.settings[name] = value
            fit.need_gb -= saves
            fit.reasons.append(f"{name}={value}: saves ~{saves:g} GB; {why}")
    if fit.need_gb > budget:
        raise ValueError(f"{family} {method} needs about {fit.need_gb:.0f} GB even with every saver, more than this {memory_gb:.0f} GB "
                         f"GPU: use a LoRA method, a smaller model (SD 1.5), or a larger GPU.")
    extra = int((budget - fit.need_gb) // per_image)
    fit.settings["batch_size"] = 1 + min(extra, 3)  # a batch of 4 is enough for these methods; more memory: more steps/s elsewhere
    fit.need_gb += (fit.settings["batch_size"] - 1) * per_image
    fit.reasons.append(f"batch_size={fit.settings['batch_size']}: ~{per_image:g} GB per extra image at this resolution")
    if fit.settings["optimizer"] == "adamw8bit":
        fit.reasons.append("8-bit Adam needs bitsandbytes: pip install \"sdtune[gpu]\" (the chapters' Colab cell does)")
    return fit


def settings_for(family: str, method: str, memory_gb: float | None = None, verbose: bool = True) -> dict:
    """TrainConfig settings for this machine's GPU (or one of `memory_gb` GB), printed with their reasons."""
    memory_gb = memory_gb or gpu_memory_gb()
    if memory_gb is None:
        raise ValueError("No CUDA GPU here: sdtune.fit plans GPU memory. On a CPU train the tiny model (no settings needed).")
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    fit = plan(family, method, memory_gb, bf16)
    if verbose:
        print(fit)
    return fit.settings
