"""B-LoRA (Frenkel et al. 2024): content and style live in different blocks of SDXL's UNet.

Probing SDXL's UNet, B-LoRA found two transformer blocks that, trained jointly on ONE image, separate it:

    up_blocks.0.attentions.0  ->  content (what is drawn: the object and its shape)
    up_blocks.0.attentions.1  ->  style   (how it is drawn: colours, texture, strokes)

So a LoRA restricted to these two blocks (`TrainConfig(blocks=",".join(SDXL_BLOCKS.values()))`) can afterwards be
split by block: its content part alone re-draws the object in any style the prompt asks for, its style part
alone paints any prompt in the image's style, and the content part of one image's B-LoRA with the style
part of another's draws the first image's object in the second's style. No new training method is needed,
only a choice of where the LoRA lives and a way to cut it apart (here, on kohya-layout tensors).
"""

from __future__ import annotations

import torch

from ..formats.kohya import PREFIXES, group_kohya_layers, kohya_layer_name

SDXL_BLOCKS = {"content": "up_blocks.0.attentions.0", "style": "up_blocks.0.attentions.1"}


def block_part(tensors: dict[str, torch.Tensor], block: str) -> dict[str, torch.Tensor]:
    """The layers of a kohya-layout LoRA that lie inside one UNet block (e.g. up_blocks.0.attentions.0)."""
    prefix = kohya_layer_name(PREFIXES["unet"], block) + "_"
    part = {k: v for k, v in tensors.items() if k.startswith(prefix)}
    if not part:
        layers = sorted(group_kohya_layers(tensors))
        raise ValueError(f"The LoRA has no layer in {block} (its layers: {', '.join(layers[:3])}, ...): "
                         "was it trained with --blocks naming this block?")
    return part


def recombine(content_from: dict[str, torch.Tensor], style_from: dict[str, torch.Tensor],
              content_block: str = SDXL_BLOCKS["content"], style_block: str = SDXL_BLOCKS["style"]) -> dict[str, torch.Tensor]:
    """One LoRA: the content block of the first B-LoRA and the style block of the second."""
    return block_part(content_from, content_block) | block_part(style_from, style_block)
