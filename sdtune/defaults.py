"""Training defaults per model family and method, each with where it comes from.

An option the user leaves out is filled from this table at the start of a run, and the run prints what it
chose and why. The tiny model's values come from recipes measured on it (`benchmarks/defaults_study.py`,
`benchmarks/style_bar.py`); real models' from the diffusers training examples and kohya's sd-scripts, the
places most users of SD 1.5 and SDXL start from.

    recommended("tiny", "lora", "lora")["targets"]      # Default(value='attn-mlp-conv', source='benchmarks/...')
    recommended(model_family(pipe), "dreambooth", "lora")

`sample_guidance` is not a training option: it is the guidance a recipe was measured at, the one to sample its
adapter with (the tiny model's style recipe shows its style best at 2.5, below the model's default 4).

Why the tiny model's defaults differ from SD's (`benchmarks/results/defaults_study_cpu.json`, 3 training seeds, 32
held-out prompts each, guidance 2.5): attention-only LoRA at rank 4, the diffusers examples' choice for SD 1.5 and
sdtune's default before this table, shows a new style in 40% of images (dotted) and 15% (striped); LoRA on the
attention, MLP and convolution layers (what LyCORIS calls LoCon) at rank 8, batch 32, on the timesteps below 600 shows
it in 77% and 35%: higher by 38 [9, 66] points on dotted, not resolved on striped (+21 [-5, 47]); counted with the
course's judge, which names a style only where it is sure. The tiny UNet is small and its few attention layers
carry less of what an image looks like than SD's many. For a new subject the same layers at a larger step draw it for
its own prompt (`tests/test_defaults.py` measures it on a subject no recipe saw), but not on a background its images
never had. Chapter 08's recipe (batch 4, 600 steps, sampled at guidance 4) draws its subject on an unseen background in
73/120 images with prior preservation and 25/120 without, over ten training seeds
(`benchmarks/dreambooth_prior_study.py`); it is not yet measured as a default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FAMILIES = ("tiny", "sd1", "sd2", "sdxl")
METHODS = ("lora", "full", "dreambooth", "textual-inversion", "hypernetwork", "lcm")
ADAPTERS = ("lora", "locon", "dora", "loha", "lokr", "full", "textual-inversion", "hypernetwork")


@dataclass(frozen=True)
class Default:
    value: Any
    source: str


def model_family(pipe) -> str:
    """'sdxl' (two text encoders), 'sd2' (1024-wide text embeddings), 'sd1' (768) or 'tiny' (anything else)."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    return {768: "sd1", 1024: "sd2"}.get(pipe.unet.config.cross_attention_dim, "tiny")


def _table(source: str, **values: Any) -> dict[str, Default]:
    return {name: Default(value, source) for name, value in values.items()}


# ---------------------------------------------------------------------------------------------------------------
# The tiny model: measured recipes
# ---------------------------------------------------------------------------------------------------------------

STUDY = "benchmarks/results/defaults_study_cpu.json"
STYLE_BAR = "benchmarks/results/style_bar_cpu.json"  # README "What a style takes": one recipe, every adapter kind, 3 seeds
STYLE_RECIPE = "locon r8 b32 t<600"  # the study's recipe that became the defaults (a key of its results file)
SUBJECT_TEST = "tests/test_defaults.py::test_a_new_subject_shows_under_the_dreambooth_lora_defaults"


def _measured(part: str, key: str, **values: Any) -> dict[str, Default]:
    return _table(f"{STUDY} {part}[{key!r}]", **values)


# `train lora`: a new style. LoRA on attention, MLPs and convolutions is what LyCORIS calls LoCon (the same peft layers)
_TINY_STYLE = _measured("style", STYLE_RECIPE, targets="attn-mlp-conv", rank=8, batch_size=32, lr=1e-3, steps=300,
                        max_timestep=600, sample_guidance=2.5)
