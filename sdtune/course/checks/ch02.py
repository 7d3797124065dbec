"""Chapter 02's exercises: AdamW's memory, the energy of an update's top singular directions, and a LoRA extracted
from a full fine-tune."""

from __future__ import annotations

import torch
from torch import nn

from sdtune.course import check
from sdtune.course.check import Exercise
from sdtune.course.solutions import ch02 as solutions
from sdtune.formats.adapters import add_adapter
from sdtune.methods import adapter_config


def _real_adamw_bytes(params: list[torch.Tensor]) -> int:
    """What a real AdamW holds after one step: the bytes of its exp_avg and exp_avg_sq tensors."""
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer = torch.optim.AdamW(params)
    optimizer.step()
    return sum(s[k].numel() * s[k].element_size() for s in optimizer.state.values() for k in ("exp_avg", "exp_avg_sq"))


def check_adamw_state_bytes(fn) -> bool:
    """Against a real optimizer's state: every weight of a small network (float32), its bfloat16 copy (2 bytes a number),
    and a LoRA on its linear and convolution layers (only the adapter's tensors train)."""
    torch.manual_seed(0)
    ok = True
    for dtype in (torch.float32, torch.bfloat16):
        net = nn.Sequential(nn.Conv2d(4, 16, 3), nn.Flatten(), nn.Linear(16 * 6 * 6, 32), nn.Linear(32, 8)).to(dtype)
        params = list(net.parameters())
        ok &= check.equal(fn(params), _real_adamw_bytes(params), f"adamw_state_bytes, every weight of a small network, {dtype}")
    holder = nn.Module()  # layers named as in a UNet, so that the adapter preset finds them
    holder.conv1, holder.to_q = nn.Conv2d(4, 16, 3), nn.Linear(64, 32)
    holder.requires_grad_(False)
    add_adapter(holder, adapter_config("lora", 4, 4, "attn-mlp-conv"), "lora")
    params = [p for p in holder.parameters() if p.requires_grad]
    return ok & check.equal(fn(params), _real_adamw_bytes(params), "adamw_state_bytes, a LoRA's trainable tensors")


def check_energy_in_top(fn) -> bool:
    """A matrix whose singular values are 4, 3, 2, 1, 0 by construction (r = 2: (16 + 9) / 30), and a random one
    against its own SVD."""
    g = torch.Generator().manual_seed(0)
    q1, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    known = q1[:, :5] @ torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0], dtype=torch.float64)) @ q2.T
    ok = check.close(torch.tensor(float(fn(known, 2))), torch.tensor(25 / 30), name="energy_in_top, singular values 4,3,2,1,0, r=2")
    delta = torch.randn(40, 24, generator=g)
    s2 = torch.linalg.svdvals(delta.double()).pow(2)
    return ok & check.close(torch.tensor(float(fn(delta, 3))), (s2[:3].sum() / s2.sum()).float(),
                            name="energy_in_top on a random 40x24 matrix, r=3", atol=1e-5)


def check_extract_lora(fn) -> bool:
    """B (d_out x r) and A (r x d_in), and Eckart-Young: |dW - BA|_F^2 equals the sum of the discarded sigma_i^2."""
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(48, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 32, generator=g, dtype=torch.float64)
    delta += 0.1 * torch.randn(48, 32, generator=g, dtype=torch.float64)
    r = 4
    B, A = fn(delta, r)
    ok = check.close(torch.tensor([float(d) for d in (*B.shape, *A.shape)]), torch.tensor([48.0, r, r, 32.0]),
                     name="shapes of B (48 x 4) and A (4 x 32)", atol=0)
    if not ok:
        return False
    s = torch.linalg.svdvals(delta)
    return ok & check.close((delta - B.double() @ A.double()).pow(2).sum(), s[r:].pow(2).sum(),
                            name="|dW - BA|^2 vs the sum of the discarded sigma^2", atol=1e-6)


def _energy_without_squares(delta, r):
    s = torch.linalg.svdvals(delta.double())
    return (s[:r].sum() / s.sum()).item()


def _energy_smallest(delta, r):
    s2 = torch.linalg.svdvals(delta.double()).pow(2)
    return (s2[-r:].sum() / s2.sum()).item()


def _lora_sigma_twice(delta, r):
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    return U[:, :r] * S[:r], S[:r, None] * Vh[:r]


def _lora_without_sigma(delta, r):
    U, _, Vh = torch.linalg.svd(delta, full_matrices=False)
    return U[:, :r], Vh[:r]


def _lora_from_v(delta, r):
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    root = S[:r].sqrt()
    return U[:, :r] * root, root[:, None] * Vh.T[:r]  # V's rows, where A needs V^T's


ADAMW_STATE_BYTES = Exercise("adamw_state_bytes", check_adamw_state_bytes, solutions.adamw_state_bytes, wrong={
    "one moment instead of two": lambda params: sum(p.numel() * p.element_size() for p in params),
    "numbers instead of bytes": lambda params: sum(2 * p.numel() for p in params),
    "4 bytes a number whatever the dtype": lambda params: sum(2 * 4 * p.numel() for p in params),
})
ENERGY_IN_TOP = Exercise("energy_in_top", check_energy_in_top, solutions.energy_in_top, wrong={
    "singular values not squared": _energy_without_squares,
    "the r smallest singular values": _energy_smallest,
})
EXTRACT_LORA = Exercise("extract_lora", check_extract_lora, solutions.extract_lora, wrong={
    "Sigma in both factors": _lora_sigma_twice,
    "Sigma left out": _lora_without_sigma,
    "V where A needs V transposed": _lora_from_v,
    "B and A returned the other way round": lambda delta, r: solutions.extract_lora(delta, r)[::-1],
})
EXERCISES = [ADAMW_STATE_BYTES, ENERGY_IN_TOP, EXTRACT_LORA]
