"""LoHa and LoKr: the LyCORIS family (Yeh et al. 2024, arXiv 2309.14859), trained through peft.

Both replace LoRA's product B A by a product of small factors that reaches a higher rank for the same
number of parameters. With gamma = alpha / r:

    LoHa:  dW = gamma (W1a W1b) * (W2a W2b)       (* elementwise; rank up to r^2, 2 r (in + out) parameters)
    LoKr:  dW = gamma W1 (x) W2,  W2 = W2a W2b    ((x) Kronecker; W1 is a small full matrix)

For a convolution the factors build a matrix of shape (out, in k k) that is reshaped to (out, in, k, k).
`loha_delta` and `lokr_delta` compute dW from a file's tensors exactly as the LyCORIS definitions do; the
kohya-format loader and the tests use them.
"""

from __future__ import annotations

import torch
from peft import LoHaConfig, LoKrConfig

LYCORIS_KINDS = ("loha", "lokr")


def loha_config(rank: int, alpha: float, target_modules: list[str] | str) -> LoHaConfig:
    """peft's LoHa config; W2b starts at zero (the other factors random), so dW starts at 0."""
    return LoHaConfig(r=rank, alpha=alpha, target_modules=target_modules)


def lokr_config(rank: int, alpha: float, target_modules: list[str] | str) -> LoKrConfig:
    """peft's LoKr config with LyCORIS's initialisation: W1 random, W2 (or its factor W2b) zero, so dW starts at 0."""
    return LoKrConfig(r=rank, alpha=alpha, target_modules=target_modules, init_weights="lycoris")


def loha_delta(w1a: torch.Tensor, w1b: torch.Tensor, w2a: torch.Tensor, w2b: torch.Tensor, scale: float,
               shape: torch.Size) -> torch.Tensor:
    """dW = scale (W1a W1b) * (W2a W2b), reshaped to the layer's weight shape."""
    return (scale * (w1a @ w1b) * (w2a @ w2b)).reshape(shape)


def lokr_delta(w1: torch.Tensor, w2: torch.Tensor, scale: float, shape: torch.Size) -> torch.Tensor:
    """dW = scale kron(W1, W2); W2 may carry a k x k kernel (out2, in2, k, k) for a convolution."""
    if w2.dim() == 4:  # convolution: kron over the (out, in) dims, the kernel comes from W2
        w1 = w1[:, :, None, None]
    return (scale * torch.kron(w1, w2)).reshape(shape)
