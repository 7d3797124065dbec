"""LoHa and LoKr: the LyCORIS family (Yeh et al. 2024, arXiv 2309.14859), trained through peft.

Both replace LoRA's product B A by a product of small factors that reaches a higher rank for the same
number of parameters. With gamma = alpha / r:

    LoHa:  dW = gamma (W1a W1b) * (W2a W2b)       (* elementwise; rank up to r^2, 2 r (in + out) parameters)
    LoKr:  dW = gamma W1 (x) W2,  W2 = W2a W2b    ((x) Kronecker; W1 is a small full matrix)

For a convolution the factors build a matrix of shape (out, in k k) that is reshaped to (out, in, k, k).

LoKr's `factor` (LyCORIS's name; peft's `decompose_factor`) chooses how a layer of shape (out, in) splits into
W1 (out1, in1) and W2 (out2, in2) with out = out1 out2 and in = in1 in2. The default, -1, takes the divisors
nearest the square root (64 -> 8 x 8); factor f > 0 makes W1's side f where f divides the dimension (64 -> 4 x 16).
kron(W1, W2) repeats W2 once per entry of W1, so a smaller factor means fewer, larger blocks.

`loha_delta` and `lokr_delta` compute dW from a file's tensors exactly as the LyCORIS definitions do; the
kohya-format loader and the tests use them.
"""

from __future__ import annotations

import torch
from peft import LoHaConfig, LoKrConfig
from peft.tuners.lokr.layer import factorization

LYCORIS_KINDS = ("loha", "lokr")


def loha_config(rank: int, alpha: float, target_modules: list[str] | str) -> LoHaConfig:
    """peft's LoHa config; W2b starts at zero (the other factors random), so dW starts at 0."""
    return LoHaConfig(r=rank, alpha=alpha, target_modules=target_modules)


def lokr_config(rank: int, alpha: float, target_modules: list[str] | str, factor: int = -1) -> LoKrConfig:
    """peft's LoKr config with LyCORIS's initialisation: W1 random, W2 (or its factor W2b) zero, so dW starts at 0."""
    return LoKrConfig(r=rank, alpha=alpha, target_modules=target_modules, init_weights="lycoris", decompose_factor=factor)


def lokr_factor_of(layers: dict[str, tuple[int, int, int, int]]) -> int:
    """The `factor` that splits every layer as its file does; `layers` maps a layer's name to (out, in, out1, in1):
    the layer's dimensions and its W1's shape. Raises ValueError if no single factor reproduces them all."""
    candidates = [-1] + sorted({d for _, _, out1, in1 in layers.values() for d in (out1, in1)})
    for factor in candidates:
        if all(factorization(out, factor)[0] == out1 and factorization(in_, factor)[0] == in1
               for out, in_, out1, in1 in layers.values()):
            return factor
    name, (out, in_, out1, in1) = next(iter(layers.items()))
    raise ValueError(f"No single LoKr factor splits every layer as the file does (e.g. {name}: ({out}, {in_}) with W1 "
                     f"({out1}, {in1})); peft, which sdtune trains and loads LoKr through, uses one factor per adapter.")


def loha_delta(w1a: torch.Tensor, w1b: torch.Tensor, w2a: torch.Tensor, w2b: torch.Tensor, scale: float,
               shape: torch.Size) -> torch.Tensor:
    """dW = scale (W1a W1b) * (W2a W2b), reshaped to the layer's weight shape."""
    return (scale * (w1a @ w1b) * (w2a @ w2b)).reshape(shape)


def lokr_delta(w1: torch.Tensor, w2: torch.Tensor, scale: float, shape: torch.Size) -> torch.Tensor:
    """dW = scale kron(W1, W2); W2 may carry a k x k kernel (out2, in2, k, k) for a convolution."""
    if w2.dim() == 4:  # convolution: kron over the (out, in) dims, the kernel comes from W2
        w1 = w1[:, :, None, None]
    return (scale * torch.kron(w1, w2)).reshape(shape)
