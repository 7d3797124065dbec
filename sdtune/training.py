"""The training loop: a folder of captioned images in, an adapter (or a fine-tuned UNet) out.

One step of diffusion fine-tuning, the same for SD 1.5, SDXL and the tiny model:

    z0  = VAE.encode(x) * scaling_factor                    (cached once: the VAE is frozen)
    c   = TextEncoder(tokens(caption))                       (cached once unless the text encoder trains)
    t ~ U{t_min..t_max-1} (all T by default),  eps ~ N(0, I)   (+ noise_offset * N(0, 1) per image and channel)
    z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps             (noise_scheduler.add_noise)
    L   = w(t) || target - UNet_theta(z_t, t, c) ||^2         target = eps (or v for v-prediction models)
    w(t) = min(SNR_t, gamma) / SNR_t                         (min-SNR-gamma; 1 when off)

theta is what the method trains (`sdtune.methods.trainable`: an adapter, every UNet weight, a token's embedding, a
hypernetwork); the loop asks the method to attach, save and detach it and names no method itself. With prior
preservation (DreamBooth) each step adds a batch of class images: L = L_instance + lambda L_class. LCM-LoRA's config
brings its own loss (`LCMConfig.batch_loss`). Options left unset take the defaults of the model family and method
(`sdtune.defaults`), printed at the start. Runs through `accelerate`: `accelerate launch -m sdtune train ...` is
data-parallel. Checkpoints (`sdtune.checkpoints`) hold everything the loop's future depends on, so a resumed run ends
with the same weights as one that was never interrupted (on one process; with several, each process's batches are
drawn from its own generator and only the first one's state is saved).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Iterator

import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler
from tqdm.auto import tqdm

from .checkpoints import check_resume, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import check_number, option
from .data.captions import shuffle_caption
from .data.folder import scan_folder
from .data.latents import Batch, LatentSet, default_cache_folder, prepare_latents
from .defaults import Default, model_family, recommended
from .formats.adapters import components
from .io import check_output_folder, park_previous_result, staged_file, staged_folder, write_manifest
from .methods import ADAPTER_KINDS, DEFAULT_TARGETS, TARGET_PRESETS
from .methods import hypernetwork as hypernet
from .methods.dreambooth import class_images
from .methods.lcm import lcm_batch_loss
from .methods.trainable import Trainable, trainable_for
from .models.loading import load_pipeline

__all__ = ["DreamBoothConfig", "HypernetworkConfig", "LCMConfig", "TextualInversionConfig", "TrainConfig", "encode_captions",
           "encode_images", "latest_checkpoint", "train", "unet_inputs"]

SCHEDULES = ("constant", "linear", "cosine")
OTHER_KINDS = ("full", "textual-inversion", "hypernetwork")  # trained without a peft adapter
MAX_STEPS = 10_000_000  # more is a typo: at 10 steps a second it would run for 11 days
_AUTO = "Default: per model and method (printed at the start of a run; sdtune.defaults)."


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, with what was kept and how to go on."""


