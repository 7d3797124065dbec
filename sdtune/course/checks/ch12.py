"""Chapter 12's exercises: the weight a fused LoRA layer holds, and how a LoRA's update is spread over the UNet."""

from __future__ import annotations

import torch

from sdtune.algebra import layer_delta
from sdtune.course import check
from sdtune.course.check import Exercise
from sdtune.course.solutions import ch12 as solutions
from sdtune.formats.kohya import group_kohya_layers


def _layers(seed: int = 0) -> dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """A linear layer and a LoCon 3x3 convolution: the base weight W0 and kohya tensors with alpha / r = 3/4 (not 1)."""
    g = torch.Generator().manual_seed(seed)
    r = 4
    linear = (torch.randn(24, 16, generator=g),
              {"lora_down.weight": torch.randn(r, 16, generator=g), "lora_up.weight": torch.randn(24, r, generator=g),
               "alpha": torch.tensor(3.0)})
    conv = (torch.randn(8, 6, 3, 3, generator=g),
            {"lora_down.weight": torch.randn(r, 6, 3, 3, generator=g), "lora_up.weight": torch.randn(8, r, 1, 1, generator=g),
             "alpha": torch.tensor(3.0)})
    return {"linear": linear, "LoCon conv 3x3": conv}


def check_fused_weight(fn) -> bool:
    """W0 + s (alpha / r) up @ down against sdtune's layer_delta, for a linear layer and a convolution, at two scales."""
    ok = True
    for kind, (W0, layer) in _layers().items():
        for s in (1.0, 0.6):
            expected = W0 + s * layer_delta(layer).reshape(W0.shape)
            got = fn(W0, layer["lora_down.weight"], layer["lora_up.weight"], float(layer["alpha"]), s)
            ok &= check.close(got, expected, name=f"fused_weight, {kind}, s = {s}")
    return ok


def _lora(seed: int = 1) -> dict[str, torch.Tensor]:
    """A kohya LoRA with layers in the down, mid and up blocks, of different sizes and alphas."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, (name, alpha) in enumerate((("down_blocks_0_attentions_0_proj_in", 2.0), ("down_blocks_1_resnets_0_conv1", 8.0),
                                       ("mid_block_attentions_0_proj_out", 4.0), ("up_blocks_1_attentions_1_to_k", 1.0),
                                       ("up_blocks_2_resnets_0_conv2", 4.0))):
        key = f"lora_unet_{name}"
        conv = "conv" in name
        tensors[f"{key}.lora_down.weight"] = torch.randn(*((4, 8, 3, 3) if conv else (4, 8)), generator=g) * (i + 1)
        tensors[f"{key}.lora_up.weight"] = torch.randn(*((12, 4, 1, 1) if conv else (12, 4)), generator=g)
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
    return tensors


def reference_shares(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each part's share of sum ||dW||_F^2, with sdtune's own layer_delta."""
    energy = {"down": 0.0, "mid": 0.0, "up": 0.0}
    for name, layer in group_kohya_layers(tensors).items():
        part = "down" if "_down_blocks_" in name else "mid" if "_mid_block_" in name else "up"
        energy[part] += float(layer_delta(layer).pow(2).sum())
    return {p: v / sum(energy.values()) for p, v in energy.items()}


def check_block_shares(fn) -> bool:
    tensors = _lora()
    mine, reference = fn(tensors), reference_shares(tensors)
    if not isinstance(mine, dict) or set(mine) != set(reference):
        print(f"✗ block_shares: expected a dict with keys {sorted(reference)}, got {mine!r}.")
        return False
    return check.close(torch.tensor([float(mine[p]) for p in reference]), torch.tensor(list(reference.values())),
                       name="block_shares (down, mid, up) vs sdtune.algebra.layer_delta")


def _shares(tensors: dict[str, torch.Tensor], power: float = 2.0, alpha: bool = True, normalise: bool = True) -> dict[str, float]:
    energy = {"down": 0.0, "mid": 0.0, "up": 0.0}
    for name, layer in group_kohya_layers(tensors).items():
        part = "down" if "_down_blocks_" in name else "mid" if "_mid_block_" in name else "up"
        delta = layer_delta(layer) if alpha else layer["lora_up.weight"].flatten(1) @ layer["lora_down.weight"].flatten(1)
        energy[part] += float(delta.norm()) ** power
    total = sum(energy.values()) if normalise else 1.0
    return {p: v / total for p, v in energy.items()}


FUSED_WEIGHT = Exercise("fused_weight", check_fused_weight, solutions.fused_weight, wrong={
    "alpha / r left out": lambda W0, down, up, alpha, s: solutions.fused_weight(W0, down, up, float(down.shape[0]), s),
    "the scale left out": lambda W0, down, up, alpha, s: solutions.fused_weight(W0, down, up, alpha, 1.0),
    "the scale applied twice (s^2)": lambda W0, down, up, alpha, s: solutions.fused_weight(W0, down, up, alpha * s, s),
    "the update alone, without W0": lambda W0, down, up, alpha, s: solutions.fused_weight(torch.zeros_like(W0), down, up, alpha, s),
})
BLOCK_SHARES = Exercise("block_shares", check_block_shares, solutions.block_shares, wrong={
    "Frobenius norms instead of their squares": lambda t: _shares(t, power=1.0),
    "alpha / r left out": lambda t: _shares(t, alpha=False),
    "not normalised to sum to 1": lambda t: _shares(t, normalise=False),
})
EXERCISES = [FUSED_WEIGHT, BLOCK_SHARES]
