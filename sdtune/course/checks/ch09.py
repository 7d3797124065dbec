"""Chapter 09's exercises: a hypernetwork's parameter count, and that of a LoRA on the layers it feeds."""

from __future__ import annotations

import copy
import functools

from torch import nn

from sdtune.course import check
from sdtune.course.check import Exercise
from sdtune.course.solutions import ch09 as solutions
from sdtune.io import ASSETS
from sdtune.methods import hypernetwork as hypernet


def check_hypernetwork_count(fn) -> bool:
    """Against sdtune's own modules: SD 1.5's 768-wide context with 1,2,1, the tiny model's 128, and other structures."""
    ok = True
    for d, structure in ((768, [1, 2, 1]), (128, [1, 2, 1]), (1024, [1, 4, 1]), (768, [1, 1.5, 2, 1])):
        modules = hypernet.Hypernetwork([d], structure)
        ok &= check.equal(fn(d, structure), sum(p.numel() for p in modules.parameters()),
                     f"hypernetwork_parameter_count({d}, {structure}) vs sdtune")
    return ok


@functools.lru_cache(maxsize=1)
def tiny_unet() -> nn.Module:
    """The tiny model's UNet, read from the package."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(ASSETS / "tiny-sd", subfolder="unet").requires_grad_(False)


def peft_kv_count(r: int) -> int:
    """What peft trains for a rank-r LoRA on attn2.to_k and attn2.to_v of the tiny UNet."""
    from peft import LoraConfig, inject_adapter_in_model

    unet = inject_adapter_in_model(LoraConfig(r=r, target_modules=r".*attn2\.to_[kv]$"), copy.deepcopy(tiny_unet()))
    return sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)


def check_kv_lora(fn) -> bool:
    ok = check.equal(fn(tiny_unet(), 4), peft_kv_count(4), "kv_lora_parameter_count(tiny UNet, 4) vs peft")
    return ok & check.equal(fn(tiny_unet(), 16), peft_kv_count(16), "kv_lora_parameter_count(tiny UNet, 16) vs peft")


def _one_mlp(d, structure):
    return solutions.hypernetwork_parameter_count(d, structure) // 2


def _no_biases(d, structure):
    widths = [int(d * s) for s in structure]
    return 2 * sum(a * b for a, b in zip(widths, widths[1:]))


def _kv_every_attention(unet, r):  # self-attention's to_k and to_v too
    return sum(r * (m.in_features + m.out_features) for name, m in unet.named_modules()
               if isinstance(m, nn.Linear) and name.endswith(("to_k", "to_v")))


def _kv_a_only(unet, r):  # A (r x d_in) without B
    return sum(r * m.in_features for name, m in unet.named_modules()
               if isinstance(m, nn.Linear) and name.endswith(("attn2.to_k", "attn2.to_v")))


HYPERNETWORK_PARAMETER_COUNT = Exercise("hypernetwork_parameter_count", check_hypernetwork_count,
                                        solutions.hypernetwork_parameter_count, wrong={
    "one MLP (keys and values share it)": _one_mlp,
    "weights without biases": _no_biases,
    "the structure's multipliers as widths (d forgotten)": lambda d, structure: solutions.hypernetwork_parameter_count(1, structure),
})
KV_LORA_PARAMETER_COUNT = Exercise("kv_lora_parameter_count", check_kv_lora, solutions.kv_lora_parameter_count, wrong={
    "self-attention's K and V too": _kv_every_attention,
    "A without B (r x d_in)": _kv_a_only,
    "r x d_in x d_out (a full matrix per rank)": lambda unet, r: sum(
        r * m.in_features * m.out_features for name, m in unet.named_modules()
        if isinstance(m, nn.Linear) and name.endswith(("attn2.to_k", "attn2.to_v"))),
})
EXERCISES = [HYPERNETWORK_PARAMETER_COUNT, KV_LORA_PARAMETER_COUNT]