@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI's options are these fields. None: the model's and method's default."""

    data: str = option("Folder of images with same-name .txt captions (or metadata.jsonl).")
    out: str = option("Output folder for the adapter files, config, loss log, validation images and checkpoints.")
    model: str = option("'tiny', a diffusers pipeline folder, or a hub id (SD 1.x/2.x, SDXL).", "tiny")
    adapter: str | None = option(f"What to train: {', '.join(ADAPTER_KINDS)}, or full (every UNet weight). {_AUTO}", None)
    rank: int | None = option(f"Adapter rank r (LoRA: the inner dimension of B A). {_AUTO}", None)
    alpha: float | None = option("Adapter alpha; the update is scaled by alpha / rank. Default: alpha = rank.", None)
    targets: str | None = option(f"Adapted layers: {', '.join(TARGET_PRESETS)}. {_AUTO}", None)
    lokr_factor: int = option("LoKr only (LyCORIS's factor): a factor f that divides a layer's width d splits it into f and d / f, "
                              "the smaller side in W1 (4 or 16: 64 -> 4 x 16); otherwise the divisors nearest sqrt(d), W1's side "
                              "at most f; -1 = nearest the square root (64 -> 8 x 8).", -1)
    blocks: str | None = option("Only these UNet blocks, comma-separated prefixes (B-LoRA on SDXL: "
                                "up_blocks.0.attentions.0,up_blocks.0.attentions.1). Default: the whole UNet.", None)
    train_text_encoder: bool = option("Also train the text encoder(s): an adapter on them, or with --adapter full all their weights.", False)
    steps: int | None = option(f"Optimizer steps. {_AUTO}", None)
    batch_size: int | None = option(f"Images per micro-batch (per process). {_AUTO}", None)
    gradient_accumulation: int = option("Micro-batches per optimizer step: effective batch = batch size x this x processes.", 1)
    lr: float | None = option(f"Learning rate (AdamW). {_AUTO}", None)
    text_encoder_lr: float | None = option("Learning rate of the text encoder's adapter. Default: --lr.", None)
    lr_scheduler: str | None = option(f"Learning-rate schedule after warmup: {', '.join(SCHEDULES)}. {_AUTO}", None)
    warmup_steps: int | None = option(f"Linear learning-rate warmup steps. {_AUTO}", None)
    max_grad_norm: float | None = option("Clip the gradients' total norm to this before each step (kohya and the diffusers examples use "
                                         f"1); 0 = no clipping. {_AUTO}", None)
    min_snr_gamma: float = option("Min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5; 0 = off.", 0.0)
    noise_offset: float = option("Noise offset (e.g. 0.05): lets the model learn very dark or bright images; 0 = off.", 0.0)
    min_timestep: int | None = option(f"Train only on timesteps t >= this (kohya's --min_timestep). {_AUTO}", None)
    max_timestep: int | None = option("Train only on timesteps t < this (kohya's --max_timestep). Low-noise steps (e.g. < 600) shape "
                                      f"texture and style, high-noise steps the layout. {_AUTO} Unset there: all (1000).", None)
    caption_dropout: float = option("Fraction of steps' captions replaced by the empty prompt (keeps guidance working).", 0.0)
    caption_extension: str = option("The captions' file extension beside each image (kohya's --caption_extension), e.g. .caption.", ".txt")
    shuffle_caption: bool = option("Shuffle each caption's comma-separated tags at every step (kohya's --shuffle_caption); the text "
                                   "encoder then runs on every batch.", False)
    keep_tokens: int = option("With --shuffle-caption: the leading tags kept in place, e.g. 1 keeps the trigger word first.", 0)
    flip: bool = option("Also train on horizontally flipped images.", False)
    buckets: bool | None = option("Aspect-ratio buckets (kohya's --enable_bucket): each image keeps its shape, resized to the nearest "
                                  "bucket of about the model's area, batches drawn within one bucket. Default: on for real models, off "
                                  "for the tiny model (its toy images are square).", None)
    cache_latents_to_disk: bool = option("Keep each image's latents in DATA/.sdtune-cache and reuse them in later runs (kohya's "
                                         "--cache_latents_to_disk); a changed image, bucket or model is encoded again.", False)
    mixed_precision: str | None = option("'no', 'fp16' or 'bf16' (fp16 needs a GPU). Default: the model's own precision on a GPU "
                                         "(fp16 for a hub model), 'no' on the CPU.", None)
    gradient_checkpointing: bool = option("Recompute activations in the backward pass: less memory, ~30% slower.", False)
    offload_frozen: bool = option("Move the frozen VAE and text encoders to the CPU while the UNet trains (their outputs are cached "
                                  "first; kohya's cache_text_encoder_outputs): SDXL's text encoders are 1.6 GB of GPU memory.", False)
    torch_compile: bool = option("Compile the UNet's training step with torch.compile (inductor): faster steps after a one-off "
                                 "compile of minutes, so it pays on long runs (kohya's --torch_compile). On a CPU it needs a C++ "
                                 "compiler.", False)
    optimizer: str = option("'adamw', or 'adamw8bit' (bitsandbytes, CUDA only).", "adamw")
    validation_prompt: str | None = option("Prompt sampled every --validation-every steps into OUT/validation/.", None)
    validation_every: int = option("Steps between validation images (0 = none).", 0)
    checkpoint_every: int = option("Steps between checkpoints in OUT/checkpoints/ (0 = none); the final state is kept too, so that "
                                   "--resume --steps MORE continues a finished run.", 0)
    resume: bool = option("Continue from the latest checkpoint in OUT/checkpoints/ (only forward: more steps than it holds).", False)
    seed: int = option("Seed for initialisation, noise and batches.", 0)
    instance_prompt: str | None = option("Caption for images that have no caption file.", None)
    prior_loss_weight: float | None = option(f"Prior preservation (DreamBooth): weight lambda of the class-image loss; 0 = off. {_AUTO}", None)
    class_prompt: str | None = option("Prior preservation: the class prompt, e.g. 'a toy' for 'a sks toy'.", None)
    num_class_images: int | None = option(f"Prior preservation: class images generated by the frozen model (cached). {_AUTO}", None)
    class_data: str | None = option("Prior preservation: folder of class images (your own, or the cache to use). "
                                    "Default: ~/.cache/sdtune/class-images/<model and prompt>.", None)
    overwrite: bool = option("Replace sdtune's earlier results in the output folder (never files sdtune did not write).", False)
    report_to: str | None = option("Also log the loss, learning rate and validation images to 'tensorboard' (OUT/logs) or 'wandb'.", None)

    @property
    def method(self) -> str:
        """The method's name in `sdtune.defaults`."""
        return "full" if self.adapter == "full" else "lora"

    def validate(self, folders: bool = True) -> None:
        """Check every option the user set before any work starts; each problem names the option and the fix.
        Options left unset (None) are checked again once the defaults fill them in. `folders`: the output and input
        folders too (`check_folders`)."""
        if self.adapter is not None and self.adapter not in ADAPTER_KINDS + OTHER_KINDS:
            raise ValueError(f"Unknown --adapter {self.adapter!r}: choose one of {', '.join(ADAPTER_KINDS)} or full.")
        for name in ("rank", "steps", "batch_size", "gradient_accumulation", "num_class_images"):
            check_number(name, getattr(self, name), minimum=1, maximum=MAX_STEPS if name == "steps" else None, integer=True)
        for name in ("lr", "text_encoder_lr", "alpha"):
            check_number(name, getattr(self, name), above=0)
        for name in ("warmup_steps", "max_grad_norm", "min_snr_gamma", "noise_offset", "validation_every", "checkpoint_every",
                     "min_timestep", "prior_loss_weight"):
            check_number(name, getattr(self, name), minimum=0)
        check_number("caption_dropout", self.caption_dropout, minimum=0, below=1)
        if self.targets is not None and self.targets not in TARGET_PRESETS:
            raise ValueError(f"Unknown --targets {self.targets!r}: choose one of {', '.join(TARGET_PRESETS)}.")
        if self.lokr_factor != -1 and (self.adapter != "lokr" or self.lokr_factor <= 0):
            raise ValueError(f"--lokr-factor is -1 or a positive integer, and only for --adapter lokr; got {self.lokr_factor} "
                             f"with --adapter {self.adapter}.")
        if self.adapter == "locon" and self.targets not in (None, "attn-mlp-conv"):
            raise ValueError("LoCon is LoRA on convolutions too: use --targets attn-mlp-conv, or --adapter lora.")
        if self.adapter in OTHER_KINDS and self.blocks:
            raise ValueError(f"--blocks restricts an adapter to some UNet blocks; {self.adapter} does not use one.")
        if self.adapter in ("textual-inversion", "hypernetwork") and self.train_text_encoder:
            raise ValueError(f"--train-text-encoder trains the text encoder too; {self.adapter} keeps it frozen.")
        if self.warmup_steps is not None and self.steps is not None and self.warmup_steps >= self.steps:
            raise ValueError(f"--warmup-steps {self.warmup_steps} is not shorter than the run (--steps {self.steps}): the learning rate "
                             "would never reach --lr. Use fewer warmup steps (a tenth of the run is usual).")
        max_t = 1000 if self.max_timestep is None else self.max_timestep
        if not (self.min_timestep or 0) < max_t <= 1000:
            raise ValueError(f"Need --min-timestep < --max-timestep <= 1000 (SD's T), got {self.min_timestep} and {self.max_timestep}.")
        if self.lr_scheduler is not None and self.lr_scheduler not in SCHEDULES:
            raise ValueError(f"Unknown --lr-scheduler {self.lr_scheduler!r}: choose one of {', '.join(SCHEDULES)}.")
        if self.prior_loss_weight and not self.class_prompt:
            raise ValueError("Prior preservation (--prior-loss-weight > 0) needs --class-prompt, e.g. 'a toy' for 'a sks toy'.")
        if self.validation_every and not self.validation_prompt:
            raise ValueError("--validation-every needs --validation-prompt: the prompt to sample.")
        if self.mixed_precision not in (None, "no", "fp16", "bf16"):
            raise ValueError(f"--mixed-precision must be no, fp16 or bf16, got {self.mixed_precision!r}.")
        if self.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ValueError("--mixed-precision fp16 needs a CUDA GPU (it scales the loss for the GPU's half-precision units); "
                             "on the CPU use 'no' or 'bf16'.")
        check_number("keep_tokens", self.keep_tokens, minimum=0, integer=True)
        if self.keep_tokens and not self.shuffle_caption:
            raise ValueError("--keep-tokens keeps tags in place while --shuffle-caption shuffles the rest: add --shuffle-caption.")
        if not self.caption_extension or not self.caption_extension.lstrip("."):
            raise ValueError("--caption-extension names the captions' file extension, e.g. .txt or .caption.")
        if self.report_to not in (None, "tensorboard", "wandb"):
            raise ValueError(f"--report-to must be tensorboard or wandb, got {self.report_to!r}.")
        if self.report_to and importlib.util.find_spec(self.report_to) is None:
            raise ValueError(f"--report-to {self.report_to} needs the {self.report_to} package: pip install {self.report_to}.")
        if self.optimizer not in ("adamw", "adamw8bit"):
            raise ValueError(f"--optimizer must be adamw or adamw8bit, got {self.optimizer!r}.")
        if self.optimizer == "adamw8bit" and not _bitsandbytes_ready():
            raise ValueError("--optimizer adamw8bit needs a CUDA GPU and `pip install bitsandbytes`; use adamw.")
        if folders:
            self.check_folders()

    def check_folders(self) -> None:
        """The output folder can be written and holds nothing of the user's that the run would replace; --resume only goes
        forward; class images are not the training images."""
        if not self.out:
            raise ValueError("--out is required: the folder the results are written to.")
        inputs = {"--data": self.data, "--class-data": self.class_data if self.prior_loss_weight != 0 else None}
        if self.class_data and self.data and Path(self.class_data).resolve() == Path(self.data).resolve() and self.prior_loss_weight != 0:
            raise ValueError(f"--class-data {self.class_data} is the training folder: prior preservation would train on your subject "
                             "twice and preserve nothing. Point --class-data at other images of the class, or leave it out to generate them.")
        if self.resume:
            check_output_folder(self.out, self.overwrite, inputs=inputs, resume=True)
            check_resume(self.out, self.steps)
        else:
            check_output_folder(self.out, self.overwrite, inputs=inputs)

    @property
    def resolved_alpha(self) -> float:
        return float(self.alpha or self.rank)

    def block_list(self, unet) -> list[str] | None:
        """--blocks as a list, each checked to name a block of this UNet."""
        return check_blocks(unet, self.blocks)

    def batch_loss(self, run: Run) -> torch.Tensor:
        """The loss of one batch: denoising (`diffusion_loss`); LCM distillation brings its own."""
        return diffusion_loss(run)

    def check_examples(self, examples: list) -> None:
        """What the method needs of the training folder's captions (nothing, for most methods)."""

    def with_defaults(self, pipe, verbose: bool = True) -> TrainConfig:
        """A copy with every unset option filled from `sdtune.defaults` for this model family and method, printed."""
        family = model_family(pipe)
        adapter = self.adapter or "lora"
        table = {"adapter": Default(adapter, "sdtune's method: LoRA unless --adapter says otherwise")} | recommended(family, self.method, adapter)
        table = {name: UNSET_MEANS_OFF[name] for name in UNSET_MEANS_OFF} | table
        if adapter in DEFAULT_TARGETS:
            table = {"targets": Default(DEFAULT_TARGETS[adapter], "the adapter kind's usual layers (sdtune.methods.DEFAULT_TARGETS)")} | table
        chosen = {name: d for name, d in table.items() if hasattr(self, name) and getattr(self, name) is None}
        filled = replace(self, **{name: d.value for name, d in chosen.items()})
        # shown: what the run uses; options the defaults leave off (0, constant, no class images) are not news
        shown = {n: d for n, d in chosen.items() if d.value not in (0, "constant") and (n != "num_class_images" or filled.prior_loss_weight)}
        if shown and verbose:
            print(f"sdtune: defaults for the {family} model, {self.method}: "
                  + ", ".join(f"{name.replace('_', '-')} {d.value}" for name, d in shown.items()))
            for source in sorted({d.source for d in shown.values()}):
                print(f"  from {source}: " + ", ".join(n.replace('_', '-') for n, d in shown.items() if d.source == source))
        unset = [f.name for f in fields(filled) if f.name in AUTO_FIELDS and getattr(filled, f.name) is None
                 and not (f.name in ("rank", "targets") and filled.adapter in OTHER_KINDS)]  # only adapters have a rank and layers
        if unset:
            raise RuntimeError(f"sdtune.defaults gives no value for {', '.join(unset)} ({family}, {self.method}): a gap in the table.")
        return filled


