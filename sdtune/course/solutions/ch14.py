"""Chapter 14 exercises: scale one block's part of a B-LoRA, and count what B-LoRA trains."""

import torch
from torch import nn

from sdtune.methods.blora import block_part


def scale_part(tensors: dict[str, torch.Tensor], block: str, s: float) -> dict[str, torch.Tensor]:
    """dW = (alpha / r) up @ down is linear in each factor: scale `lora_up` alone (or alpha) by s. Scaling both
    up and down, as some reference helpers do, gives s^2 dW."""
    return {k: v * s if k.endswith(".lora_up.weight") else v for k, v in block_part(tensors, block).items()}


def blora_parameter_count(unet: nn.Module, blocks: list[str], rank: int) -> int:
    """r (d_in + d_out) for to_q, to_k, to_v and to_out.0 of every attention layer inside the blocks
    (works on a meta-device UNet too)."""
    return sum(rank * (m.in_features + m.out_features) for name, m in unet.named_modules()
               if isinstance(m, nn.Linear) and name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))
               and any(name.startswith(b + ".") for b in blocks))
