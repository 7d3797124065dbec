"""The training loop: a folder of captioned images in, an adapter (or a fine-tuned UNet) out.

One step of diffusion fine-tuning, the same for SD 1.5, SDXL and the tiny model:

    z0  = VAE.encode(x) * scaling_factor                    (cached once: the VAE is frozen)
    c   = TextEncoder(tokens(caption))                       (cached once unless the text encoder trains)
    t ~ U{t_min..t_max-1} (all T by default),  eps ~ N(0, I)   (+ noise_offset * N(0, 1) per image and channel)
    z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps             (noise_scheduler.add_noise)
    L   = w(t) || target - UNet_theta(z_t, t, c) ||^2         target = eps (or v for v-prediction models)
    w(t) = min(SNR_t, gamma) / SNR_t                         (min-SNR-gamma; 1 when off)

theta is the adapter's weights (LoRA, LoCon, DoRA, LoHa, LoKr; see `sdtune.methods`), every UNet weight
for full fine-tuning, the new token's embedding rows for Textual Inversion, or a hypernetwork's MLPs. With
prior preservation (DreamBooth) each step adds a batch of class images: L = L_instance + lambda L_class. Runs through `accelerate`: `accelerate launch -m sdtune train ...` is data-parallel.
Checkpoints hold everything the loop's future depends on (weights, optimizer, schedule, random state), so
a resumed run ends with the same weights as one that was never interrupted (on one process; with several,
each process's batches are drawn from its own generator and only the first one's state is saved).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .config import option
from .data.folder import load_examples, scan_folder
from .formats.adapters import add_adapter, components, remove_adapter, save_adapter
from .formats.kohya import kohya_metadata
from .io import check_output_folder, staged_file, staged_folder
from .methods import ADAPTER_KINDS, DEFAULT_TARGETS, TARGET_PRESETS, adapter_config
from .methods import hypernetwork as hypernet
from .methods.dreambooth import class_images
from .methods.lcm import adapters_off, consistency_loss, ddim_timesteps
from .methods.textual_inversion import PlaceholderEmbedding, save_embedding
from .models.loading import load_pipeline

ADAPTER = "sdtune"  # the name the adapter being trained has inside the pipeline
SCHEDULES = ("constant", "linear", "cosine")
OTHER_KINDS = ("full", "textual-inversion", "hypernetwork")  # trained without a peft adapter
DEFAULT_LR = {"full": 1e-4, "textual-inversion": 5e-3, "hypernetwork": 1e-4}  # others (peft adapters): 1e-3
RESUMABLE_CHANGES = {"out", "steps", "resume", "overwrite", "checkpoint_every", "validation_every", "validation_prompt", "torch_compile"}


@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI's options are these fields."""

    data: str = option("Folder of images with same-name .txt captions (or metadata.jsonl).")
    out: str = option("Output folder for the adapter files, config, loss log, validation images and checkpoints.")
    model: str = option("'tiny', a diffusers pipeline folder, or a hub id (SD 1.x/2.x, SDXL).", "tiny")
    adapter: str = option(f"What to train: {', '.join(ADAPTER_KINDS)}, or full (every UNet weight).", "lora")
    rank: int = option("Adapter rank r (LoRA: the inner dimension of B A).", 4)
    alpha: float | None = option("Adapter alpha; the update is scaled by alpha / rank. Default: alpha = rank.", None)
    targets: str | None = option(f"Adapted layers: {', '.join(TARGET_PRESETS)}. Default: per adapter ({DEFAULT_TARGETS}).", None)
    lokr_factor: int = option("LoKr only (LyCORIS's factor): W1's side when it divides the layer's width, e.g. 4 splits 64 into "
                              "4 x 16; -1 = the divisors nearest the square root (64 -> 8 x 8).", -1)
    blocks: str | None = option("Only these UNet blocks, comma-separated prefixes (B-LoRA on SDXL: "
                                "up_blocks.0.attentions.0,up_blocks.0.attentions.1). Default: the whole UNet.", None)
    train_text_encoder: bool = option("Also train the text encoder(s): an adapter on them, or with --adapter full all their weights.", False)
    steps: int = option("Optimizer steps.", 300)
    batch_size: int = option("Images per micro-batch (per process).", 8)
    gradient_accumulation: int = option("Micro-batches per optimizer step: effective batch = batch size x this x processes.", 1)
    lr: float | None = option("Learning rate (AdamW). Default: 1e-3 for adapters, 1e-4 for full fine-tuning.", None)
    text_encoder_lr: float | None = option("Learning rate of the text encoder's adapter. Default: --lr.", None)
    lr_scheduler: str = option(f"Learning-rate schedule after warmup: {', '.join(SCHEDULES)}.", "constant")
    warmup_steps: int = option("Linear learning-rate warmup steps.", 0)
    max_grad_norm: float = option("Clip the gradients' total norm to this before each step (kohya and the diffusers examples use 1); "
                                  "0 = no clipping.", 0.0)
    min_snr_gamma: float = option("Min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5; 0 = off.", 0.0)
    noise_offset: float = option("Noise offset (e.g. 0.05): lets the model learn very dark or bright images; 0 = off.", 0.0)
    min_timestep: int = option("Train only on timesteps t >= this (kohya's --min_timestep).", 0)
    max_timestep: int | None = option("Train only on timesteps t < this (kohya's --max_timestep); default: all of the scheduler's "
                                      "(1000). Low-noise steps (e.g. < 600) shape texture and style, high-noise steps the layout.", None)
    caption_dropout: float = option("Fraction of steps' captions replaced by the empty prompt (keeps guidance working).", 0.0)
    flip: bool = option("Also train on horizontally flipped images.", False)
    mixed_precision: str = option("'no', 'fp16' or 'bf16' (fp16/bf16 need a GPU).", "no")
    gradient_checkpointing: bool = option("Recompute activations in the backward pass: less memory, ~30% slower.", False)
    torch_compile: bool = option("Compile the UNet's training step with torch.compile (inductor): faster steps after a one-off "
                                 "compile of minutes, so it pays on long runs (kohya's --torch_compile). On a CPU it needs a C++ "
                                 "compiler.", False)
    optimizer: str = option("'adamw', or 'adamw8bit' (bitsandbytes, CUDA only).", "adamw")
    validation_prompt: str | None = option("Prompt sampled every --validation-every steps into OUT/validation/.", None)
    validation_every: int = option("Steps between validation images (0 = none).", 0)
    checkpoint_every: int = option("Steps between checkpoints in OUT/checkpoints/ (0 = none).", 0)
    resume: bool = option("Continue from the latest checkpoint in OUT/checkpoints/.", False)
    seed: int = option("Seed for initialisation, noise and batches.", 0)
    instance_prompt: str | None = option("Caption for images that have no caption file.", None)
    prior_loss_weight: float = option("Prior preservation (DreamBooth): weight lambda of the class-image loss; 0 = off.", 0.0)
    class_prompt: str | None = option("Prior preservation: the class prompt, e.g. 'a toy' for 'a sks toy'.", None)
    num_class_images: int = option("Prior preservation: class images generated by the frozen model (cached).", 50)
    class_data: str | None = option("Prior preservation: folder of class images (your own, or the cache to use). "
                                    "Default: ~/.cache/sdtune/class-images/<model and prompt>.", None)
    overwrite: bool = option("Replace the output folder's contents if it already holds results.", False)

    def validate(self) -> None:
        """Check every option before any work starts; each problem names the option and the fix."""
        if self.adapter not in ADAPTER_KINDS + OTHER_KINDS:
            raise ValueError(f"Unknown --adapter {self.adapter!r}: choose one of {', '.join(ADAPTER_KINDS)} or full.")
        if self.rank <= 0:
            raise ValueError(f"--rank must be a positive integer, got {self.rank}.")
        if self.alpha is not None and not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"--alpha must be positive, got {self.alpha}.")
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
        for name in ("steps", "batch_size", "gradient_accumulation", "num_class_images"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}.")
        for name in ("lr", "text_encoder_lr"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"--{name.replace('_', '-')} must be a positive number, got {value}.")
        if self.lr_scheduler not in SCHEDULES:
            raise ValueError(f"Unknown --lr-scheduler {self.lr_scheduler!r}: choose one of {', '.join(SCHEDULES)}.")
        for name in ("warmup_steps", "max_grad_norm", "min_snr_gamma", "noise_offset", "validation_every", "checkpoint_every", "min_timestep"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}.")
        if not self.min_timestep < (1000 if self.max_timestep is None else self.max_timestep) <= 1000:
            raise ValueError(f"Need --min-timestep < --max-timestep <= 1000 (SD's T), got {self.min_timestep} and {self.max_timestep}.")
        if not (self.prior_loss_weight >= 0 and math.isfinite(self.prior_loss_weight)):
            raise ValueError(f"--prior-loss-weight must be >= 0, got {self.prior_loss_weight}.")
        if self.prior_loss_weight and not self.class_prompt:
            raise ValueError("Prior preservation (--prior-loss-weight > 0) needs --class-prompt, e.g. 'a toy' for 'a sks toy'.")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"--caption-dropout must be in [0, 1), got {self.caption_dropout}.")
        if self.validation_every and not self.validation_prompt:
            raise ValueError("--validation-every needs --validation-prompt: the prompt to sample.")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"--mixed-precision must be no, fp16 or bf16, got {self.mixed_precision!r}.")
        if self.mixed_precision != "no" and not torch.cuda.is_available():
            raise ValueError(f"--mixed-precision {self.mixed_precision} needs a CUDA GPU; use 'no' on the CPU.")
        if self.optimizer not in ("adamw", "adamw8bit"):
            raise ValueError(f"--optimizer must be adamw or adamw8bit, got {self.optimizer!r}.")
        if self.optimizer == "adamw8bit" and not _bitsandbytes_ready():
            raise ValueError("--optimizer adamw8bit needs a CUDA GPU and `pip install bitsandbytes`; use adamw.")
        if not self.out:
            raise ValueError("--out is required: the folder the results are written to.")
        if self.resume:
            if latest_checkpoint(self.out) is None:
                raise FileNotFoundError(f"--resume: no checkpoint in {Path(self.out) / 'checkpoints'}; start without --resume.")
        else:
            check_output_folder(self.out, self.overwrite)

    @property
    def resolved_lr(self) -> float:
        return self.lr or DEFAULT_LR.get(self.adapter, 1e-3)

    @property
    def resolved_targets(self) -> str:
        return self.targets or DEFAULT_TARGETS.get(self.adapter, "attn")

    @property
    def resolved_alpha(self) -> float:
        return float(self.alpha or self.rank)