_OFF = "off unless asked (no table entry sets it)"
UNSET_MEANS_OFF = {"lr_scheduler": Default("constant", _OFF), "warmup_steps": Default(0, _OFF), "max_grad_norm": Default(0.0, _OFF),
                   "min_timestep": Default(0, _OFF), "prior_loss_weight": Default(0.0, _OFF), "num_class_images": Default(50, _OFF)}
# options whose None means "the defaults decide" (alpha, text_encoder_lr and max_timestep: None has its own meaning)
AUTO_FIELDS = ("adapter", "rank", "targets", "steps", "batch_size", "lr", "lr_scheduler", "warmup_steps", "max_grad_norm",
               "min_timestep", "prior_loss_weight", "num_class_images")


@dataclass
class DreamBoothConfig(TrainConfig):
    """DreamBooth: an instance prompt with a rare identifier, prior preservation on, the whole UNet trained
    (or `adapter="lora"`: DreamBooth-LoRA). See `sdtune.methods.dreambooth`."""

    adapter: str | None = option(f"full (DreamBooth) or an adapter kind ({', '.join(ADAPTER_KINDS)}; lora: DreamBooth-LoRA).", "full")
    prior_loss_weight: float | None = option("Weight lambda of the class-image loss (prior preservation; the paper's 1); 0 = off.", 1.0)

    @property
    def method(self) -> str:
        return "dreambooth"

    def validate(self, folders: bool = True) -> None:
        if not self.instance_prompt:
            raise ValueError("DreamBooth needs --instance-prompt with a rare identifier and the class, e.g. 'a sks toy'.")
        super().validate(folders)


