"""Chapter 09 exercises: a hypernetwork's parameter count, and that of a LoRA on the layers it feeds."""

from torch import nn


def hypernetwork_parameter_count(d: int, structure: list[float]) -> int:
    """Each MLP maps d -> int(d s_1) -> ... -> d with a bias per layer: sum of (a b + b) over consecutive widths a, b.
    There are two, one for the keys and one for the values: SD 1.5's 768-wide context with 1,2,1 gives
    2 (768 * 1536 + 1536 + 1536 * 768 + 768) = 4,723,200."""
    widths = [int(d * s) for s in structure]
    return 2 * sum(a * b + b for a, b in zip(widths, widths[1:]))


def kv_lora_parameter_count(unet: nn.Module, r: int) -> int:
    """r (d_in + d_out) for attn2.to_k and attn2.to_v of every cross-attention layer (works on a meta-device UNet too)."""
    return sum(r * (m.in_features + m.out_features) for name, m in unet.named_modules()
               if isinstance(m, nn.Linear) and name.endswith(("attn2.to_k", "attn2.to_v")))
