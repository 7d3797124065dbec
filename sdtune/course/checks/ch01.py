"""Chapter 01's exercises: the merged LoRA update, and how many numbers a LoRA adds to one layer."""

from __future__ import annotations

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from sdtune.course import check
from sdtune.course.check import Exercise
from sdtune.course.solutions import ch01 as solutions


class _OneLinear(nn.Module):
    """One nn.Linear named `lin`, for peft to wrap."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.lin = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _peft_layer(in_features: int, out_features: int, r: int, alpha: float) -> _OneLinear:
    """A layer with peft's LoRA of rank r, B random (not zero) so that B A matters."""
    with torch.random.fork_rng():  # the same layer every time, and the caller's random stream untouched
        torch.manual_seed(0)
        holder = _OneLinear(in_features, out_features)
        inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, target_modules=["lin"], init_lora_weights=False), holder)
    return holder


def check_lora_delta(fn) -> bool:
    """dW = (alpha / r) B A: a product worked out by hand, then W + dW reproduces peft's adapted layer."""
    A = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])  # r = 2, in = 3
    B = torch.tensor([[1.0, 1.0], [2.0, 0.0]])  # out = 2, r = 2
    by_hand = torch.tensor([[2.0, 2.0, 6.0], [4.0, 0.0, 8.0]])  # (4 / 2) * B A, multiplied out on paper
    ok = check.close(fn(A, B, 4.0, 2), by_hand, name="lora_delta(A, B, alpha=4, r=2), worked by hand")
    holder = _peft_layer(16, 12, r=4, alpha=8)
    layer = holder.lin
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        w = layer.base_layer.weight + fn(layer.lora_A["default"].weight, layer.lora_B["default"].weight, 8, 4)
        ok &= check.close(x @ w.T + layer.base_layer.bias, holder(x), name="x (W + lora_delta)^T + b vs peft's layer", atol=1e-5)
    return ok


def _peft_count(in_features: int, out_features: int, r: int) -> int:
    holder = _peft_layer(in_features, out_features, r=r, alpha=r)
    return sum(p.numel() for n, p in holder.named_parameters() if "lora_" in n)


def check_lora_parameter_count(fn) -> bool:
    """r (in + out), asked of peft on three layer sizes (square and not)."""
    sizes = [(320, 320, 8), (768, 320, 4), (16, 12, 4)]
    ours = torch.tensor([float(fn(i, o, r)) for i, o, r in sizes])
    theirs = torch.tensor([float(_peft_count(i, o, r)) for i, o, r in sizes])
    return check.close(ours, theirs, name=f"lora_parameter_count on {sizes} vs peft", atol=0.5)


LORA_DELTA = Exercise("lora_delta", check_lora_delta, solutions.lora_delta, wrong={
    "without the alpha / r scale": lambda A, B, alpha, r: B @ A,
    "the scale upside down, r / alpha": lambda A, B, alpha, r: (r / alpha) * B @ A,
    "A^T B^T: the transposed update": lambda A, B, alpha, r: (alpha / r) * A.T @ B.T,
})
LORA_PARAMETER_COUNT = Exercise("lora_parameter_count", check_lora_parameter_count, solutions.lora_parameter_count, wrong={
    "the layer's own size, in x out": lambda i, o, r: i * o,
    "A alone, r x in": lambda i, o, r: r * i,
    "two square factors, 2 r max(in, out)": lambda i, o, r: 2 * r * max(i, o),
})
EXERCISES = [LORA_DELTA, LORA_PARAMETER_COUNT]