@dataclass
class TextualInversionConfig(TrainConfig):
    """Textual Inversion: only the embedding of a new token trains. See `sdtune.methods.textual_inversion`."""

    adapter: str | None = option("textual-inversion (fixed for this config).", "textual-inversion")
    token: str = option("The placeholder token to learn, a new string such as '<my-toy>'; every caption must contain it.", "")
    init_word: str = option("A one-token word the embedding starts from: a coarse name of the concept ('star', 'toy').", "")
    vectors: int = option("Embedding vectors the token stands for (more: more detail, usually less editability).", 1)

    @property
    def method(self) -> str:
        return "textual-inversion"

    def check_examples(self, examples: list) -> None:
        missing = [e.image.name for e in examples if self.token not in e.caption]
        if missing:
            raise ValueError(f"Captions of {', '.join(missing[:5])} in {self.data} do not contain the token {self.token!r}: "
                             f"Textual Inversion learns what the token means; write it into each caption, e.g. 'a {self.token}'.")

    def validate(self, folders: bool = True) -> None:
        if self.adapter != "textual-inversion":
            raise ValueError("TextualInversionConfig trains an embedding: leave adapter as 'textual-inversion'.")
        if not self.token or not self.init_word:
            raise ValueError("Textual Inversion needs --token (the new word, e.g. '<my-toy>') and --init-word (e.g. 'toy').")
        check_number("vectors", self.vectors, minimum=1, integer=True)
        super().validate(folders)


@dataclass
class HypernetworkConfig(TrainConfig):
    """A WebUI-style hypernetwork: residual MLPs on the cross-attention's K and V inputs. See `sdtune.methods.hypernetwork`."""

    adapter: str | None = option("hypernetwork (fixed for this config).", "hypernetwork")
    layer_structure: str = option("MLP widths as multiples of the context width, first and last 1 (the WebUI's default 1,2,1).", "1,2,1")
    activation: str = option(f"Activation between the MLP's layers: {', '.join(hypernet.ACTIVATIONS)}.", "relu")

    @property
    def method(self) -> str:
        return "hypernetwork"

    def validate(self, folders: bool = True) -> None:
        if self.adapter != "hypernetwork":
            raise ValueError("HypernetworkConfig trains a hypernetwork: leave adapter as 'hypernetwork'.")
        hypernet.parse_structure(self.layer_structure)
        if self.activation not in hypernet.ACTIVATIONS:
            raise ValueError(f"Unknown --activation {self.activation!r}: choose one of {', '.join(hypernet.ACTIVATIONS)}.")
        super().validate(folders)


@dataclass
class LCMConfig(TrainConfig):
    """LCM-LoRA: a LoRA distilled for few-step sampling (consistency distillation). See `sdtune.methods.lcm`."""

    rank: int = option("LoRA rank (LCM-LoRA on SD uses 64).", 16)
    targets: str | None = option("Adapted layers (LCM-LoRA adapts attention, MLPs and convolutions).", "attn-mlp-conv")
    lr: float | None = option("Learning rate (AdamW).", 1e-4)
    num_ddim_timesteps: int = option("Teacher's DDIM grid: N points, one solver step skips T / N timesteps.", 50)
    w_min: float = option("Smallest guidance w distilled in (guidance scale 1 + w).", 2.0)
    w_max: float = option("Largest guidance w distilled in.", 5.0)
    huber_c: float = option("Pseudo-Huber constant c of the loss sqrt(d^2 + c^2) - c.", 1e-3)

    @property
    def method(self) -> str:
        return "lcm"

    def batch_loss(self, run: Run) -> torch.Tensor:
        return lcm_batch_loss(run, self)

    def validate(self, folders: bool = True) -> None:
        if self.adapter is not None and (self.adapter not in ADAPTER_KINDS or self.adapter in ("loha", "lokr")):
            raise ValueError("LCM distillation trains a LoRA-family adapter: use --adapter lora, locon or dora.")
        if self.train_text_encoder or self.prior_loss_weight:
            raise ValueError("LCM distillation trains the UNet's LoRA only: drop --train-text-encoder and prior preservation.")
        if self.min_timestep or self.max_timestep is not None:
            raise ValueError("LCM distillation takes its timesteps from the teacher's DDIM grid: drop --min-timestep and --max-timestep.")
        for name in ("w_min", "w_max", "huber_c"):
            check_number(name, getattr(self, name), minimum=0)
        if not self.w_min <= self.w_max:
            raise ValueError(f"Need 0 <= --w-min <= --w-max, got {self.w_min} and {self.w_max}.")
        if self.num_ddim_timesteps < 2 or 1000 % self.num_ddim_timesteps:
            raise ValueError(f"--num-ddim-timesteps must divide 1000 (e.g. 50), got {self.num_ddim_timesteps}.")
        super().validate(folders)


