"""Adapters with every factor random (not the zero-start init), so every tensor of a file matters, and one fixed
UNet call to compare what they do."""

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from sdtune.formats.adapters import add_adapter
from sdtune.methods import adapter_config

TARGETS = {"lora": "attn", "locon": "attn-mlp-conv", "dora": "attn-mlp-conv", "loha": "attn-mlp-conv", "lokr": "attn-mlp-conv"}


def random_adapter(pipe, kind: str, name: str = "src", text_encoder: bool = False, lokr_factor: int = -1,
                   targets: str | None = None, tucker: bool = False) -> None:
    """A `kind` adapter on `targets` (default: TARGETS[kind]) with random factors; `tucker`: LoHa/LoKr k x k
    convolutions with Tucker cores (LyCORIS's use_tucker)."""
    config = adapter_config(kind, 4, 2.0, targets or TARGETS[kind], "unet", lokr_factor=lokr_factor)
    if hasattr(config, "init_lora_weights"):
        config.init_lora_weights = False
    else:
        config.init_weights = False
        config.use_effective_conv2d = tucker
    add_adapter(pipe.unet, config, name)
    if text_encoder:
        te = adapter_config(kind, 4, 2.0, "attn", "text_encoder")
        te.init_lora_weights = False
        add_adapter(pipe.text_encoder, te, name)
    if kind == "dora":  # move the magnitudes off their initial value ||W||
        with torch.no_grad():
            for m in pipe.unet.modules():
                if isinstance(m, BaseTunerLayer) and name in getattr(m, "lora_magnitude_vector", {}):
                    m.lora_magnitude_vector[name].weight.mul_(1.5)


def unet_output(pipe) -> torch.Tensor:
    """The UNet's output on a fixed batch (two timesteps, random text context)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, pipe.unet.config.in_channels, 8, 8, generator=g)
    ctx = torch.randn(2, 32, pipe.unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return pipe.unet(z, torch.tensor([10, 500]), ctx).sample
