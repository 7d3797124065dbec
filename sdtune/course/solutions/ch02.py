"""Chapter 02 exercises: AdamW's memory, the energy of a weight update's top singular directions, and
extracting a LoRA from a full fine-tune."""

import torch


def adamw_state_bytes(params: list[torch.Tensor]) -> int:
    """AdamW keeps two moments (m and v) per trainable number, each with the parameter's shape and dtype."""
    return sum(2 * p.numel() * p.element_size() for p in params)


def energy_in_top(delta: torch.Tensor, r: int) -> float:
    """Fraction of ||delta||_F^2 in the r largest singular values: sum_{i<=r} s_i^2 / sum_i s_i^2."""
    s2 = torch.linalg.svdvals(delta.double()).pow(2)
    return (s2[:r].sum() / s2.sum()).item()


def extract_lora(delta: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with B A the best rank-r approximation of delta (Eckart-Young), Sigma split evenly between them."""
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    root = S[:r].sqrt()
    return U[:, :r] * root, root[:, None] * Vh[:r]
