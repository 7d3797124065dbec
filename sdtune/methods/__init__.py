"""Fine-tuning methods, one module each.

| method | module | what is trained |
|---|---|---|
| LoRA, LoCon, DoRA | `lora.py` | a low-rank update B A of chosen layers (LoCon: convolutions too; DoRA: plus a magnitude) |
| LoHa, LoKr | `lycoris.py` | a Hadamard or Kronecker product of small factors (the LyCORIS family) |
| DreamBooth | `dreambooth.py` | the whole UNet or a LoRA, on a subject plus generated class images (prior preservation) |
| Textual Inversion | `textual_inversion.py` | the embedding rows of one new token |
| Hypernetwork | `hypernetwork.py` | residual MLPs on the attention's K and V inputs |
| differential LoRA | `differential.py` | two LoRAs on paired renderings; their exact difference is the result |
| B-LoRA | `blora.py` | a LoRA in two SDXL blocks (content, style), cut apart and recombined |
| full fine-tuning | (`sdtune.training`) | every weight of the UNet |

`adapter_config(kind, ...)` returns the peft config of an adapter kind; the trainer (`sdtune.training`) adds
it to the UNet and, if asked, the text encoder.
"""

from __future__ import annotations

import re

from peft import PeftConfig

from .lora import LORA_KINDS, TARGET_PRESETS, lora_config
from .lycoris import LYCORIS_KINDS, loha_config, lokr_config

ADAPTER_KINDS = LORA_KINDS + LYCORIS_KINDS  # ("lora", "locon", "dora", "loha", "lokr")

DEFAULT_TARGETS = {"lora": "attn", "dora": "attn", "locon": "attn-mlp-conv", "loha": "attn-mlp", "lokr": "attn-mlp"}


def target_modules(preset: str, component: str) -> list[str]:
    """Module-name suffixes a preset targets in the UNet or in a CLIP text encoder."""
    if preset not in TARGET_PRESETS:
        raise ValueError(f"Unknown target preset {preset!r}: choose one of {', '.join(TARGET_PRESETS)}.")
    return TARGET_PRESETS[preset]["unet" if component == "unet" else "text_encoder"]


def within_blocks(suffixes: list[str], blocks: list[str]) -> str:
    """A peft target regex: layers ending in one of `suffixes` inside one of the UNet `blocks` (e.g. B-LoRA's
    up_blocks.0.attentions.0, or a ResNet such as up_blocks.1.resnets.0 whose conv1 sits right under it)."""
    # The block is a lookahead, not consumed: a suffix such as downsamplers.0.conv may overlap the block's own name.
    return rf"^(?=(?:{'|'.join(map(re.escape, blocks))})\.).*\.(?:{'|'.join(map(re.escape, suffixes))})$"


def adapter_config(kind: str, rank: int, alpha: float, targets: str, component: str = "unet", blocks: list[str] | None = None,
                   lokr_factor: int = -1) -> PeftConfig:
    """The peft config of one adapter kind on one component ('unet' or 'text_encoder'), optionally only in some UNet blocks;
    `lokr_factor` is LoKr's split of each layer (see `lycoris.py`)."""
    modules = target_modules(targets, component)
    if blocks and component == "unet":
        modules = within_blocks(modules, blocks)
    if kind == "locon" and component == "text_encoder":
        kind = "lora"  # a text encoder has no convolutions: LoCon's text-encoder part is plain LoRA (as in kohya's LoCon)
    if kind in LORA_KINDS:
        return lora_config(kind, rank, alpha, modules)
    if kind == "loha":
        return loha_config(rank, alpha, modules)
    if kind == "lokr":
        return lokr_config(rank, alpha, modules, lokr_factor)
    raise ValueError(f"Unknown adapter {kind!r}: choose one of {', '.join(ADAPTER_KINDS)}, or train full.")
