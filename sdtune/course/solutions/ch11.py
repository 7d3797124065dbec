"""Chapter 11 exercises: the exact (cat) combination of LoRA layers, and the rank that keeps a fraction of the energy."""

import torch


def cat_combine(layers: list[dict[str, torch.Tensor]], weights: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the factors: up = [w_1 (alpha_1/r_1) B_1, w_2 (alpha_2/r_2) B_2, ...] side by side, down = [A_1; A_2; ...]
    on top of each other. Block multiplication gives up @ down = sum_i w_i (alpha_i/r_i) B_i A_i, of rank sum_i r_i.
    The weight and the scale go on one factor only (here B), so a negative weight flips the sign once."""
    ups, downs = [], []
    for w, layer in zip(weights, layers):
        down, up = layer["lora_down.weight"].float(), layer["lora_up.weight"].float()
        scale = float(layer["alpha"]) / down.shape[0] if "alpha" in layer else 1.0
        ups.append(w * scale * up)
        downs.append(down)
    return torch.cat(ups, dim=1), torch.cat(downs, dim=0)


def rank_for_energy(singular_values: torch.Tensor, fraction: float = 0.99) -> int:
    """The smallest k with sigma_1^2 + ... + sigma_k^2 >= fraction * sum_j sigma_j^2 (singular values sorted, largest
    first). By Eckart-Young the relative error of the best rank-k approximation is then at most sqrt(1 - fraction)."""
    energy = singular_values.double().pow(2)
    cumulative = energy.cumsum(0)
    return int((cumulative < fraction * energy.sum()).sum()) + 1
