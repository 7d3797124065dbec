"""Chapter 14's exercises: scale one block's part of a B-LoRA, and count what B-LoRA trains."""

from __future__ import annotations

import functools
import types

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from sdtune.algebra import layer_delta
from sdtune.course.check import Exercise
from sdtune.course.solutions import ch14 as solutions
from sdtune.formats.adapters import add_adapter, remove_adapter
from sdtune.formats.kohya import group_kohya_layers
from sdtune.methods import adapter_config
from sdtune.methods.blora import SDXL_BLOCKS, block_part

CONTENT, STYLE = SDXL_BLOCKS["content"], SDXL_BLOCKS["style"]


@functools.lru_cache(maxsize=1)
def tiny_sdxl_unet() -> UNet2DConditionModel:
    """SDXL's wiring at toy size (tests/test_sdxl.py's UNet): its first decoder block has SDXL's two B-LoRA blocks."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 32,
        norm_num_groups=8).eval()


def blora_tensors(rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random kohya-layout LoRA with layers in both B-LoRA blocks and one other block (so a part is a real cut)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for block in (CONTENT, STYLE, "down_blocks.1.attentions.0"):
        for projection in ("attn1_to_q", "attn2_to_k", "attn2_to_out_0"):
            name = f"lora_unet_{block.replace('.', '_')}_transformer_blocks_0_{projection}"
            tensors[f"{name}.lora_down.weight"] = torch.randn(rank, 16, generator=g)
            tensors[f"{name}.lora_up.weight"] = torch.randn(24, rank, generator=g)
            tensors[f"{name}.alpha"] = torch.tensor(float(rank) / 2)  # alpha / r = 1/2: a missing alpha shows
    return tensors


def check_scale_part(fn) -> bool:
    """Every layer of the block, and only those, with dW = (alpha / r) up @ down multiplied by s (not s^2)."""
    tensors = blora_tensors()
    for block, s in ((STYLE, 0.5), (CONTENT, 1.7)):
        part, scaled = block_part(tensors, block), fn(tensors, block, s)
        if not isinstance(scaled, dict) or set(scaled) != set(part):
            got = len(scaled) if isinstance(scaled, dict) else type(scaled).__name__
            print(f"✗ scale_part(..., {block}, {s}): expected exactly the {len(part)} tensors of the block, got {got}.")
            return False
        for name, layer in group_kohya_layers(part).items():
            got, want = layer_delta(group_kohya_layers(scaled)[name]), s * layer_delta(layer)
            if torch.allclose(got, s * want, atol=1e-5):
                print(f"✗ {name}: the update is scaled by s^2 = {s * s:.2f}: scale one factor (or alpha), not both.")
                return False
            if not torch.allclose(got, want, atol=1e-5):
                ratio = (got.norm() / layer_delta(layer).norm()).item()
                print(f"✗ {name}: the update is {ratio:.3g} x the original, expected {s}.")
                return False
        print(f"✓ scale_part(..., {block}, {s}): every layer's update is {s} x the original, no other block included")
    return True


def peft_count(blocks: list[str], rank: int) -> int:
    """What peft trains: a rank-`rank` LoRA on the attention projections of `blocks` of the tiny SDXL UNet."""
    unet = tiny_sdxl_unet()
    add_adapter(unet, adapter_config("lora", rank, float(rank), "attn", "unet", blocks), "count")
    try:
        return sum(p.numel() for name, p in unet.named_parameters() if ".count." in name)
    finally:  # the original layers back, so that the learner's function sees plain nn.Linear layers again
        remove_adapter(types.SimpleNamespace(unet=unet), "count")


def check_blora_count(fn) -> bool:
    """The learner's count against peft's, for SDXL's pair, one block, and another block, at three ranks."""
    ok = True
    for blocks, rank in (([CONTENT, STYLE], 4), ([STYLE], 8), (["down_blocks.1.attentions.0"], 2)):
        got, want = fn(tiny_sdxl_unet(), blocks, rank), peft_count(blocks, rank)
        ok &= got == want
        print(("✓" if got == want else "✗") + f" blora_parameter_count(tiny SDXL, {blocks}, {rank}): {got:,} (peft: {want:,})")
    return ok


def _projections(unet: nn.Module, blocks: list[str], ends: tuple[str, ...]) -> list[nn.Linear]:
    return [m for name, m in unet.named_modules() if isinstance(m, nn.Linear) and name.endswith(ends)
            and any(name.startswith(b + ".") for b in blocks)]


QKVO = (".to_q", ".to_k", ".to_v", ".to_out.0")
SCALE_PART = Exercise("scale_part", check_scale_part, solutions.scale_part, wrong={
    "both factors scaled (s^2)": lambda t, b, s: {k: v * s if k.endswith("weight") else v for k, v in block_part(t, b).items()},
    "alpha and up scaled (s^2)": lambda t, b, s: {k: v * s if k.endswith((".alpha", ".lora_up.weight")) else v
                                                  for k, v in block_part(t, b).items()},
    "the whole LoRA scaled, not the block's part": lambda t, b, s: {k: v * s if k.endswith(".lora_up.weight") else v
                                                                    for k, v in t.items()},
    "divided by s": lambda t, b, s: {k: v / s if k.endswith(".lora_up.weight") else v for k, v in block_part(t, b).items()},
})
BLORA_PARAMETER_COUNT = Exercise("blora_parameter_count", check_blora_count, solutions.blora_parameter_count, wrong={
    "full matrices d_in x d_out instead of r (d_in + d_out)": lambda u, bl, r: sum(
        m.in_features * m.out_features for m in _projections(u, bl, QKVO)),
    "to_out.0 forgotten": lambda u, bl, r: sum(r * (m.in_features + m.out_features)
                                               for m in _projections(u, bl, (".to_q", ".to_k", ".to_v"))),
    "only the first block counted": lambda u, bl, r: solutions.blora_parameter_count(u, bl[:1], r),
    "r d_out only (B, not A)": lambda u, bl, r: sum(r * m.out_features for m in _projections(u, bl, QKVO)),
})
EXERCISES = [SCALE_PART, BLORA_PARAMETER_COUNT]