def check_blocks(unet, blocks: str | None) -> list[str] | None:
    """The --blocks prefixes as a list, each checked to name a block of this UNet."""
    if not blocks:
        return None
    names = [b.strip() for b in blocks.split(",") if b.strip()]
    paths = {path for path, _ in unet.named_modules()}
    unknown = [b for b in names if b not in paths]
    if unknown:
        tops = sorted(p for p in paths if re.fullmatch(r"(?:(?:down|up)_blocks\.\d+|mid_block)\.attentions\.\d+", p))
        raise ValueError(f"--blocks {', '.join(unknown)}: no such UNet block. This UNet's attention blocks: {', '.join(tops)}.")
    return names


def _bitsandbytes_ready() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------
# Conditioning: what the UNet is given besides the noisy latent
# ------------------------------------------------------------------------------------------------

def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def encode_captions(pipe, captions: list[str], device: torch.device | str) -> dict[str, torch.Tensor]:
    """Prompt embeddings (and, for SDXL, the pooled embedding) through the pipeline's own `encode_prompt`."""
    if is_sdxl(pipe):
        embeds, _, pooled, _ = pipe.encode_prompt(captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
        return {"embeds": embeds, "pooled": pooled}
    embeds, _ = pipe.encode_prompt(captions, device, 1, False)
    return {"embeds": embeds}


def unet_inputs(pipe, cond: dict[str, torch.Tensor], resolution: int, time_ids: torch.Tensor | None = None) -> dict:
    """The UNet's keyword arguments: SDXL also takes the pooled text embedding and the size/crop "time ids", one row
    (original height, width, crop top, left, target height, width) per image; default: square images, uncropped."""
    kwargs = {"encoder_hidden_states": cond["embeds"]}
    if "pooled" in cond:
        n = cond["pooled"].shape[0]
        if time_ids is None:
            time_ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution]).repeat(n, 1)
        kwargs["added_cond_kwargs"] = {"text_embeds": cond["pooled"], "time_ids": time_ids.to(cond["pooled"].device, cond["pooled"].dtype)}
    return kwargs


@torch.no_grad()
def encode_images(pipe, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cache the frozen VAE's latent distribution of every image: means and stds, times scaling_factor."""
    dists = [pipe.vae.encode(b.to(pipe.device, pipe.vae.dtype)).latent_dist for b in pixels.split(32)]
    scale = pipe.vae.config.scaling_factor
    return torch.cat([d.mean for d in dists]).float().cpu() * scale, torch.cat([d.std for d in dists]).float().cpu() * scale


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

@dataclass
class Pool:
    """A set of training images (`sdtune.data.latents.LatentSet`: latents by bucket, captions) and the weight of their
    loss term: the instance images (1), and with prior preservation the class images (lambda)."""

    latents: LatentSet
    weight: float


@dataclass
class Run:
    """What a batch loss needs from the running loop."""

    cfg: TrainConfig
    pipe: object
    unet: torch.nn.Module  # the module each step calls: wrapped for data parallelism, compiled
    base_unet: torch.nn.Module  # the UNet itself (LCM's teacher switches its adapters off)
    text_encoders: list[torch.nn.Module]  # they train: the captions are encoded on every batch
    pools: list[Pool]
    cached: dict[str, dict[str, torch.Tensor]]  # each caption's embeddings, when the text encoders neither train nor see shuffled captions
    resolution: int
    noise_scheduler: DDPMScheduler
    gen: torch.Generator  # every random draw of the loop: its state is part of each checkpoint
    accelerator: Accelerator
    dtype: torch.dtype  # the UNet's weights' (half when the model was loaded so; the trained weights are float32)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def condition(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """The text conditioning of `captions`: looked up, or encoded now (a text encoder trains, or captions are shuffled)."""
        if captions and all(c in self.cached for c in captions):
            return {k: torch.cat([self.cached[c][k] for c in captions]) for k in self.cached[captions[0]]}
        return encode_captions(self.pipe, captions, self.device)

    def predict(self, model: torch.nn.Module, z: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor],
                time_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet's output, its inputs in the UNet's own precision (as diffusers' pipelines feed it)."""
        cond = {k: v.to(self.device, self.dtype) for k, v in cond.items()}
        return model(z.to(self.device, self.dtype), t.to(self.device), **unet_inputs(self.pipe, cond, self.resolution, time_ids)).sample

    def captions_of(self, batch: Batch) -> list[str]:
        """The batch's captions, tags shuffled if asked (kohya's --shuffle_caption, --keep_tokens)."""
        if not self.cfg.shuffle_caption:
            return batch.captions
        return [shuffle_caption(c, self.cfg.keep_tokens, self.gen) for c in batch.captions]


def diffusion_loss(run: Run) -> torch.Tensor:
    """One batch from each pool (instance images; class images with prior preservation): sum_k w_k mean loss_k.
    Batches of one latent shape go through the UNet together (with buckets, a class batch may have another shape)."""
    cfg = run.cfg
    drawn = []
    for pool in run.pools:
        batch = pool.latents.draw(cfg.batch_size, run.gen)  # z0 ~ q(z | x), all of one bucket
        drawn.append((batch, run.captions_of(batch), pool.latents.time_ids(batch), pool.weight))
    shapes = sorted({tuple(batch.latents.shape[1:]) for batch, *_ in drawn})
    return sum(_denoising_loss(run, [d for d in drawn if tuple(d[0].latents.shape[1:]) == shape]) for shape in shapes)


def _denoising_loss(run: Run, drawn: list) -> torch.Tensor:
    """sum_i w_i || target_i - UNet(z_t, t, c)_i ||^2 over the images of batches of one shape, in one UNet call."""
    cfg, gen, scheduler = run.cfg, run.gen, run.noise_scheduler
    z0 = torch.cat([batch.latents for batch, *_ in drawn])
    captions = [c for _, captions, *_ in drawn for c in captions]
    time_ids = torch.cat([ids for _, _, ids, _ in drawn])
    weight = torch.cat([torch.full((len(batch.items),), w / cfg.batch_size) for batch, _, _, w in drawn])
    n = len(z0)
    noise = torch.randn(z0.shape, generator=gen)
    if cfg.noise_offset:
        noise = noise + cfg.noise_offset * torch.randn(z0.shape[:2] + (1, 1), generator=gen)
    t = torch.randint(cfg.min_timestep, cfg.max_timestep or scheduler.config.num_train_timesteps, (n,), generator=gen)
    if cfg.caption_dropout:
        dropped = torch.rand(n, generator=gen) < cfg.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, dropped.tolist())]
    z_t = scheduler.add_noise(z0, noise, t)  # sqrt(abar_t) z0 + sqrt(1 - abar_t) eps
    prediction = scheduler.config.prediction_type
    target = noise if prediction == "epsilon" else scheduler.get_velocity(z0, noise, t)
    with run.accelerator.autocast():
        pred = run.predict(run.unet, z_t, t, run.condition(captions), time_ids)
    per_image = (pred.float() - target.to(run.device)).pow(2).mean(dim=(1, 2, 3))
    if cfg.min_snr_gamma:  # w(t) = min(SNR_t, gamma) / SNR_t (for v-prediction the denominator is SNR_t + 1)
        abar = scheduler.alphas_cumprod[t]
        snr = abar / (1 - abar)
        per_image = per_image * (snr.clamp(max=cfg.min_snr_gamma) / (snr if prediction == "epsilon" else snr + 1)).to(run.device)
    return (per_image * weight.to(run.device)).sum()


