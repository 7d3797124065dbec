"""Chapter 05's exercises: LoHa's parameter count, the shape of a Kronecker product, and LoKr's product without torch.kron."""

from __future__ import annotations

import torch
from torch import nn

from sdtune.course import check
from sdtune.course.check import Exercise
from sdtune.course.solutions import ch05 as solutions
from sdtune.formats.adapters import add_adapter
from sdtune.methods import adapter_config


def peft_count(kind: str, layer: nn.Module, rank: int) -> int:
    """Trainable parameters of one adapter kind on one layer, counted by peft: a Linear named to_q or a Conv2d named conv1."""
    holder = nn.Module()
    setattr(holder, "to_q" if isinstance(layer, nn.Linear) else "conv1", layer)
    holder.requires_grad_(False)
    add_adapter(holder, adapter_config(kind, rank, rank, "attn-mlp-conv"), "count")  # the preset names both layers
    return sum(p.numel() for p in holder.parameters() if p.requires_grad)


def check_loha_parameter_count(fn) -> bool:
    """Against peft's LoHa on linear layers (square and not) and on a 3x3 convolution (d_in = channels x 9)."""
    ok = True
    for d_out, d_in, r in [(320, 320, 8), (64, 128, 4), (1280, 768, 16)]:
        ok &= check.equal(fn(d_out, d_in, r), peft_count("loha", nn.Linear(d_in, d_out, bias=False), r),
                     f"loha_parameter_count({d_out}, {d_in}, {r}) vs peft")
    conv = peft_count("loha", nn.Conv2d(320, 320, 3, padding=1, bias=False), 8)
    return ok & check.equal(fn(320, 320 * 9, 8), conv, "loha_parameter_count(320, 320 * 9, 8) vs peft on a 3x3 conv")


def check_kron_shape(fn) -> bool:
    """Against torch.kron's own result, square and rectangular factors."""
    ok = True
    for a, b in [((16, 16), (20, 20)), ((8, 16), (16, 8)), ((1, 4), (5, 3)), ((2, 3), (7, 5))]:
        ok &= check.equal(tuple(fn(a, b)), tuple(torch.kron(torch.zeros(a), torch.zeros(b)).shape), f"kron_shape({a}, {b})")
    return ok


def check_kron(fn) -> bool:
    """Against torch.kron on rectangular factors, and rebuilding a random peft LoKr layer's dW = gamma W1 (x) W2."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, generator=g), torch.randn(4, 2, generator=g)
    ok = check.close(fn(a, b), torch.kron(a, b), name="kron(a, b) vs torch.kron")
    torch.manual_seed(0)
    holder = nn.Module()
    holder.to_q = nn.Linear(128, 128, bias=False)
    holder.requires_grad_(False)
    config = adapter_config("lokr", 4, 2.0, "attn")
    config.init_weights = False  # every factor random, so that every factor matters
    add_adapter(holder, config, "demo")
    layer = holder.to_q
    with torch.no_grad():
        w1 = layer.lokr_w1["demo"] if "demo" in layer.lokr_w1 else layer.lokr_w1_a["demo"] @ layer.lokr_w1_b["demo"]
        w2 = layer.lokr_w2["demo"] if "demo" in layer.lokr_w2 else layer.lokr_w2_a["demo"] @ layer.lokr_w2_b["demo"]
        return ok & check.close(layer.scaling["demo"] * fn(w1, w2), layer.get_delta_weight("demo"),
                                name="gamma * kron(W1, W2) vs peft's LoKr dW on a 128 x 128 layer")


def _kron_unpermuted(a, b):
    p, q = a.shape
    p2, q2 = b.shape
    return (a[:, :, None, None] * b[None, None, :, :]).reshape(p * p2, q * q2)  # (i, j, k, l) read as (i, k, j, l)


LOHA_PARAMETER_COUNT = Exercise("loha_parameter_count", check_loha_parameter_count, solutions.loha_parameter_count, wrong={
    "LoRA's count, one pair": lambda d_out, d_in, r: r * (d_in + d_out),
    "r squared, the rank it reaches": lambda d_out, d_in, r: r * r * (d_in + d_out),
    "the two full products W1a W1b and W2a W2b counted": lambda d_out, d_in, r: 2 * d_out * d_in,
})
KRON_SHAPE = Exercise("kron_shape", check_kron_shape, solutions.kron_shape, wrong={
    "sides added": lambda w1, w2: (w1[0] + w2[0], w1[1] + w2[1]),
    "each factor's own entries multiplied": lambda w1, w2: (w1[0] * w1[1], w2[0] * w2[1]),
})
KRON = Exercise("kron", check_kron, solutions.kron, wrong={
    "the factors in the other order": lambda a, b: torch.kron(b, a),
    "reshaped without bringing the axes in order": _kron_unpermuted,
})
EXERCISES = [LOHA_PARAMETER_COUNT, KRON_SHAPE, KRON]
