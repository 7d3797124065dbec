"""Chapter 01 exercises: the merged LoRA update and a LoRA's parameter count."""

import torch


def lora_delta(A: torch.Tensor, B: torch.Tensor, alpha: float, r: int) -> torch.Tensor:
    """dW = (alpha / r) B A: what merging adds to W. A: (r, in), B: (out, r), dW: (out, in)."""
    return (alpha / r) * B @ A


def lora_parameter_count(in_features: int, out_features: int, r: int) -> int:
    """A has r x in numbers and B has out x r: r (in + out), against in x out for the layer itself."""
    return r * (in_features + out_features)