def _lr_factor(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return {"constant": 1.0, "linear": 1.0 - t, "cosine": 0.5 * (1 + math.cos(math.pi * t))}[cfg.lr_scheduler]

    return f


def _precision(cfg: TrainConfig, pipe) -> str:
    """--mixed-precision, or by default the precision the model is in on a GPU: fp16 (load_pipeline's choice for a hub
    model on CUDA), bf16, or 'no' (float32, and always on the CPU)."""
    if cfg.mixed_precision:
        return cfg.mixed_precision
    if not torch.cuda.is_available():
        return "no"
    dtype = pipe.unet.dtype if pipe is not None else (torch.float32 if cfg.model == "tiny" else torch.float16)
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "no")


def _accelerator(cfg: TrainConfig) -> Accelerator:
    try:
        return Accelerator(mixed_precision=cfg.mixed_precision, log_with=cfg.report_to, project_dir=str(Path(cfg.out) / "logs"))
    except ValueError as error:  # accelerate fixes the precision once per process
        if "already been initialized" not in str(error):
            raise
        raise ValueError(f"--mixed-precision {cfg.mixed_precision}: this Python process already trained with another precision, "
                         "and accelerate fixes it once per process; restart the kernel (or start a new process) to change it.") from error


RUN_FOLDERS = ("checkpoints", "validation", "logs")  # what a run writes into its output folder while it trains