# another adapter kind: the layers and learning rate of the style bar (same batch, steps and timesteps)
_TINY_KIND = {
    "locon": _table(STYLE_BAR, targets="attn-mlp-conv"),
    "dora": _table(STYLE_BAR, targets="attn-mlp-conv"),
    "loha": _table(f"{STYLE_BAR} (the product of two factors wants a larger step)", targets="attn-mlp", lr=4e-3),
    "lokr": _table(STYLE_BAR, targets="attn-mlp-conv"),
}
# `train dreambooth --lora`: a new subject
_TINY_SUBJECT = _table(f"{SUBJECT_TEST} (explored on one training seed; the subject shows for its prompt, not yet in a new "
                       "context)", targets="attn-mlp-conv", rank=8, batch_size=8, lr=3e-3, steps=800, num_class_images=50,
                       sample_guidance=4.0)
_TINY = {
    "lora": _TINY_STYLE,
    "full": _table(f"{STYLE_BAR} (full: every UNet weight)", batch_size=32, lr=5e-5, steps=300, max_timestep=600,
                   sample_guidance=2.5),
    "dreambooth-full": _table("tests/test_personalization_measured.py (the measured DreamBooth of chapter 08)", batch_size=4,
                              lr=3e-4, steps=200, prior_loss_weight=1.0, num_class_images=32),
    "dreambooth": _TINY_SUBJECT,
    "textual-inversion": _table("sdtune's fixed defaults before this table (the issue: they already find a subject the model "
                                "can draw); A1111's embedding learning rate is 0.005 too", batch_size=8, lr=5e-3, steps=300),
    "hypernetwork": _table("sdtune's fixed defaults before this table", batch_size=8, lr=1e-4, steps=300),
    "lcm": _table("sdtune/models/toy_loras.py LCM and LCMConfig's layers (the shipped LCM-LoRA, measured in toy_loras.json at "
                  "guidance 1)", rank=8, targets="attn-mlp-conv", lr=1e-4, steps=300, batch_size=8, sample_guidance=1.0),
}

# ---------------------------------------------------------------------------------------------------------------
# Real models: the diffusers examples and kohya's sd-scripts
# ---------------------------------------------------------------------------------------------------------------

DIFFUSERS = "diffusers examples/"
_T2I_LORA = DIFFUSERS + "text_to_image/train_text_to_image_lora.py"
_T2I_README = DIFFUSERS + "text_to_image/README.md"
_DB_LORA = DIFFUSERS + "dreambooth/train_dreambooth_lora.py"
_DB_README = DIFFUSERS + "dreambooth/README.md"
_DB_SDXL_README = DIFFUSERS + "dreambooth/README_sdxl.md"
_KOHYA = "kohya-ss/sd-scripts "