@dataclass
class DreamBoothConfig(TrainConfig):
    """DreamBooth: an instance prompt with a rare identifier, prior preservation on, the whole UNet trained
    (or `adapter="lora"`: DreamBooth-LoRA). See `sdtune.methods.dreambooth`."""

    adapter: str = option(f"full (DreamBooth) or an adapter kind ({', '.join(ADAPTER_KINDS)}; lora: DreamBooth-LoRA).", "full")
    prior_loss_weight: float = option("Weight lambda of the class-image loss (prior preservation); 0 = off.", 1.0)

    def validate(self) -> None:
        if not self.instance_prompt:
            raise ValueError("DreamBooth needs --instance-prompt with a rare identifier and the class, e.g. 'a sks toy'.")
        super().validate()


@dataclass
class TextualInversionConfig(TrainConfig):
    """Textual Inversion: only the embedding of a new token trains. See `sdtune.methods.textual_inversion`."""

    adapter: str = option("textual-inversion (fixed for this config).", "textual-inversion")
    token: str = option("The placeholder token to learn, a new string such as '<my-toy>'; every caption must contain it.", "")
    init_word: str = option("A one-token word the embedding starts from: a coarse name of the concept ('star', 'toy').", "")
    vectors: int = option("Embedding vectors the token stands for (more: more detail, usually less editability).", 1)

    def validate(self) -> None:
        if self.adapter != "textual-inversion":
            raise ValueError("TextualInversionConfig trains an embedding: leave adapter as 'textual-inversion'.")
        if not self.token or not self.init_word:
            raise ValueError("Textual Inversion needs --token (the new word, e.g. '<my-toy>') and --init-word (e.g. 'toy').")
        if self.vectors <= 0:
            raise ValueError(f"--vectors must be a positive integer, got {self.vectors}.")
        super().validate()


