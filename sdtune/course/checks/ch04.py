"""Chapter 04's exercises: the per-token cosine distance of two prompt embeddings, and counting a text-encoder LoRA."""

from __future__ import annotations

import copy

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from sdtune.course import check
from sdtune.course.check import Exercise
from sdtune.course.solutions import ch04 as solutions
from sdtune.formats.adapters import add_adapter
from sdtune.io import ASSETS
from sdtune.methods import adapter_config


def check_cosine_distance_per_token(fn) -> bool:
    """1 - cos(a_i, b_i) per row: a pair worked out by hand, then a random (L, d) pair against torch's cosine_similarity."""
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    b = torch.tensor([[2.0, 0.0], [-1.0, -1.0], [3.0, 0.0]])
    ok = check.close(fn(a, b), torch.tensor([0.0, 2.0, 1.0]), name="same direction, opposite, orthogonal", atol=1e-6)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 128, generator=g), torch.randn(32, 128, generator=g) * 3
    expected = 1 - torch.nn.functional.cosine_similarity(x, y, dim=-1)
    return ok & check.close(fn(x, y), expected, name="a random (32, 128) pair vs 1 - torch's cosine_similarity", atol=1e-5)


def _text_encoders() -> dict[str, CLIPTextModel]:
    """The tiny model's text encoder and SD 1.5's (CLIP ViT-L/14's text half), as shapes on the meta device."""
    configs = {"tiny": CLIPTextConfig.from_pretrained(ASSETS / "tiny-sd", subfolder="text_encoder"),
               "SD 1.5": CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77)}
    with torch.device("meta"):
        return {name: CLIPTextModel(config) for name, config in configs.items()}


def _peft_count(model: CLIPTextModel, preset: str, r: int) -> int:
    holder = copy.deepcopy(model).requires_grad_(False)
    add_adapter(holder, adapter_config("lora", r, r, preset, "text_encoder"), "count")
    return sum(p.numel() for p in holder.parameters() if p.requires_grad)


def check_te_lora_parameter_count(fn) -> bool:
    """Against peft's count on the tiny text encoder and SD 1.5's, attention only and attention + MLP, r = 8."""
    ok = True
    for name, model in _text_encoders().items():
        cfg = model.config
        for preset, mlp in (("attn", None), ("attn-mlp", cfg.intermediate_size)):
            ours, theirs = fn(cfg.num_hidden_layers, cfg.hidden_size, 8, mlp), _peft_count(model, preset, 8)
            ok &= ours == theirs
            print(f"{'✓' if ours == theirs else '✗'} {name}, {preset}, r=8: yours {ours:,}, peft {theirs:,}")
    return ok


COSINE_DISTANCE_PER_TOKEN = Exercise("cosine_distance_per_token", check_cosine_distance_per_token,
                                     solutions.cosine_distance_per_token, wrong={
    "the cosine similarity, not the distance": lambda a, b: (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)),
    "over the token axis instead of the feature axis": lambda a, b: 1 - (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0)),
    "1 - the dot product, not normalised": lambda a, b: 1 - (a * b).sum(-1),
})
TE_LORA_PARAMETER_COUNT = Exercise("te_lora_parameter_count", check_te_lora_parameter_count, solutions.te_lora_parameter_count, wrong={
    "q and v only": lambda n, w, r, mlp=None: n * 2 * r * 2 * w + (n * 2 * r * (w + mlp) if mlp else 0),
    "every layer but one": lambda n, w, r, mlp=None: solutions.te_lora_parameter_count(n - 1, w, r, mlp),
    "fc1 and fc2 counted as square": lambda n, w, r, mlp=None: solutions.te_lora_parameter_count(n, w, r, w if mlp else None),
})
EXERCISES = [COSINE_DISTANCE_PER_TOKEN, TE_LORA_PARAMETER_COUNT]