_REAL_LORA = {
    "rank": Default(4, f"{_T2I_LORA} --rank (default 4)"),
    "lr": Default(1e-4, f"{_T2I_LORA} --learning_rate (default 1e-4); {_KOHYA}docs/train_network.md --learning_rate=1e-4"),
    "batch_size": Default(1, f"{_T2I_README} LoRA example --train_batch_size=1"),
    "steps": Default(1600, f"{_KOHYA}library/train_util.py --max_train_steps (default 1600)"),
    "lr_scheduler": Default("constant", f"{_T2I_LORA} --lr_scheduler (default constant)"),
    "warmup_steps": Default(0, f"{_T2I_README} LoRA example --lr_warmup_steps=0"),
    "max_grad_norm": Default(1.0, f"{_T2I_LORA} --max_grad_norm (default 1.0)"),
    "text_encoder_lr": Default(1e-5, f"{_KOHYA}docs/train_network.md --text_encoder_lr=1e-5 (smaller than the U-Net's)"),
}
_REAL_KIND = {  # diffusers adapts the attention projections (to_q, to_k, to_v, to_out.0); LoCon needs the convolutions
    "lora": _table(f"{_T2I_LORA} LoraConfig target_modules to_k, to_q, to_v, to_out.0", targets="attn"),
    "locon": _table("LyCORIS: LoCon is LoRA on the convolutions too", targets="attn-mlp-conv"),
}
_REAL_DB_LORA = {
    "rank": Default(4, f"{_DB_LORA} --rank (default 4)"),
    "lr": Default(1e-4, f"{_DB_README} LoRA example --learning_rate=1e-4 (the script's default is 5e-4)"),
    "batch_size": Default(1, f"{_DB_README} LoRA example --train_batch_size=1"),
    "steps": Default(500, f"{_DB_README} LoRA example --max_train_steps=500"),
    "lr_scheduler": Default("constant", f"{_DB_README} LoRA example --lr_scheduler=constant"),
    "warmup_steps": Default(0, f"{_DB_README} LoRA example --lr_warmup_steps=0"),
    "max_grad_norm": Default(1.0, f"{_DB_LORA} --max_grad_norm (default 1.0)"),
    "prior_loss_weight": Default(1.0, f"{_DB_LORA} --prior_loss_weight (default 1.0)"),
    "num_class_images": Default(100, f"{_DB_LORA} --num_class_images (default 100)"),
    "text_encoder_lr": Default(5e-6, DIFFUSERS + "dreambooth/train_dreambooth_lora_sdxl.py --text_encoder_lr (default 5e-6)"),
}
_REAL_DB_FULL = {
    "lr": Default(5e-6, f"{_DB_README} prior-preservation example --learning_rate=5e-6"),
    "batch_size": Default(1, f"{_DB_README} prior-preservation example --train_batch_size=1"),
    "steps": Default(800, f"{_DB_README} prior-preservation example --max_train_steps=800"),
    "lr_scheduler": Default("constant", f"{_DB_README} prior-preservation example --lr_scheduler=constant"),
    "warmup_steps": Default(0, f"{_DB_README} prior-preservation example --lr_warmup_steps=0"),
    "max_grad_norm": Default(1.0, DIFFUSERS + "dreambooth/train_dreambooth.py --max_grad_norm (default 1.0)"),
    "prior_loss_weight": Default(1.0, f"{_DB_README} prior-preservation example --prior_loss_weight=1.0"),
    "num_class_images": Default(200, f"{_DB_README} prior-preservation example --num_class_images=200"),
}
_REAL_FULL = {
    "lr": Default(1e-5, f"{_T2I_README} train_text_to_image.py example --learning_rate=1e-05"),
    "batch_size": Default(4, f"{_T2I_README} train_text_to_image.py example --train_batch_size=1 x --gradient_accumulation_steps=4"),
    "steps": Default(1600, f"{_KOHYA}library/train_util.py --max_train_steps (default 1600)"),
    "lr_scheduler": Default("constant", f"{_T2I_README} train_text_to_image.py example --lr_scheduler=constant"),
    "warmup_steps": Default(0, f"{_T2I_README} train_text_to_image.py example --lr_warmup_steps=0"),
    "max_grad_norm": Default(1.0, f"{_T2I_README} train_text_to_image.py example --max_grad_norm=1"),
}
_TI_README = DIFFUSERS + "textual_inversion/README.md"
_REAL_TI = {
    "lr": Default(2e-3, f"{_TI_README} --learning_rate=5.0e-04 --scale_lr: x batch 1 x accumulation 4 = 2e-3"),
    "batch_size": Default(4, f"{_TI_README} --train_batch_size=1 x --gradient_accumulation_steps=4"),
    "steps": Default(3000, f"{_TI_README} --max_train_steps=3000"),
    "lr_scheduler": Default("constant", f"{_TI_README} --lr_scheduler=constant"),
    "warmup_steps": Default(0, f"{_TI_README} --lr_warmup_steps=0"),
}
_A1111 = "AUTOMATIC1111/stable-diffusion-webui modules/ui.py Train tab"
_REAL_HYPERNETWORK = {
    "lr": Default(1e-5, f"{_A1111}: Hypernetwork Learning rate 0.00001"),
    "batch_size": Default(1, f"{_A1111}: Batch size 1"),
    "steps": Default(1600, f"{_KOHYA}library/train_util.py --max_train_steps (default 1600); the WebUI's 100000 is a ceiling"),
}
_LCM_README = DIFFUSERS + "consistency_distillation/README.md LCM-LoRA example"
_REAL_LCM = {
    "rank": Default(64, f"{_LCM_README} --lora_rank=64"),
    "lr": Default(1e-4, f"{_LCM_README} --learning_rate=1e-4"),
    "batch_size": Default(12, f"{_LCM_README} --train_batch_size=12"),
    "steps": Default(1000, f"{_LCM_README} --max_train_steps=1000"),
    "max_grad_norm": Default(1.0, DIFFUSERS + "consistency_distillation/train_lcm_distill_lora_sd_wds.py --max_grad_norm (default 1.0)"),
}
_GUIDANCE = {  # what the pipelines sample with by default
    "sd1": Default(7.5, "diffusers StableDiffusionPipeline.__call__ guidance_scale (default 7.5)"),
    "sd2": Default(7.5, "diffusers StableDiffusionPipeline.__call__ guidance_scale (default 7.5)"),
    "sdxl": Default(5.0, "diffusers StableDiffusionXLPipeline.__call__ guidance_scale (default 5.0)"),
}
_SDXL_DB_LORA = {  # the SDXL example changes the batch (1 x accumulation 4); the rest is the SD example's
    "batch_size": Default(4, f"{_DB_SDXL_README} --train_batch_size=1 x --gradient_accumulation_steps=4"),
    "lr": Default(1e-4, f"{_DB_SDXL_README} --learning_rate=1e-4"),
    "steps": Default(500, f"{_DB_SDXL_README} --max_train_steps=500"),
}
_SDXL_FULL = {
    "lr": Default(1e-6, DIFFUSERS + "text_to_image/README_sdxl.md train_text_to_image_sdxl.py example --learning_rate=1e-06"),
}


