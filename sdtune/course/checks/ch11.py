"""Chapter 11's exercises: the exact (cat) combination of LoRA layers, and the rank that keeps a fraction of the energy."""

from __future__ import annotations

import torch

from sdtune.course import check
from sdtune.course.check import Exercise
from sdtune.course.solutions import ch11 as solutions


def _layers(ranks, alphas, d_in: int = 20, d_out: int = 12, seed: int = 3) -> list[dict[str, torch.Tensor]]:
    """Random kohya-layout linear layers: lora_down A_i (r_i x d_in), lora_up B_i (d_out x r_i), alpha_i."""
    g = torch.Generator().manual_seed(seed)
    return [{"lora_down.weight": torch.randn(r, d_in, generator=g), "lora_up.weight": torch.randn(d_out, r, generator=g),
             "alpha": torch.tensor(float(a))} for r, a in zip(ranks, alphas)]


def check_cat(fn) -> bool:
    """up @ down = sum_i w_i (alpha_i / r_i) B_i A_i exactly, at rank sum_i r_i: equal ranks, unequal ranks with
    alpha != r, negative weights (a difference of LoRAs), three layers."""
    ok = True
    for ranks, alphas, weights in (((8, 8), (8.0, 8.0), [1.0, 1.0]), ((4, 2), (8.0, 1.0), [0.7, -0.4]),
                                   ((3, 5, 2), (3.0, 2.5, 4.0), [1.0, 0.5, -1.5])):
        layers = _layers(ranks, alphas)
        up, down = fn(layers, weights)
        target = sum(w * float(l["alpha"]) / l["lora_down.weight"].shape[0] * l["lora_up.weight"] @ l["lora_down.weight"]
                     for w, l in zip(weights, layers))
        if not isinstance(up, torch.Tensor) or not isinstance(down, torch.Tensor) or up.dim() != 2 or down.dim() != 2:
            print(f"✗ ranks {list(ranks)}: return two matrices (up, down).")
            return False
        if down.shape[0] != sum(ranks) or up.shape[1] != sum(ranks):
            print(f"✗ ranks {list(ranks)}: the rank should be {sum(ranks)} (up {tuple(up.shape)}, down {tuple(down.shape)}).")
            return False
        ok &= check.close(up @ down, target, name=f"ranks {list(ranks)}, weights {weights}: up @ down vs sum w_i (alpha_i/r_i) B_i A_i",
                          atol=1e-4)
    return ok


def check_energy(fn) -> bool:
    """The smallest k whose sigma_1^2 + ... + sigma_k^2 reaches the fraction of the total, on spectra done by hand."""
    ok = True
    for spectrum, fraction, expected in (([3.0, 2.0, 1.0], 0.99, 3), ([3.0, 2.0, 1.0], 0.9, 2), ([3.0, 2.0, 1.0], 0.6, 1),
                                         ([1.0, 1.0, 1.0, 1.0], 0.5, 2), ([5.0, 0.0, 0.0], 0.99, 1), ([2.0, 1.0, 1.0], 0.75, 2)):
        got = fn(torch.tensor(spectrum), fraction)
        if got != expected:
            print(f"✗ rank_for_energy({spectrum}, {fraction}): expected {expected}, got {got}.")
            ok = False
    if ok:
        print("✓ rank_for_energy: all six spectra")
    return ok


def _cat_scaled_twice(layers, weights):
    """The weight and alpha / r on both factors: the scale acts squared (kohya's merge_lora.py without --concat)."""
    ups, downs = [], []
    for w, l in zip(weights, layers):
        s = w * float(l["alpha"]) / l["lora_down.weight"].shape[0]
        ups.append(s * l["lora_up.weight"])
        downs.append(s * l["lora_down.weight"])
    return torch.cat(ups, dim=1), torch.cat(downs, dim=0)


def _cat_without_alpha(layers, weights):
    """Forgets alpha / r: right only where alpha = r."""
    return (torch.cat([w * l["lora_up.weight"] for w, l in zip(weights, layers)], dim=1),
            torch.cat([l["lora_down.weight"] for l in layers], dim=0))


def _linear(layers, weights):
    """Adds the factors (peft's 'linear'): rank r, and the cross terms B_1 A_2 + B_2 A_1."""
    ranks = {l["lora_down.weight"].shape[0] for l in layers}
    if len(ranks) > 1:
        raise ValueError("linear needs equal ranks")
    c = [(abs(w) * float(l["alpha"]) / l["lora_down.weight"].shape[0]) ** 0.5 for w, l in zip(weights, layers)]
    return sum(ci * l["lora_up.weight"] for ci, l in zip(c, layers)), sum(ci * l["lora_down.weight"] for ci, l in zip(c, layers))


def _energy_of_sigma(singular_values, fraction=0.99):
    """Sums the singular values instead of their squares."""
    s = singular_values.double()
    return int((s.cumsum(0) < fraction * s.sum()).sum()) + 1


def _energy_one_short(singular_values, fraction=0.99):
    """Counts the singular values before the threshold is reached, not the one that reaches it."""
    e = singular_values.double().pow(2)
    return int((e.cumsum(0) < fraction * e.sum()).sum())


CAT_COMBINE = Exercise("cat_combine", check_cat, solutions.cat_combine, wrong={
    "the scale on both factors (it acts squared)": _cat_scaled_twice,
    "alpha / r left out": _cat_without_alpha,
    "the factors added (linear), not stacked": _linear,
})
RANK_FOR_ENERGY = Exercise("rank_for_energy", check_energy, solutions.rank_for_energy, wrong={
    "singular values summed, not squared": _energy_of_sigma,
    "one short of the value that reaches the fraction": _energy_one_short,
})
EXERCISES = [CAT_COMBINE, RANK_FOR_ENERGY]
