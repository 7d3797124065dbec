"""Chapter 15's exercises: the exact difference B - A of two kohya LoRA layers, and the smallest SVD rank within an error."""

from __future__ import annotations

import torch

from sdtune.algebra import factors, layer_delta
from sdtune.course.check import Exercise
from sdtune.course.solutions import ch15 as solutions


def _layer(rank: int, alpha: float, shape: tuple[int, ...], g: torch.Generator) -> dict[str, torch.Tensor]:
    """A random kohya layer: lora_down (r x in [x k x k]), lora_up (out x r [x 1 x 1]), alpha."""
    out, rest = shape[0], shape[1:]
    ones = (1,) * (len(rest) - 1)
    return {"lora_down.weight": torch.randn(rank, *rest, generator=g), "lora_up.weight": torch.randn(out, rank, *ones, generator=g),
            "alpha": torch.tensor(float(alpha))}


def _pairs() -> list[tuple[str, dict, dict]]:
    """(what, layer A, layer B): equal ranks, alpha != r, unequal ranks, and a 3x3 convolution (LoCon)."""
    g = torch.Generator().manual_seed(15)
    return [("linear, r 4 and 4, alpha = r", _layer(4, 4.0, (24, 16), g), _layer(4, 4.0, (24, 16), g)),
            ("linear, r 4 and 4, alpha 2 and 8", _layer(4, 2.0, (24, 16), g), _layer(4, 8.0, (24, 16), g)),
            ("linear, r 2 and 6, alpha 1 and 3", _layer(2, 1.0, (12, 20), g), _layer(6, 3.0, (12, 20), g)),
            ("conv 3x3, r 4 and 4, alpha 1 and 4", _layer(4, 1.0, (8, 6, 3, 3), g), _layer(4, 4.0, (8, 6, 3, 3), g))]


def check_difference_layer(fn) -> bool:
    """dW of the returned layer equals dW_B - dW_A (layer_delta: (alpha / r) up @ down) and its rank is r_A + r_B."""
    for what, a, b in _pairs():
        layer = fn(a, b)
        if not isinstance(layer, dict) or not {"lora_down.weight", "lora_up.weight"} <= set(layer):
            print(f"✗ {what}: return a kohya layer, a dict with lora_down.weight, lora_up.weight and alpha.")
            return False
        rank = layer["lora_down.weight"].shape[0]
        expected_rank = a["lora_down.weight"].shape[0] + b["lora_down.weight"].shape[0]
        if rank != expected_rank:
            print(f"✗ {what}: rank {rank}, expected r_A + r_B = {expected_rank}.")
            return False
        target = layer_delta(b) - layer_delta(a)
        error = ((layer_delta(layer) - target).norm() / target.norm()).item()
        if error > 1e-5:
            print(f"✗ {what}: dW of your layer is not dW_B - dW_A (relative error {error:.3g}; hint: each part's alpha / r, "
                  "and what the new layer's own alpha means).")
            return False
    print(f"✓ difference_layer: dW_B - dW_A exactly, at rank r_A + r_B, on all {len(_pairs())} layer pairs "
          "(alpha != r, unequal ranks, a convolution)")
    return True


def _spectra() -> list[torch.Tensor]:
    """Matrices with known singular values: one that falls fast, one flat, one with a long tail, one of rank 3."""
    g = torch.Generator().manual_seed(30)
    out = []
    for sigma in ([4.0, 2.0, 1.0, 0.5, 0.25, 0.12], [1.0] * 6, [3.0, 1.0, 0.8, 0.6, 0.5, 0.4], [2.0, 1.0, 0.3, 0.0, 0.0, 0.0]):
        u, _ = torch.linalg.qr(torch.randn(10, 6, generator=g))
        v, _ = torch.linalg.qr(torch.randn(8, 6, generator=g))
        out.append(u @ torch.diag(torch.tensor(sigma)) @ v.T)
    return out


def check_rank_for(fn) -> bool:
    """The smallest k whose rank-k truncated SVD is within the tolerance, judged by sdtune.algebra.factors' error."""
    ok = True
    for i, delta in enumerate(_spectra()):
        for tolerance in (0.05, 0.2, 0.5):
            k = fn(delta, tolerance)
            if not isinstance(k, int) or k < 1:
                print(f"✗ matrix {i}, tolerance {tolerance}: expected a rank (an int >= 1), got {k!r}.")
                return False
            error_k = factors(delta, k)[1]
            error_less = factors(delta, k - 1)[1] if k > 1 else float("inf")
            if not (error_k <= tolerance + 1e-6 and error_less > tolerance):
                print(f"✗ matrix {i}, tolerance {tolerance}: got k = {k}, whose error is {error_k:.3f} "
                      f"(at k - 1: {error_less:.3f}); the smallest k with error <= {tolerance} is wanted.")
                ok = False
    if ok:
        print(f"✓ rank_for: the smallest rank within the tolerance, on {len(_spectra())} matrices x 3 tolerances")
    return ok


def _difference_of_factors(a: dict, b: dict) -> dict:
    """(g_B B_B - g_A B_A)(A_B - A_A): the factors subtracted, not the products."""
    g_a, g_b = (float(x["alpha"]) / x["lora_down.weight"].shape[0] for x in (a, b))
    up = g_b * b["lora_up.weight"] - g_a * a["lora_up.weight"]
    down = b["lora_down.weight"] - a["lora_down.weight"]
    return {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(float(down.shape[0]))}


def _without_scales(a: dict, b: dict) -> dict:
    """[B_B, -B_A] [A_B; A_A], forgetting each part's alpha / r."""
    layer = solutions.difference_layer({**a, "alpha": torch.tensor(float(a["lora_down.weight"].shape[0]))},
                                       {**b, "alpha": torch.tensor(float(b["lora_down.weight"].shape[0]))})
    return layer


def _alpha_of_a(a: dict, b: dict) -> dict:
    """The right factors, but the new layer keeps A's alpha, so dW is scaled again by alpha_A / (r_A + r_B)."""
    return {**solutions.difference_layer(a, b), "alpha": a["alpha"].clone()}


def _rank_unsquared(delta: torch.Tensor, tolerance: float) -> int:
    """The error from the singular values themselves, not their squares."""
    s = torch.linalg.svdvals(delta.flatten(1).float())
    return next((k for k in range(1, s.numel() + 1) if (s[k:].sum() / s.sum()).item() <= tolerance), s.numel())


def _rank_no_root(delta: torch.Tensor, tolerance: float) -> int:
    """The discarded share of sigma^2 compared with the tolerance without the square root (the error squared)."""
    s2 = torch.linalg.svdvals(delta.flatten(1).float()).pow(2)
    return next((k for k in range(1, s2.numel() + 1) if (s2[k:].sum() / s2.sum()).item() <= tolerance), s2.numel())


DIFFERENCE_LAYER = Exercise("difference_layer", check_difference_layer, solutions.difference_layer, wrong={
    "the factors subtracted instead of the products": _difference_of_factors,
    "each part's alpha / r left out": _without_scales,
    "the new layer keeps A's alpha": _alpha_of_a,
    "A - B instead of B - A": lambda a, b: solutions.difference_layer(b, a),
})
RANK_FOR = Exercise("rank_for", check_rank_for, solutions.rank_for, wrong={
    "singular values instead of their squares": _rank_unsquared,
    "the squared error compared with the tolerance": _rank_no_root,
    "one rank more than needed": lambda delta, tolerance: solutions.rank_for(delta, tolerance) + 1,
})
EXERCISES = [DIFFERENCE_LAYER, RANK_FOR]
