"""Chapter 12 exercises: a fused weight from a kohya layer, and how a LoRA's update is spread over the UNet's blocks."""

import torch


def fused_weight(W0: torch.Tensor, down: torch.Tensor, up: torch.Tensor, alpha: float, scale: float = 1.0) -> torch.Tensor:
    """W0 + scale (alpha / r) up @ down, in fp32, shaped like W0.

    Linear: up (out, r), down (r, in). LoCon convolution: up (out, r, 1, 1), down (r, in, k, k): the product of the
    flattened factors is (out, in k k), which is W0's (out, in, k, k) flattened the same way."""
    rank = down.shape[0]
    delta = (alpha / rank) * up.float().flatten(1) @ down.float().flatten(1)
    return W0.float() + scale * delta.reshape(W0.shape)


def block_shares(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each UNet part's share of sum ||dW||_F^2 over the layers of a kohya LoRA: {"down": ., "mid": ., "up": .}, sum 1.

    A layer `lora_unet_down_blocks_1_..._to_q` belongs to "down"; `..._mid_block_...` to "mid"; `..._up_blocks_...`
    to "up"; dW = (alpha / r) up @ down (flattened for convolutions)."""
    energy = {"down": 0.0, "mid": 0.0, "up": 0.0}
    for key, down in tensors.items():
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        up = tensors[f"{name}.lora_up.weight"].float()
        rank = down.shape[0]
        alpha = float(tensors[f"{name}.alpha"]) if f"{name}.alpha" in tensors else float(rank)
        delta = (alpha / rank) * up.flatten(1) @ down.float().flatten(1)
        part = next(p for p, prefix in (("down", "lora_unet_down_blocks_"), ("mid", "lora_unet_mid_block_"),
                                        ("up", "lora_unet_up_blocks_")) if name.startswith(prefix))
        energy[part] += float(delta.pow(2).sum())
    total = sum(energy.values())
    return {part: value / total for part, value in energy.items()}
