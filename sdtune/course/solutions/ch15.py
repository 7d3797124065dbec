"""Chapter 15 exercises: the exact difference of two kohya LoRA layers, and the smallest SVD rank within an error."""

import torch


def difference_layer(layer_a: dict, layer_b: dict) -> dict:
    """dW_B - dW_A = [g_B B_B, -g_A B_A] [A_B; A_A] with g = alpha / r: a layer of rank r_A + r_B whose own
    alpha equals its rank (g = 1), since the scales already sit in the up factor. Convolutions: flattened, as kohya."""
    ups, downs = [], []
    for layer, sign in ((layer_b, 1.0), (layer_a, -1.0)):
        down, up = layer["lora_down.weight"].float(), layer["lora_up.weight"].float()
        g = float(layer["alpha"]) / down.shape[0] if "alpha" in layer else 1.0
        ups.append(sign * g * up)
        downs.append(down)
    down = torch.cat(downs, dim=0)
    return {"lora_down.weight": down, "lora_up.weight": torch.cat(ups, dim=1), "alpha": torch.tensor(float(down.shape[0]))}


def rank_for(delta: torch.Tensor, tolerance: float) -> int:
    """Smallest k with sqrt(sum_{i>k} s_i^2 / sum_i s_i^2) <= tolerance (Eckart-Young: the best rank-k error)."""
    s2 = torch.linalg.svdvals(delta.flatten(1).float()).pow(2)
    total = s2.sum().clamp_min(1e-30)
    for k in range(1, s2.numel() + 1):
        if (s2[k:].sum() / total).sqrt().item() <= tolerance:
            return k
    return s2.numel()
