"""Where in the UNet does a LoRA hold its concept? Switch it off in one block at a time, and cut it by block.

    update = deltas(pipe.unet, kohya_tensors)             # {module path: dW}
    with fused(pipe.unet, update, off=["up_blocks.1.attentions.1"]):
        images = sdtune.sample(pipe, prompts)              # the LoRA everywhere but in that block
    heat = probe(pipe, judge, update, "shape", "star", prompts)   # score with each block group off
    loss = losses(heat)                                    # 1 - score(without group) / score(full LoRA)

Adding dW into the weights is what `load_adapter` + `sdtune.algebra.set_block_scales` compute (chapter 14 checks
it), at the base model's sampling speed: a loaded LoCon runs its B A branch beside every layer even at scale 0.
The score is the judge's mean probability for the concept's value, finer than k of n on a few images.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator, Sequence

import torch

from ..algebra import layer_delta
from ..formats.kohya import group_kohya_layers, kohya_layer_name
from ..methods.blora import block_part
from ..sampling import sample
from .judge import Judge

ATTENTION_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.\d+\.attentions\.\d+$|^mid_block\.attentions\.0$")


def attention_blocks(unet) -> list[str]:
    """Every attention block of a UNet (SD 1.x, SDXL and the tiny model alike), encoder to decoder."""
    return [name for name, _ in unet.named_modules() if ATTENTION_BLOCK.match(name)]


def block_groups(unet) -> dict[str, list[str]]:
    """The probe's rows: each attention block alone, and every convolution (ResNets, down- and upsamplers) as one."""
    convolutions = [n for n, _ in unet.named_modules() if n.endswith(("resnets", "downsamplers", "upsamplers"))]
    return {b: [b] for b in attention_blocks(unet)} | {"convolutions": convolutions}


def deltas(unet, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A kohya-layout LoRA as {UNet module path: dW = (alpha / r) up @ down}, shaped like the module's weight."""
    module_of = {kohya_layer_name("lora_unet", path): path for path, _ in unet.named_modules() if path}
    return {module_of[name]: layer_delta(layer) for name, layer in group_kohya_layers(tensors).items()}


@contextlib.contextmanager
def fused(unet, *updates: dict[str, torch.Tensor], off: Sequence[str] = ()) -> Iterator[None]:
    """The UNet with every update added to its weights (W + dW), except in the modules under `off`; restored after."""
    saved: dict[str, torch.Tensor] = {}
    for update in updates:
        for path, dW in update.items():
            if not any(path.startswith(block + ".") for block in off):
                weight = unet.get_submodule(path).weight
                saved.setdefault(path, weight.detach().clone())
                weight.data += dW.to(weight.dtype)
    try:
        yield
    finally:
        for path, weight in saved.items():
            unet.get_submodule(path).weight.data = weight


def concept_score(judge: Judge, images, attribute: str, value: str) -> tuple[float, float]:
    """(score, presence): the judge's mean probability for `value`, and the share of images in which it names it
    (`judge.name`: its most probable value, where that probability reaches the judge's `sure`)."""
    p = {attribute: judge.probabilities(images)[attribute]}
    named = judge.name(p)[attribute]
    score = p[attribute][:, judge.attributes[attribute].index(value)].mean().item()
    return score, sum(v == value for v in named) / len(named)


def probe(pipe, judge: Judge, update: dict[str, torch.Tensor], attribute: str, value: str, prompts: list[str],
          steps: int, groups: dict[str, list[str]] | None = None) -> dict[str, tuple[float, float]]:
    """(score, presence) of the concept for the base model, the full LoRA, and the LoRA off in each block group."""
    groups = groups or block_groups(pipe.unet)
    heat = {"base": concept_score(judge, sample(pipe, prompts, steps), attribute, value)}
    for group, off in [("full", [])] + list(groups.items()):
        with fused(pipe.unet, update, off=off):
            heat[group] = concept_score(judge, sample(pipe, prompts, steps), attribute, value)
    return heat


def losses(heat: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Per block group, the share of the full LoRA's score that goes without it: 1 - score(without) / score(full)."""
    return {g: 1 - s / heat["full"][0] for g, (s, _) in heat.items() if g not in ("base", "full")}


def cut(tensors: dict[str, dict[str, torch.Tensor]], owner: dict[str, str], groups: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """One kohya LoRA from several: for every block group, the layers of the LoRA (by name in `tensors`) that owns it."""
    out: dict[str, torch.Tensor] = {}
    for group, name in owner.items():
        for block in groups[group]:
            out |= block_part(tensors[name], block)
    return out
