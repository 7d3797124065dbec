"""LoHa and LoKr: the LyCORIS family (Yeh et al. 2024, arXiv 2309.14859), trained through peft.

Both replace LoRA's product B A by a product of small factors that reaches a higher rank for the same
number of parameters. With gamma = alpha / r:

    LoHa:  dW = gamma (W1a W1b) * (W2a W2b)       (* elementwise; rank up to r^2, 2 r (in + out) parameters)
    LoKr:  dW = gamma W1 (x) W2,  W2 = W2a W2b    ((x) Kronecker; W1 is a small full matrix)

For a convolution the factors build a matrix of shape (out, in k k) that is reshaped to (out, in, k, k).

LoKr's `factor` (LyCORIS's name; peft's `decompose_factor`) chooses how a layer of shape (out, in) splits into
W1 (out1, in1) and W2 (out2, in2) with out = out1 out2 and in = in1 in2. Each dimension d is split as LyCORIS's
`factorization` does: the default, -1, takes the divisors nearest the square root (64 -> 8 x 8); a factor f that
divides d splits it into f and d / f, the smaller side going to W1 (64 at f = 4 -> 4 x 16, at f = 16 -> 4 x 16 too);
any other f takes the divisor pair nearest the square root whose smaller side is at most f (96 at f = 5 -> 4 x 24).
kron(W1, W2) repeats W2 once per entry of W1, so a smaller W1 means fewer, larger blocks.

peft splits the same way except that it gives W1 the side f even when f > d / f; `lokr_splits` makes peft's LoKr
layers split as LyCORIS does (or exactly as a file's layers are split), so that `--lokr-factor` means LyCORIS's
`factor` and LyCORIS rebuilds the same shapes from the file's header.

`loha_delta` and `lokr_delta` compute dW from a file's tensors exactly as the LyCORIS definitions do; the
kohya-format loader and the tests use them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from peft import LoHaConfig, LoKrConfig
from peft.tuners.lokr import layer as peft_lokr_layer
from peft.tuners.lokr.layer import factorization as peft_factorization

LYCORIS_KINDS = ("loha", "lokr")
Split = Callable[[int, int], tuple[int, int]]  # (dimension, factor) -> (W1's side, W2's side)


def loha_config(rank: int, alpha: float, target_modules: list[str] | str) -> LoHaConfig:
    """peft's LoHa config; W2b starts at zero (the other factors random), so dW starts at 0."""
    return LoHaConfig(r=rank, alpha=alpha, target_modules=target_modules)


def lokr_config(rank: int, alpha: float, target_modules: list[str] | str, factor: int = -1) -> LoKrConfig:
    """peft's LoKr config with LyCORIS's initialisation: W1 random, W2 (or its factor W2b) zero, so dW starts at 0.
    `factor` is LyCORIS's; add the adapter with `sdtune.formats.adapters.add_adapter`, which splits as LyCORIS does."""
    return LoKrConfig(r=rank, alpha=alpha, target_modules=target_modules, init_weights="lycoris", decompose_factor=factor)


def lycoris_factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """LyCORIS's split of one dimension into (W1's side, W2's side), W1's side the smaller: peft's own split
    (divisors nearest the square root, W1's side at most `factor`; or exactly `factor` and dimension / factor when
    `factor` divides the dimension), with the two sides ordered."""
    first, second = peft_factorization(dimension, factor)
    return min(first, second), max(first, second)


@contextmanager
def lokr_splits(split: Split = lycoris_factorization) -> Iterator[None]:
    """While open, the LoKr layers peft creates split each dimension with `split(dimension, factor)`.

    peft reads its module-level `factorization` when it builds a LoKr layer and at no other time, so swapping that one
    function for the duration of the injection changes the factor shapes and nothing else."""
    original = peft_lokr_layer.factorization
    peft_lokr_layer.factorization = split
    try:
        yield
    finally:
        peft_lokr_layer.factorization = original


def lokr_factor_of(layers: dict[str, tuple[int, int, int, int]]) -> int | None:
    """The LyCORIS `factor` that splits every layer as its file does, or None if there is none (a file from another
    rule, e.g. sdtune before it followed LyCORIS); `layers` maps a layer's name to (out, in, out1, in1): the layer's
    dimensions and its W1's shape. Of several factors that give the same shapes, the smallest (-1 first)."""
    sides = {d for out, in_, out1, in1 in layers.values() for d in (out1, in1, out // out1, in_ // in1)}
    for factor in [-1, *sorted(sides)]:
        if all(lycoris_factorization(out, factor)[0] == out1 and lycoris_factorization(in_, factor)[0] == in1
               for out, in_, out1, in1 in layers.values()):
            return factor
    return None


def splits_of(layers: dict[str, tuple[int, int, int, int]]) -> dict[int, tuple[int, int]]:
    """How a file splits each dimension, {dimension: (W1's side, W2's side)}, from each layer's (out, in, out1, in1).
    Raises ValueError naming a layer if one dimension is split two ways (peft splits a dimension one way per adapter)."""
    splits: dict[int, tuple[int, int]] = {}
    seen: dict[int, str] = {}
    for name, (out, in_, out1, in1) in layers.items():
        for dimension, side in ((out, out1), (in_, in1)):
            split = (side, dimension // side)
            if splits.setdefault(dimension, split) != split:
                raise ValueError(f"The file splits the width {dimension} as {splits[dimension]} at {seen[dimension]} but as "
                                 f"{split} at {name}; peft, which sdtune loads LoKr through, splits a width one way per adapter.")
            seen.setdefault(dimension, name)
    return splits


def loha_delta(w1a: torch.Tensor, w1b: torch.Tensor, w2a: torch.Tensor, w2b: torch.Tensor, scale: float,
               shape: torch.Size) -> torch.Tensor:
    """dW = scale (W1a W1b) * (W2a W2b), reshaped to the layer's weight shape."""
    return (scale * (w1a @ w1b) * (w2a @ w2b)).reshape(shape)


def lokr_delta(w1: torch.Tensor, w2: torch.Tensor, scale: float, shape: torch.Size) -> torch.Tensor:
    """dW = scale kron(W1, W2); W2 may carry a k x k kernel (out2, in2, k, k) for a convolution."""
    if w2.dim() == 4:  # convolution: kron over the (out, in) dims, the kernel comes from W2
        w1 = w1[:, :, None, None]
    return (scale * torch.kron(w1, w2)).reshape(shape)