@dataclass
class HypernetworkConfig(TrainConfig):
    """A WebUI-style hypernetwork: residual MLPs on the cross-attention's K and V inputs. See `sdtune.methods.hypernetwork`."""

    adapter: str = option("hypernetwork (fixed for this config).", "hypernetwork")
    layer_structure: str = option("MLP widths as multiples of the context width, first and last 1 (the WebUI's default 1,2,1).", "1,2,1")
    activation: str = option(f"Activation between the MLP's layers: {', '.join(hypernet.ACTIVATIONS)}.", "relu")

    def validate(self) -> None:
        if self.adapter != "hypernetwork":
            raise ValueError("HypernetworkConfig trains a hypernetwork: leave adapter as 'hypernetwork'.")
        hypernet.parse_structure(self.layer_structure)
        if self.activation not in hypernet.ACTIVATIONS:
            raise ValueError(f"Unknown --activation {self.activation!r}: choose one of {', '.join(hypernet.ACTIVATIONS)}.")
        super().validate()


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

    def validate(self) -> None:
        if self.adapter not in ADAPTER_KINDS or self.adapter in ("loha", "lokr"):
            raise ValueError("LCM distillation trains a LoRA-family adapter: use --adapter lora, locon or dora.")
        if self.train_text_encoder or self.prior_loss_weight:
            raise ValueError("LCM distillation trains the UNet's LoRA only: drop --train-text-encoder and prior preservation.")
        if self.min_timestep or self.max_timestep is not None:
            raise ValueError("LCM distillation takes its timesteps from the teacher's DDIM grid: drop --min-timestep and --max-timestep.")
        if not 0 <= self.w_min <= self.w_max:
            raise ValueError(f"Need 0 <= --w-min <= --w-max, got {self.w_min} and {self.w_max}.")
        if self.num_ddim_timesteps < 2 or 1000 % self.num_ddim_timesteps:
            raise ValueError(f"--num-ddim-timesteps must divide 1000 (e.g. 50), got {self.num_ddim_timesteps}.")
        super().validate()