def _open_output(cfg: TrainConfig) -> bool:
    """Make the output folder ready for this run; returns whether it was created. With --overwrite, sdtune's older
    result is parked (`sdtune.io.park_previous_result`) so that an interrupted run never leaves it beside new checkpoints."""
    out = Path(cfg.out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if cfg.overwrite and not cfg.resume:
        park_previous_result(out)
    write_manifest(out, [p.name for p in out.iterdir()] + list(RUN_FOLDERS))
    return created


def train(cfg: TrainConfig, pipe=None) -> Path:
    """Train on a folder; returns the output folder.

    Adapters: the folder holds `<name>.safetensors` in the kohya/A1111/ComfyUI layout and, for LoRA, LoCon
    and DoRA, `pytorch_lora_weights.safetensors` (loads with `pipe.load_lora_weights(out)`); full
    fine-tuning writes a diffusers pipeline folder; Textual Inversion `learned_embeds.safetensors`; a
    hypernetwork `hypernetwork.safetensors`. Plus `training_config.json`, `loss.json`, and `validation/`,
    `checkpoints/`, `logs/` when asked. A pipeline passed in is left as it came.
    """
    # one process checks the folders: in a multi-process launch the others could find the folder the first one made
    cfg.validate(folders=os.environ.get("RANK", "0") == "0")
    examples = scan_folder(cfg.data, cfg.instance_prompt, cfg.caption_extension)
    cfg.check_examples(examples)
    cfg = replace(cfg, mixed_precision=_precision(cfg, pipe))
    accelerator = _accelerator(cfg)
    torch.manual_seed(cfg.seed)
    caller_pipe = pipe is not None
    # on a GPU the model is loaded in the precision it trains in (bf16 weights for bf16, not fp16 ones autocast)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "no": torch.float32}[cfg.mixed_precision] if accelerator.device.type == "cuda" else None
    pipe = pipe or load_pipeline(cfg.model, device=str(accelerator.device), dtype=dtype)
    cfg = cfg.with_defaults(pipe, verbose=accelerator.is_main_process)
    cfg.validate(folders=False)  # the filled-in options too (e.g. warmup shorter than the run), still before any work
    for module in components(pipe).values():
        module.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    check_blocks(pipe.unet, cfg.blocks)
    created = _open_output(cfg) if accelerator.is_main_process else False
    try:
        # prior preservation: class images from the frozen model, before anything trains
        class_examples = class_images(pipe, cfg.class_prompt, cfg.num_class_images, cfg.class_data, cfg.seed) if cfg.prior_loss_weight else []
        return _train(cfg, pipe, caller_pipe, accelerator, examples, class_examples, resolution)
    except BaseException:
        if created and not latest_checkpoint(cfg.out):  # a folder this run made, holding nothing worth keeping
            shutil.rmtree(cfg.out, ignore_errors=True)
        raise


def _train(cfg: TrainConfig, pipe, caller_pipe: bool, accelerator: Accelerator, examples, class_examples, resolution: int) -> Path:
    # what the frozen parts produce, computed once: the latents (by bucket), and the captions' embeddings
    family = model_family(pipe)
    buckets = cfg.buckets if cfg.buckets is not None else family != "tiny"
    cache = default_cache_folder(cfg.data) if cfg.cache_latents_to_disk else None
    # bucket sides: 64 px (the VAE's 8 x the UNet's 2^3) at SD's and SDXL's resolutions; at 64 px that leaves one shape,
    # so small models step by the VAE's factor alone
    step = 64 if resolution >= 512 else pipe.vae_scale_factor
    pools = [Pool(prepare_latents(pipe, examples, resolution, buckets=buckets, step=step, flip=cfg.flip, cache_dir=cache), 1.0)]
    if class_examples:
        pools.append(Pool(prepare_latents(pipe, class_examples, resolution), cfg.prior_loss_weight))
    method = trainable_for(cfg)
    trained_pipe = method.attach(pipe, copy_weights=caller_pipe)
    modes = {m: m.training for m in components(pipe).values()}
    try:
        if cfg.gradient_checkpointing:
            method.unet.enable_gradient_checkpointing()
            for te in method.text_encoders:
                te.gradient_checkpointing_enable()
        cached = {}
        if not method.text_encoders and not cfg.shuffle_caption:
            prompts = sorted({c for pool in pools for c in pool.latents.captions} | {""})  # "": caption dropout, LCM's uncond
            with torch.no_grad():
                embeddings = encode_captions(pipe, prompts, accelerator.device)
            cached = {c: {k: v[i : i + 1] for k, v in embeddings.items()} for i, c in enumerate(prompts)}
        frozen = [pipe.vae] + ([m for n, m in components(pipe).items() if n != "unet"] if cached else [])
        with on_device(frozen, "cpu") if cfg.offload_frozen else contextlib.nullcontext():
            return _run(cfg, accelerator, trained_pipe, method, pools, cached, resolution)
    finally:
        for module, was_training in modes.items():
            module.train(was_training)
        method.detach(pipe)  # leave the caller's pipeline as it came, also after an error
        if cfg.gradient_checkpointing:
            method.unet.disable_gradient_checkpointing()
            for te in method.text_encoders:
                te.gradient_checkpointing_disable()


def _run(cfg: TrainConfig, accelerator: Accelerator, pipe, method: Trainable, pools: list[Pool],
         cached: dict[str, dict[str, torch.Tensor]], resolution: int) -> Path:
    out = Path(cfg.out)
    unet, text_encoders = method.unet, method.text_encoders
    named = {f"unet.{n}": p for n, p in unet.named_parameters() if p.requires_grad}
    for i, te in enumerate(text_encoders):
        named.update({f"text_encoder_{i}.{n}": p for n, p in te.named_parameters() if p.requires_grad})
    for p in named.values():  # train in fp32 even if the base model is in half precision
        p.data = p.data.float()
    dtype = unet.conv_in.weight.dtype  # what the UNet computes in: the model's precision, or float32 if all of it trains
    groups = [{"params": [p for n, p in named.items() if n.startswith("unet.")], "lr": cfg.lr},
              {"params": [p for n, p in named.items() if not n.startswith("unet.")], "lr": cfg.text_encoder_lr or cfg.lr}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(groups, weight_decay=1e-2)
    else:
        # fused: one kernel updates every tensor instead of a loop of small ops per tensor (tiny model, LoRA: 5.2 -> 1.8 ms of a 92 ms step)
        optimizer = torch.optim.AdamW(groups, weight_decay=1e-2, fused=accelerator.device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg))
    # through accelerate, so that with fp16 the scaled gradients are unscaled before the step, a step whose
    # gradients overflowed is skipped and the loss scale adapts (GradScaler)
    optimizer = accelerator.prepare_optimizer(optimizer)

    # each process draws its own batches; the generator's state is part of every checkpoint
    gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 * accelerator.process_index)
    start_step, losses = 0, []
    if cfg.resume:
        start_step, losses = load_checkpoint(out, cfg, named, optimizer, scheduler, gen)
    # Only the UNet is wrapped for data parallelism (if any of it trains); the text encoders run inside
    # pipe.encode_prompt, so their trainable weights' gradients are averaged across processes by hand.
    unet_ddp = accelerator.prepare(unet) if any(n.startswith("unet.") for n in named) else unet
    try:
        return _loop(cfg, accelerator, pipe, method, named, optimizer, scheduler, gen, start_step, losses, unet_ddp, pools, cached,
                     resolution, dtype)
    finally:  # prepare() wraps the UNet's forward in autocast (mixed precision): the caller's UNet gets its own back
        accelerator.unwrap_model(unet_ddp, keep_fp32_wrapper=False)