def recommended(family: str, method: str, adapter: str) -> dict[str, Default]:
    """The defaults of one model family ('tiny', 'sd1', 'sd2', 'sdxl'), method ('lora', 'full', 'dreambooth',
    'textual-inversion', 'hypernetwork', 'lcm') and adapter kind ('lora', 'locon', 'dora', 'loha', 'lokr', 'full',
    'textual-inversion', 'hypernetwork'): {TrainConfig field: Default(value, source)}.

    `sample_guidance` is the guidance the recipe was measured at: the one to sample its adapter with.
    """
    for name, value, allowed in (("family", family, FAMILIES), ("method", method, METHODS), ("adapter", adapter, ADAPTERS)):
        if value not in allowed:
            raise ValueError(f"Unknown {name} {value!r}: choose one of {', '.join(allowed)}.")
    if family == "tiny":
        if method == "dreambooth" and adapter == "full":
            return dict(_TINY["dreambooth-full"])
        if method == "dreambooth":  # another kind keeps the subject recipe but takes its own layers
            return _TINY_SUBJECT | {k: v for k, v in _TINY_KIND.get(adapter, {}).items() if k == "targets"}
        return _TINY[method] | (_TINY_KIND.get(adapter, {}) if method == "lora" else {})
    guidance = {"sample_guidance": _GUIDANCE[family]}
    kind = _REAL_KIND.get(adapter, {})
    if method == "lora":
        return _REAL_LORA | kind | guidance
    if method == "dreambooth" and adapter == "full":
        return _REAL_DB_FULL | guidance | (_SDXL_FULL if family == "sdxl" else {})
    if method == "dreambooth":
        return _REAL_DB_LORA | kind | guidance | (_SDXL_DB_LORA if family == "sdxl" else {})
    if method == "full":
        return _REAL_FULL | guidance | (_SDXL_FULL if family == "sdxl" else {})
    if method == "textual-inversion":
        return _REAL_TI | guidance
    if method == "hypernetwork":
        return _REAL_HYPERNETWORK | guidance
    return _REAL_LCM | {"targets": Default("attn-mlp-conv", "LCM-LoRA adapts attention, MLPs and convolutions (Luo et al. 2023)"),
                        "sample_guidance": Default(1.0, "latent-consistency/lcm-lora-sdv1-5 model card: guidance off (1.0) or "
                                                        "1.0 to 2.0")}
