"""Chapter 04 exercises: per-token cosine distance of prompt embeddings, and counting a text-encoder LoRA."""

import torch


def cosine_distance_per_token(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a_i, b_i) for each row i of two (L, d) embeddings."""
    return 1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def te_lora_parameter_count(n_layers: int, width: int, r: int, mlp_width: int | None = None) -> int:
    """r (in + out) for q, k, v, out (width x width) in every layer; with mlp_width also fc1 and fc2."""
    per_layer = 4 * r * (width + width)
    if mlp_width is not None:
        per_layer += 2 * r * (width + mlp_width)
    return n_layers * per_layer
