"""Chapter 06 exercises: (IA)3 on a feed-forward layer, and BitFit."""

import torch
from torch import nn


def ia3_feedforward(layer: nn.Linear, x: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """W (l * x) + b: (IA)3 rescales the input features of a feed-forward layer."""
    return layer(l * x)


def freeze_all_but_biases(module: nn.Module) -> int:
    """BitFit: only parameters named *bias train; returns how many numbers that is."""
    for name, p in module.named_parameters():
        p.requires_grad_(name.endswith("bias"))
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
