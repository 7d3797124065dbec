"""LoRA (Hu et al. 2021) and the variants that keep its B A form: LoCon and DoRA.

A frozen layer W (out x in) gets a trainable low-rank update:

    h = W x + (alpha / r) B A x          A: r x in, B: out x r, r << min(in, out)

A starts random (N(0, 1/r) here) and B at zero, so training starts from the unchanged model. Only
r (in + out) numbers per layer are trained instead of in * out, and after training B A can be added into W
(`fuse_lora`): no cost at inference.

- LoCon ("LoRA for convolution") applies the same update to the UNet's convolutions: A is a k x k
  convolution in -> r, B a 1 x 1 convolution r -> out, r (in k^2 + out) parameters per layer.
- DoRA (Liu et al. 2024) splits the adapted weight into a direction and a trained magnitude m:
  W' = m (W + (alpha / r) B A) / ||W + (alpha / r) B A||, the norm taken per output feature.
"""

from __future__ import annotations

from peft import LoraConfig

LORA_KINDS = ("lora", "locon", "dora")

_ATTN = ["to_q", "to_k", "to_v", "to_out.0"]
_MLP = ["proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
_CONV = ["conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv"]
_TE_ATTN = ["q_proj", "k_proj", "v_proj", "out_proj"]
_TE_MLP = ["fc1", "fc2"]

# Layer-name suffixes per preset, for the UNet and for a CLIP text encoder (which has no convolutions).
TARGET_PRESETS = {
    "attn": {"unet": _ATTN, "text_encoder": _TE_ATTN},
    "attn-mlp": {"unet": _ATTN + _MLP, "text_encoder": _TE_ATTN + _TE_MLP},
    "attn-mlp-conv": {"unet": _ATTN + _MLP + _CONV, "text_encoder": _TE_ATTN + _TE_MLP},
}


def lora_config(kind: str, rank: int, alpha: float, target_modules: list[str] | str) -> LoraConfig:
    """peft's LoraConfig for LoRA, LoCon or DoRA; `init_lora_weights="gaussian"`: A ~ N(0, 1/r), B = 0."""
    names = [target_modules] if isinstance(target_modules, str) else target_modules  # a str is a regex (some blocks only)
    if kind == "locon" and not any(conv in name for name in names for conv in _CONV):
        raise ValueError("LoCon is LoRA on convolutions too: use --targets attn-mlp-conv, or --adapter lora.")
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        init_lora_weights="gaussian",
        target_modules=target_modules,
        use_dora=kind == "dora",
    )