def _loop(cfg: TrainConfig, accelerator: Accelerator, pipe, method: Trainable, named: dict, optimizer, scheduler, gen: torch.Generator,
          start_step: int, losses: list[float], unet_ddp, pools: list[Pool], cached: dict, resolution: int, dtype: torch.dtype) -> Path:
    out, unet, text_encoders = Path(cfg.out), method.unet, method.text_encoders
    # the module each step calls: compiled once, on its first call, for this run's batch shape
    run = Run(cfg, pipe, torch.compile(unet_ddp) if cfg.torch_compile else unet_ddp, unet, text_encoders, pools, cached,
              resolution, DDPMScheduler.from_config(pipe.scheduler.config), gen, accelerator, dtype)
    if cfg.report_to:
        accelerator.init_trackers("sdtune", config={k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in asdict(cfg).items()})
    te_params = [p for n, p in named.items() if not n.startswith("unet.")]

    for m in (unet_ddp, *text_encoders):
        m.train()
    step_seconds, tick = [], time.perf_counter()  # wall time of each step: shows a compile's first step, checkpoints
    # at most one display update a second: a notebook receives each update as a message
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc=cfg.adapter, mininterval=1.0,
               disable=not accelerator.is_main_process)
    step = start_step
    try:
        for step in bar:
            total = 0.0
            for micro in range(cfg.gradient_accumulation):
                sync = micro == cfg.gradient_accumulation - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(unet_ddp):
                    loss = cfg.batch_loss(run) / cfg.gradient_accumulation
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"The loss became {loss.item()} at step {step}: training stopped. {_kept(out)} "
                                                 f"Lower --lr (now {cfg.lr}) or use --mixed-precision bf16/no instead of fp16.")
                    accelerator.backward(loss)
                total += loss.item()
            if accelerator.num_processes > 1:
                for p in te_params:
                    p.grad = accelerator.reduce(p.grad, reduction="mean")
                # log the loss of the whole global batch, as a single process would
                total = float(accelerator.reduce(torch.tensor(total, device=run.device), reduction="mean"))
            if cfg.max_grad_norm:  # g <- g min(1, max / ||g||), on the true (unscaled, with fp16) gradients; one kernel per step
                accelerator.unscale_gradients()
                torch.nn.utils.clip_grad_norm_(list(named.values()), cfg.max_grad_norm, foreach=True)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            method.after_step()
            losses.append(total)
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", refresh=False)
            done = step + 1
            if cfg.report_to:
                accelerator.log({"loss": total, "lr": scheduler.get_last_lr()[0]}, step=done)
            if accelerator.is_main_process and cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                save_checkpoint(out, done, named, optimizer, scheduler, gen, losses, cfg)
            if accelerator.is_main_process and cfg.validation_every and (done % cfg.validation_every == 0 or done == cfg.steps):
                image = _validation_image(pipe, cfg, out / "validation" / f"step-{done:07d}.png", (unet_ddp, *text_encoders))
                if cfg.report_to:
                    _log_image(accelerator, image, cfg.validation_prompt, done)
            step_seconds.append(time.perf_counter() - tick)
            tick = time.perf_counter()
    except KeyboardInterrupt:
        bar.close()
        raise TrainingInterrupted(f"Interrupted at step {step} of {cfg.steps}. {_kept(out)}") from None

    accelerator.wait_for_everyone()
    if cfg.report_to:
        accelerator.end_training()  # the trackers' files are complete before the results are swapped in
    if accelerator.is_main_process:
        _write_results(cfg, pipe, method, out, losses, step_seconds, start_step, accelerator.num_processes, resolution)
    accelerator.wait_for_everyone()
    return out


def _kept(out: Path) -> str:
    """What an interrupted or failed run leaves behind, and how to go on: one or two sentences."""
    last = latest_checkpoint(out)
    text = (f"The last checkpoint ({last.name}) is intact: run the same command with --resume to continue." if last else
            "No checkpoint was written (--checkpoint-every N saves one every N steps), so nothing of this run was kept.")
    if (out / ".sdtune-previous").exists():
        text += f" The earlier result is kept in {out / '.sdtune-previous'} until a run finishes."
    return text


@contextlib.contextmanager
def on_device(modules: list[torch.nn.Module], device: torch.device | str) -> Iterator[None]:
    """Move `modules` to `device` inside the block, each back where it was after."""
    places = [(m, m.device) for m in modules]
    for m, _ in places:
        m.to(device)
    try:
        yield
    finally:
        for m, place in places:
            m.to(place)


def _log_image(accelerator: Accelerator, image, prompt: str, step: int) -> None:
    """A validation image in the tracker: TensorBoard's image tab, or a wandb.Image."""
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", np.asarray(image), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Image(image, caption=prompt)]}, step=step)


@torch.no_grad()
def _validation_image(pipe, cfg: TrainConfig, path: Path, trained: tuple):
    from .sampling import quiet_progress, sample

    for m in trained:
        m.eval()
    frozen = [m for m in (pipe.vae, *components(pipe).values()) if m.device != pipe.unet.device]  # offloaded: back for the image
    with quiet_progress(pipe), on_device(frozen, pipe.unet.device):
        image = sample(pipe, cfg.validation_prompt, seed=cfg.seed)[0]
    with staged_file(path) as tmp:
        image.save(tmp, format="PNG")
    for m in trained:
        m.train()
    return image


def _write_results(cfg: TrainConfig, pipe, method: Trainable, out: Path, losses: list[float], step_seconds: list[float],
                   start_step: int, processes: int, resolution: int) -> None:
    """Stage every result file, carry over checkpoints and validation images, and swap the folder in at once."""
    with staged_folder(out, keep=RUN_FOLDERS) as tmp:
        method.save(pipe, tmp, out.name, resolution)
        alpha = {"alpha": cfg.resolved_alpha} if cfg.rank else {}  # an adapter's scale is alpha / rank
        (tmp / "training_config.json").write_text(json.dumps(asdict(cfg) | alpha, indent=1))
        (tmp / "loss.json").write_text(json.dumps({"loss": losses, "seconds_this_session": sum(step_seconds), "step_seconds": step_seconds,
                                                   "resumed_at_step": start_step, "processes": processes}))
