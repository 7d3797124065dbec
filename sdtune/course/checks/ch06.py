"""Chapter 06's exercises: (IA)3 on a feed-forward layer, and BitFit."""

from __future__ import annotations

import copy

import torch
from peft import IA3Config, inject_adapter_in_model
from torch import nn

from sdtune.course import check
from sdtune.course.check import Exercise
from sdtune.course.solutions import ch06 as solutions


class _FeedForward(nn.Module):
    """A transformer block's MLP as diffusers names it: ff.net.0.proj (12 -> 16), then ff.net.2 (16 -> 12)."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(12, 16)
        self.ff = nn.Linear(16, 12)


def check_ia3_feedforward(fn) -> bool:
    """Against peft's (IA)3 layer on a feed-forward layer (random l, so that the test means something), and l = 1."""
    torch.manual_seed(0)
    plain = _FeedForward()
    ia3 = inject_adapter_in_model(IA3Config(target_modules=["ff"], feedforward_modules=["ff"]), copy.deepcopy(plain))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ia3.ff.ia3_l["default"].copy_(torch.rand(ia3.ff.ia3_l["default"].shape, generator=g) + 0.5)
        l, x = ia3.ff.ia3_l["default"].flatten(), torch.randn(5, 16, generator=g)
        ok = check.close(fn(plain.ff, x, l), ia3.ff(x), name="ia3_feedforward vs peft's (IA)3 layer")
        return ok & check.close(fn(plain.ff, x, torch.ones(16)), plain.ff(x), name="l = 1 gives the frozen layer")


class _Block(nn.Module):
    """Weights, biases, a norm and a bias-free layer: what BitFit must tell apart."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.GroupNorm(2, 8)
        self.proj = nn.Linear(8, 8, bias=False)
        self.out = nn.Linear(8, 4)


def check_freeze_all_but_biases(fn) -> bool:
    """On a block with convolution, norm and linear layers (one without a bias): the returned count, and that exactly
    the biases train."""
    block = _Block().requires_grad_(True)
    returned = fn(block)
    biases = {n for n, _ in block.named_parameters() if n.endswith("bias")}
    expected = sum(p.numel() for n, p in block.named_parameters() if n in biases)
    training = {n for n, p in block.named_parameters() if p.requires_grad}
    good = returned == expected and training == biases
    print(f"{'✓' if good else '✗'} freeze_all_but_biases: returned {returned!r} (biases hold {expected}); training "
          f"{sorted(training)}, biases {sorted(biases)}")
    return good


def _freeze_but_norms_too(module):
    for name, p in module.named_parameters():
        p.requires_grad_(name.endswith("bias") or "norm" in name)
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _count_tensors(module):
    for name, p in module.named_parameters():
        p.requires_grad_(name.endswith("bias"))
    return sum(1 for p in module.parameters() if p.requires_grad)


def _count_all(module):
    for name, p in module.named_parameters():
        p.requires_grad_(name.endswith("bias"))
    return sum(p.numel() for p in module.parameters())


IA3_FEEDFORWARD = Exercise("ia3_feedforward", check_ia3_feedforward, solutions.ia3_feedforward, wrong={
    "the output rescaled, as for keys and values": lambda layer, x, l: l * layer(x),
    "the bias dropped": lambda layer, x, l: nn.functional.linear(l * x, layer.weight),
})
FREEZE_ALL_BUT_BIASES = Exercise("freeze_all_but_biases", check_freeze_all_but_biases, solutions.freeze_all_but_biases, wrong={
    "the norms' weights train too": _freeze_but_norms_too,
    "tensors counted instead of numbers": _count_tensors,
    "every parameter counted": _count_all,
})
EXERCISES = [IA3_FEEDFORWARD, FREEZE_ALL_BUT_BIASES]