def check_blocks(unet, blocks: str | None) -> list[str] | None:
    """The --blocks prefixes as a list, each checked to name a block of this UNet."""
    if not blocks:
        return None
    names = [b.strip() for b in blocks.split(",") if b.strip()]
    paths = {path for path, _ in unet.named_modules()}
    unknown = [b for b in names if b not in paths]
    if unknown:
        tops = sorted(p for p in paths if p.count(".") == 2 and ".attentions." in p)
        raise ValueError(f"--blocks {', '.join(unknown)}: no such UNet block. This UNet's attention blocks: {', '.join(tops)}.")
    return names


@contextlib.contextmanager
def _quiet_diffusers():
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


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


def unet_inputs(pipe, cond: dict[str, torch.Tensor], resolution: int) -> dict:
    """The UNet's keyword arguments: SDXL also takes the pooled text embedding and the size/crop "time ids"."""
    kwargs = {"encoder_hidden_states": cond["embeds"]}
    if "pooled" in cond:
        n = cond["pooled"].shape[0]
        time_ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=cond["pooled"].dtype)
        kwargs["added_cond_kwargs"] = {"text_embeds": cond["pooled"], "time_ids": time_ids.to(cond["pooled"].device).repeat(n, 1)}
    return kwargs


@torch.no_grad()
def encode_images(pipe, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cache the frozen VAE's latent distribution of every image: means and stds, times scaling_factor."""
    dists = [pipe.vae.encode(b.to(pipe.device, pipe.vae.dtype)).latent_dist for b in pixels.split(32)]
    scale = pipe.vae.config.scaling_factor
    return torch.cat([d.mean for d in dists]).float().cpu() * scale, torch.cat([d.std for d in dists]).float().cpu() * scale


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------

def latest_checkpoint(out: str | Path) -> Path | None:
    found = sorted((Path(out) / "checkpoints").glob("step-*"))
    return found[-1] if found else None


def save_checkpoint(out: Path, step: int, named_params: dict[str, torch.nn.Parameter], optimizer, scheduler,
                    gen: torch.Generator, losses: list[float], cfg: TrainConfig, keep: int = 2) -> Path:
    """Write everything the rest of the run depends on, atomically; keep the newest `keep` checkpoints."""
    folder = out / "checkpoints" / f"step-{step:07d}"
    with staged_folder(folder) as tmp:
        save_file({k: v.detach().contiguous() for k, v in named_params.items()}, str(tmp / "trainable.safetensors"))
        scaler = getattr(optimizer, "scaler", None)  # fp16: the loss scale is part of the run's state
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": gen.get_state(),
                    "step": step, "losses": losses, "scaler": scaler.state_dict() if scaler else None}, tmp / "state.pt")
        (tmp / "training_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    for old in sorted((out / "checkpoints").glob("step-*"))[:-keep]:
        shutil.rmtree(old)
    return folder


def load_checkpoint(folder: Path, cfg: TrainConfig, named_params: dict[str, torch.nn.Parameter], optimizer, scheduler,
                    gen: torch.Generator) -> tuple[int, list[float]]:
    """Restore a checkpoint into the run; refuses one made with settings that change the training."""
    saved = json.loads((folder / "training_config.json").read_text())
    changed = [f.name for f in fields(cfg) if f.name not in RESUMABLE_CHANGES and saved.get(f.name, f.default) != getattr(cfg, f.name)]
    if changed:
        raise ValueError(f"--resume: {folder} was made with other settings ({', '.join(changed)}); use the same options.")
    weights = load_file(str(folder / "trainable.safetensors"))
    with torch.no_grad():
        for name, param in named_params.items():
            param.copy_(weights[name])
    state = torch.load(folder / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    if getattr(optimizer, "scaler", None) and state.get("scaler"):
        optimizer.scaler.load_state_dict(state["scaler"])
    scheduler.load_state_dict(state["scheduler"])
    gen.set_state(state["rng"])
    return state["step"], state["losses"]


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

def _lr_factor(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return {"constant": 1.0, "linear": 1.0 - t, "cosine": 0.5 * (1 + math.cos(math.pi * t))}[cfg.lr_scheduler]

    return f


def base_model_version(pipe) -> str:
    if is_sdxl(pipe):
        return "sdxl_base_v1-0"
    return {768: "sd_v1", 1024: "sd_v2"}.get(pipe.unet.config.cross_attention_dim, "sdtune_tiny")


@dataclass
class LatentPool:
    """Cached latents of a set of images, which caption each has, and the weight of their loss term."""

    mean: torch.Tensor
    std: torch.Tensor
    prompt_index: torch.Tensor
    weight: float


def train(cfg: TrainConfig, pipe=None) -> Path:
    """Train on a folder; returns the output folder.

    Adapters: the folder holds `<name>.safetensors` in the kohya/A1111/ComfyUI layout and, for LoRA, LoCon
    and DoRA, `pytorch_lora_weights.safetensors` (loads with `pipe.load_lora_weights(out)`); full
    fine-tuning writes a diffusers pipeline folder; Textual Inversion `learned_embeds.safetensors`; a
    hypernetwork `hypernetwork.safetensors`. Plus `training_config.json`, `loss.json`, and `validation/`,
    `checkpoints/` when asked. A pipeline passed in is left as it came.
    """
    cfg.validate()
    examples = scan_folder(cfg.data, cfg.instance_prompt)
    if isinstance(cfg, TextualInversionConfig):
        missing = [e.image.name for e in examples if cfg.token not in e.caption]
        if missing:
            raise ValueError(f"Captions of {', '.join(missing[:5])} in {cfg.data} do not contain the token {cfg.token!r}: "
                             f"Textual Inversion learns what the token means; write it into each caption, e.g. 'a {cfg.token}'.")
    try:
        accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    except ValueError as error:  # accelerate fixes the precision once per process
        if "already been initialized" not in str(error):
            raise
        raise ValueError(f"--mixed-precision {cfg.mixed_precision}: this Python process already trained with another precision, "
                         "and accelerate fixes it once per process; restart the kernel (or start a new process) to change it.") from error
    out = Path(cfg.out)
    if cfg.overwrite and not cfg.resume and accelerator.is_main_process:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # never resume from an older run's checkpoints
    torch.manual_seed(cfg.seed)
    caller_pipe = pipe is not None
    pipe = pipe or load_pipeline(cfg.model, device=str(accelerator.device))
    for module in components(pipe).values():
        module.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    blocks = check_blocks(pipe.unet, cfg.blocks)
    # prior preservation: class images from the frozen model, before anything trains
    class_examples = class_images(pipe, cfg.class_prompt, cfg.num_class_images, cfg.class_data, cfg.seed) if cfg.prior_loss_weight else []

    # what trains
    # full fine-tuning changes weights in place: a caller's pipeline gets copies of what trains
    full = {n: m for n, m in components(pipe).items() if cfg.adapter == "full" and (n == "unet" or cfg.train_text_encoder)}
    copies = {n: copy.deepcopy(m) if caller_pipe else m for n, m in full.items()}
    with _quiet_diffusers():  # from_pipe warns about an empty list of float32 modules
        trained_pipe = type(pipe).from_pipe(pipe, **copies) if caller_pipe and copies else pipe
    unet = copies.get("unet", pipe.unet)
    text_encoders = [m for n, m in components(trained_pipe).items() if n != "unet"] if cfg.train_text_encoder else []
    trained: PlaceholderEmbedding | hypernet.Hypernetwork | None = None
    if cfg.adapter == "full":
        for module in copies.values():  # the UNet, and with --train-text-encoder every text encoder, all weights
            module.requires_grad_(True)
    elif cfg.adapter == "textual-inversion":
        trained = PlaceholderEmbedding(pipe, cfg.token, cfg.init_word, cfg.vectors)
        trained.weight.requires_grad_(True)
        text_encoders = [pipe.text_encoder]  # runs on every batch: the gradient reaches the new rows through it
    elif cfg.adapter == "hypernetwork":
        trained = hypernet.Hypernetwork([hypernet.cross_attention_width(unet)], hypernet.parse_structure(cfg.layer_structure),
                                        cfg.activation).to(unet.device)
        hypernet.attach(unet, trained)
    else:
        spec = (cfg.adapter, cfg.rank, cfg.resolved_alpha, cfg.resolved_targets)
        add_adapter(unet, adapter_config(*spec, "unet", blocks, cfg.lokr_factor), ADAPTER)
        for te in text_encoders:
            add_adapter(te, adapter_config(*spec, "text_encoder", lokr_factor=cfg.lokr_factor), ADAPTER)
    modes = {m: m.training for m in components(pipe).values()}
    try:
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            for te in text_encoders:
                te.gradient_checkpointing_enable()
        # cache what the frozen parts produce
        captions = [e.caption for e in examples]  # a multi-vector token is written out by pipe.encode_prompt
        pixels = load_examples(examples, resolution)
        if cfg.flip:
            pixels, captions = torch.cat([pixels, pixels.flip(-1)]), captions + captions
        prompts = sorted(set(captions) | {""} | {e.caption for e in class_examples})
        pools = [LatentPool(*encode_images(pipe, pixels), torch.tensor([prompts.index(c) for c in captions]), 1.0)]
        if class_examples:
            pools.append(LatentPool(*encode_images(pipe, load_examples(class_examples, resolution)),
                                    torch.full((len(class_examples),), prompts.index(cfg.class_prompt)), cfg.prior_loss_weight))
        cached = {}
        if not text_encoders:
            with torch.no_grad():
                cached = encode_captions(pipe, prompts, accelerator.device)
        return _run(cfg, accelerator, trained_pipe, unet, text_encoders, pools, prompts, cached, resolution, trained)
    finally:
        for module, was_training in modes.items():
            module.train(was_training)
        if cfg.adapter == "textual-inversion":
            trained.remove()
        elif cfg.adapter == "hypernetwork":
            hypernet.detach(unet)
        elif cfg.adapter != "full":
            remove_adapter(pipe, ADAPTER)  # leave the caller's pipeline as it came, also after an error
        if cfg.gradient_checkpointing:
            unet.disable_gradient_checkpointing()
            for te in text_encoders:
                te.gradient_checkpointing_disable()


def _run(cfg: TrainConfig, accelerator: Accelerator, pipe, unet, text_encoders, pools: list[LatentPool], prompts: list[str],
         cached: dict[str, torch.Tensor], resolution: int, trained) -> Path:
    out = Path(cfg.out)
    named = {f"unet.{n}": p for n, p in unet.named_parameters() if p.requires_grad}
    for i, te in enumerate(text_encoders):
        named.update({f"text_encoder_{i}.{n}": p for n, p in te.named_parameters() if p.requires_grad})
    for p in named.values():  # train in fp32 even if the base model is in half precision
        p.data = p.data.float()
    lr = cfg.resolved_lr
    groups = [{"params": [p for n, p in named.items() if n.startswith("unet.")], "lr": lr},
              {"params": [p for n, p in named.items() if not n.startswith("unet.")], "lr": cfg.text_encoder_lr or lr}]
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
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    alphas_cumprod = noise_scheduler.alphas_cumprod
    prediction = noise_scheduler.config.prediction_type

    # each process draws its own batches; the generator's state is part of every checkpoint
    gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 * accelerator.process_index)
    start_step, losses = 0, []
    if cfg.resume:
        start_step, losses = load_checkpoint(latest_checkpoint(out), cfg, named, optimizer, scheduler, gen)
    # Only the UNet is wrapped for data parallelism (if any of it trains); the text encoders run inside
    # pipe.encode_prompt, so their trainable weights' gradients are averaged across processes by hand.
    unet_ddp = accelerator.prepare(unet) if any(n.startswith("unet.") for n in named) else unet
    # the module each step calls: compiled once, on its first call, for this run's batch shape
    unet_step = torch.compile(unet_ddp) if cfg.torch_compile else unet_ddp
    te_params = [p for n, p in named.items() if not n.startswith("unet.")]
    device = accelerator.device

    if isinstance(cfg, LCMConfig):  # the teacher's DDIM grid, the same every step
        grid = ddim_timesteps(noise_scheduler.config.num_train_timesteps, cfg.num_ddim_timesteps)

    def eps_of(model):
        return lambda z, t, c: model(z.to(device), t.to(device), **unet_inputs(pipe, c, resolution)).sample

    def teacher_eps(z, t, c):
        with adapters_off(unet):
            return eps_of(unet)(z, t, c)

    def lcm_loss() -> torch.Tensor:
        """One batch of consistency distillation (sdtune.methods.lcm) against the UNet without its LoRA."""
        pool = pools[0]
        idx = torch.randint(0, len(pool.mean), (cfg.batch_size,), generator=gen)
        z0 = pool.mean[idx] + pool.std[idx] * torch.randn(pool.mean[idx].shape, generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        index = torch.randint(0, len(grid), (cfg.batch_size,), generator=gen)
        w = cfg.w_min + (cfg.w_max - cfg.w_min) * torch.rand(cfg.batch_size, generator=gen)
        which = pool.prompt_index[idx]
        cond = {k: v[which.to(v.device)] for k, v in cached.items()}
        uncond = {k: v[torch.full_like(which, prompts.index("")).to(v.device)] for k, v in cached.items()}
        with accelerator.autocast():
            return consistency_loss(eps_of(unet_step), teacher_eps, z0.to(device), noise.to(device), cond, uncond,
                                    alphas_cumprod, grid, index, w, cfg.huber_c)

    def loss_on_batch() -> torch.Tensor:
        """One batch from each pool (instance images; class images with prior preservation): sum_k w_k mean loss_k."""
        z0s, whichs, weights = [], [], []
        for pool in pools:
            idx = torch.randint(0, len(pool.mean), (cfg.batch_size,), generator=gen)
            z0s.append(pool.mean[idx] + pool.std[idx] * torch.randn(pool.mean[idx].shape, generator=gen))
            whichs.append(pool.prompt_index[idx])
            weights.append(torch.full((cfg.batch_size,), pool.weight / cfg.batch_size))
        z0, which, weight = torch.cat(z0s), torch.cat(whichs), torch.cat(weights)
        n = len(z0)
        noise = torch.randn(z0.shape, generator=gen)
        if cfg.noise_offset:
            noise = noise + cfg.noise_offset * torch.randn(z0.shape[:2] + (1, 1), generator=gen)
        t = torch.randint(cfg.min_timestep, cfg.max_timestep or noise_scheduler.config.num_train_timesteps, (n,), generator=gen)
        if cfg.caption_dropout:
            which = torch.where(torch.rand(n, generator=gen) < cfg.caption_dropout, prompts.index(""), which)
        z_t = noise_scheduler.add_noise(z0, noise, t)
        target = noise if prediction == "epsilon" else noise_scheduler.get_velocity(z0, noise, t)
        with accelerator.autocast():
            if text_encoders:  # the text encoder trains: encode this batch's captions with gradients
                cond = encode_captions(pipe, [prompts[i] for i in which.tolist()], device)
            else:
                cond = {k: v[which.to(v.device)] for k, v in cached.items()}
            pred = unet_step(z_t.to(device), t.to(device), **unet_inputs(pipe, cond, resolution)).sample
        per_image = (pred.float() - target.to(device)).pow(2).mean(dim=(1, 2, 3))
        if cfg.min_snr_gamma:
            snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
            per_image = per_image * (snr.clamp(max=cfg.min_snr_gamma) / (snr if prediction == "epsilon" else snr + 1)).to(device)
        return (per_image * weight.to(device)).sum()

    for m in (unet_ddp, *text_encoders):
        m.train()
    step_seconds, tick = [], time.perf_counter()  # wall time of each step: shows a compile's first step, checkpoints
    # at most one display update a second: a notebook receives each update as a message
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc=cfg.adapter, mininterval=1.0,
               disable=not accelerator.is_main_process)
    for step in bar:
        total = 0.0
        for micro in range(cfg.gradient_accumulation):
            sync = micro == cfg.gradient_accumulation - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(unet_ddp):
                loss = (lcm_loss() if isinstance(cfg, LCMConfig) else loss_on_batch()) / cfg.gradient_accumulation
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"The loss became {loss.item()} at step {step}: training stopped, the last checkpoint is intact. "
                        f"Lower --lr (now {lr}) or use --mixed-precision bf16/no instead of fp16."
                    )
                accelerator.backward(loss)
            total += loss.item()
        if accelerator.num_processes > 1:
            for p in te_params:
                p.grad = accelerator.reduce(p.grad, reduction="mean")
            # log the loss of the whole global batch, as a single process would
            total = float(accelerator.reduce(torch.tensor(total, device=device), reduction="mean"))
        if cfg.max_grad_norm:  # g <- g min(1, max / ||g||), on the true (unscaled, with fp16) gradients; one kernel per step
            accelerator.unscale_gradients()
            torch.nn.utils.clip_grad_norm_(list(named.values()), cfg.max_grad_norm, foreach=True)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if isinstance(trained, PlaceholderEmbedding):
            trained.restore_other_rows()  # only the new token's rows may change
        losses.append(total)
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", refresh=False)
        done = step + 1
        if accelerator.is_main_process and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            save_checkpoint(out, done, named, optimizer, scheduler, gen, losses, cfg)
        if accelerator.is_main_process and cfg.validation_every and (done % cfg.validation_every == 0 or done == cfg.steps):
            _validation_image(pipe, cfg, out / "validation" / f"step-{done:07d}.png", (unet_ddp, *text_encoders))
        step_seconds.append(time.perf_counter() - tick)
        tick = time.perf_counter()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_results(cfg, pipe, trained, out, losses, step_seconds, start_step, accelerator.num_processes, resolution)
    accelerator.wait_for_everyone()
    return out


@torch.no_grad()
def _validation_image(pipe, cfg: TrainConfig, path: Path, trained: tuple) -> None:
    from .sampling import quiet_progress, sample

    for m in trained:
        m.eval()
    with quiet_progress(pipe):
        image = sample(pipe, cfg.validation_prompt, seed=cfg.seed)[0]
    with staged_file(path) as tmp:
        image.save(tmp, format="PNG")
    for m in trained:
        m.train()


def _write_results(cfg: TrainConfig, pipe, trained, out: Path, losses: list[float], step_seconds: list[float], start_step: int,
                   processes: int, resolution: int) -> None:
    """Stage every result file, carry over checkpoints and validation images, and swap the folder in at once."""
    with staged_folder(out) as tmp:
        if cfg.adapter == "full":
            pipe.save_pretrained(tmp)  # pipe.unet is the fine-tuned UNet
        elif cfg.adapter == "textual-inversion":
            save_embedding(trained.learned(), cfg.token, tmp, cfg.token.strip("<>") or out.name,
                           {"token": cfg.token, "init_word": cfg.init_word, "steps": str(cfg.steps)})
        elif cfg.adapter == "hypernetwork":
            hypernet.save_hypernetwork(trained, tmp, out.name, cfg.steps)
        else:
            meta = kohya_metadata(cfg.adapter, cfg.rank, cfg.resolved_alpha, base_model_version(pipe),
                                  {"ss_steps": cfg.steps, "ss_learning_rate": cfg.resolved_lr, "ss_output_name": out.name,
                                   "ss_resolution": f"({resolution}, {resolution})"}, cfg.lokr_factor)
            save_adapter(pipe, tmp, ADAPTER, cfg.adapter, out.name, meta)
        resolved = {"targets": cfg.resolved_targets, "alpha": cfg.resolved_alpha, "lr": cfg.resolved_lr}
        (tmp / "training_config.json").write_text(json.dumps(asdict(cfg) | resolved, indent=1))
        (tmp / "loss.json").write_text(json.dumps({"loss": losses, "seconds_this_session": sum(step_seconds), "step_seconds": step_seconds,
                                                   "resumed_at_step": start_step, "processes": processes}))
        for kept in ("checkpoints", "validation"):
            if (out / kept).is_dir():
                shutil.move(str(out / kept), str(tmp / kept))
