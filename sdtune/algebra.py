"""LoRA algebra: add, subtract and compress LoRAs in weight space; fuse one into the model and take it out again.

A LoRA layer stores two factors and a scale; what it does to the model is their product:

    dW = (alpha / r) B A            B: out x r (kohya "lora_up"), A: r x in (kohya "lora_down")

Combining two LoRAs means combining their dW's. Adding the factors instead is NOT the same:

    (B1 + B2)(A1 + A2) = B1 A1 + B2 A2 + B1 A2 + B2 A1        the cross terms B1 A2 + B2 A1 are noise

so `linear` (peft's name for factor-wise sums, kept here to show the error) is an approximation, while
`cat` is exact: B = [w1 B1, w2 B2], A = [A1; A2] has rank r1 + r2 and B A = w1 dW1 + w2 dW2. `svd` forms
the exact sum and keeps its best rank-k approximation (Eckart-Young), reporting what is lost. `ties` and `dare`
(model-merging methods, Yadav et al. 2023; Yu et al. 2023) first sparsify each dW (TIES: keep the largest
magnitudes, elect a sign per weight, average the agreeing ones; DARE: drop at random and rescale by 1/density),
then compress by SVD. A difference LoRA (Q30) is `combine([b, a], [1, -1], "cat")`.

Everything works on tensors in the kohya layout (`lora_unet_..._to_q.lora_down.weight`, `.lora_up.weight`,
`.alpha`; a missing or zero alpha means alpha = r, as sd-scripts reads it), the layout of every file sdtune writes;
convolution layers (LoCon) are handled by flattening. DoRA is refused: its update m (W + dW) / ||W + dW|| - W depends
on the base weights and is not low-rank, so no LoRA holds a sum of DoRAs (load them side by side instead).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from .formats.adapters import components
from .formats.kohya import alpha_of, group_kohya_layers

METHODS = ("linear", "cat", "svd", "ties", "dare")


def layer_scale(layer: dict[str, torch.Tensor]) -> float:
    """alpha / r of one kohya LoRA layer."""
    rank = layer["lora_down.weight"].shape[0]
    return alpha_of(layer, rank) / rank


def layer_delta(layer: dict[str, torch.Tensor]) -> torch.Tensor:
    """dW = (alpha / r) up @ down of one kohya layer, shaped like the layer's weight (conv: out x in x k x k)."""
    down, up = layer["lora_down.weight"].float(), layer["lora_up.weight"].float()
    delta = layer_scale(layer) * up.flatten(1) @ down.flatten(1)
    return delta.reshape(up.shape[0], *down.shape[1:])


def _check_lora_layer(name: str, layer: dict[str, torch.Tensor]) -> None:
    """Only plain LoRA/LoCon layers combine; anything else is one clear error naming the layer."""
    if "dora_scale" in layer:
        raise ValueError(f"{name} is a DoRA layer: its magnitude rescales W + dW per row, so its update depends on the base "
                         "weights and is not low-rank, and no LoRA holds a combination of DoRAs exactly. Load the adapters "
                         "side by side instead (load_adapter each, then pipe.set_adapters or sdtune.composition.compose).")
    extra = set(layer) - {"lora_down.weight", "lora_up.weight", "alpha"}
    if "lora_down.weight" not in layer or extra:
        raise ValueError(f"{name}: only LoRA/LoCon layers (lora_down/lora_up) combine here; it holds "
                         f"{', '.join(sorted(extra or set(layer)))} (LoHa, LoKr or a Tucker core).")


def factors(delta: torch.Tensor, rank: int) -> tuple[dict[str, torch.Tensor], float]:
    """The best rank-`rank` kohya layer for a dW (truncated SVD), and the relative error ||dW - B A|| / ||dW||."""
    matrix = delta.flatten(1)
    U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)
    k = min(rank, S.numel())
    up, down = U[:, :k] * S[:k], Vh[:k]  # B = U_k S_k, A = V_k^T
    lost = S[k:].pow(2).sum().sqrt() / S.pow(2).sum().sqrt().clamp_min(1e-12)
    shape_up = (delta.shape[0], k) + (1,) * (delta.dim() - 2)
    layer = {"lora_down.weight": down.reshape(k, *delta.shape[1:]).contiguous(), "lora_up.weight": up.reshape(shape_up).contiguous(),
             "alpha": torch.tensor(float(k))}
    return layer, float(lost)


def _sparsify(delta: torch.Tensor, method: str, density: float, generator: torch.Generator) -> torch.Tensor:
    if method == "dare":  # drop each entry with probability 1 - density, rescale the kept ones
        keep = torch.rand(delta.shape, generator=generator) < density
        return delta * keep / density
    k = max(1, int(density * delta.numel()))  # ties: keep the k largest magnitudes
    threshold = delta.abs().flatten().kthvalue(delta.numel() - k + 1).values
    return delta * (delta.abs() >= threshold)


def _ties_merge(deltas: list[torch.Tensor]) -> torch.Tensor:
    """Elect a sign per entry (the sign of the sum), then average the entries that agree with it."""
    stacked = torch.stack(deltas)
    sign = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    return (stacked * agree).sum(0) / agree.sum(0).clamp_min(1)


def combine(loras: Sequence[dict[str, torch.Tensor]], weights: Sequence[float], method: str = "cat", rank: int | None = None,
            density: float = 0.5, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Weighted combination of kohya-layout LoRAs; returns (kohya tensors, per-layer relative error of the result
    against the exact sum sum_i w_i dW_i). `rank` is required by svd, ties and dare.

    A layer that only some of the LoRAs adapt (another target preset: attention-only with LoCon, say) takes the
    others' updates as zero. TIES elects each entry's sign on the weighted updates w_i dW_i (peft's
    `add_weighted_adapter` elects it on the unweighted ones: the two agree when the weights are equal)."""
    if method not in METHODS:
        raise ValueError(f"Unknown combination {method!r}: choose one of {', '.join(METHODS)}.")
    if len(loras) != len(weights) or not loras:
        raise ValueError(f"{len(weights)} weights for {len(loras)} LoRAs: give one weight per LoRA.")
    if method in ("svd", "ties", "dare") and (rank is None or rank <= 0):
        raise ValueError(f"{method} compresses the combination: give a target rank > 0.")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}.")
    grouped = [group_kohya_layers(t) for t in loras]
    names = list(dict.fromkeys(name for g in grouped for name in g))
    if not set.intersection(*(set(g) for g in grouped)):
        raise ValueError("The LoRAs share no adapted layer: they were made for different base models and cannot be combined.")
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    for name in names:
        present = [(w, g[name]) for w, g in zip(weights, grouped) if name in g]  # a LoRA without this layer adds zero
        layer_weights, layers = [w for w, _ in present], [layer for _, layer in present]
        for layer in layers:
            _check_lora_layer(name, layer)
        exact_rank = sum(layer["lora_down.weight"].shape[0] for layer in layers)
        if method == "svd" and rank > exact_rank:
            raise ValueError(f"rank {rank} is above the sum's exact rank ({exact_rank} at {name}): "
                             "the exact combination is cat; svd compresses to a lower rank.")
        deltas = [w * layer_delta(layer) for w, layer in zip(layer_weights, layers)]
        exact = torch.stack(deltas).sum(0)
        if method == "linear":  # factor-wise weighted sums (needs equal ranks): the cross terms stay in
            if len({layer["lora_down.weight"].shape[0] for layer in layers}) != 1:
                raise ValueError("linear adds the factors themselves, so every LoRA needs the same rank: use cat or svd.")
            scales = [math.sqrt(abs(w) * layer_scale(layer)) for w, layer in zip(layer_weights, layers)]
            signs = [math.copysign(1.0, w) for w in layer_weights]
            down = sum(s * layer["lora_down.weight"].float() for s, layer in zip(scales, layers))
            up = sum(sg * s * layer["lora_up.weight"].float() for sg, s, layer in zip(signs, scales, layers))
            result = {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(float(down.shape[0]))}
        elif method == "cat":  # exact: B = [w1 B1, w2 B2, ...], A = [A1; A2; ...], each with its own alpha / r
            ups = [w * layer_scale(layer) * layer["lora_up.weight"].float() for w, layer in zip(layer_weights, layers)]
            down = torch.cat([layer["lora_down.weight"].float() for layer in layers])
            result = {"lora_down.weight": down, "lora_up.weight": torch.cat(ups, dim=1), "alpha": torch.tensor(float(down.shape[0]))}
        else:
            target = exact
            if method in ("ties", "dare"):
                sparse = [_sparsify(d, method, density, generator) for d in deltas]
                target = _ties_merge(sparse) if method == "ties" else torch.stack(sparse).sum(0)
            result, _ = factors(target, rank)
        out.update({f"{name}.{k}": v.contiguous() for k, v in result.items()})
        errors[name] = float((layer_delta(result) - exact).norm() / exact.norm().clamp_min(1e-12))
    return out, errors


# ------------------------------------------------------------------------------------------------
# Fusing into the model, per-block scales
# ------------------------------------------------------------------------------------------------

def _activate(layer: BaseTunerLayer, names: list[str]) -> None:
    """Set a layer's active adapters; peft's set_adapter also flips requires_grad, which is put back as it was."""
    trainable = {name: p.requires_grad for name, p in layer.named_parameters()}
    layer.set_adapter(names)
    for name, p in layer.named_parameters():
        p.requires_grad_(trainable[name])


def fused_adapters(pipe) -> set[str]:
    """Names of the adapters `fuse` has added into the pipeline's base weights (and `unfuse` not yet taken out)."""
    return {name for module in components(pipe).values() for layer in module.modules()
            for name in getattr(layer, "sdtune_fused", ())}


def fuse(pipe, adapter_name: str, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Add an adapter's update into the base weights (W <- W + scale dW, in fp32) and return the original weights,
    which `unfuse` puts back exactly. The adapter stays loaded but leaves each layer's active adapters, so it costs
    nothing at inference while other adapters keep running beside it (peft's own merge makes a layer compute W x
    alone, every other adapter included, and undoes it by subtraction, which in fp16 does not restore W).
    Each layer records the fused name, so activating the adapter again (which would count its update twice) is refused."""
    if adapter_name in fused_adapters(pipe):
        raise ValueError(f"Adapter {adapter_name!r} is already fused into the base weights; unfuse it before fusing it again.")
    originals: dict[str, torch.Tensor] = {}
    for component, module in components(pipe).items():
        for path, layer in module.named_modules():
            if isinstance(layer, BaseTunerLayer) and adapter_name in layer.scaling:
                if getattr(layer, "use_dora", {}).get(adapter_name):
                    raise ValueError("DoRA rescales W itself; fuse it with pipe.fuse_lora(), which keeps no exact copy.")
                base = layer.get_base_layer()
                originals[f"{component}.{path}"] = base.weight.detach().clone()
                delta = layer.get_delta_weight(adapter_name).float() * scale  # (alpha / r) B A, times scale
                base.weight.data = (base.weight.float() + delta).to(base.weight.dtype)
                _activate(layer, [a for a in layer.active_adapters if a != adapter_name])  # the update now lives in W
                layer.sdtune_fused = {*getattr(layer, "sdtune_fused", ()), adapter_name}
    return originals


def unfuse(pipe, adapter_name: str, originals: dict[str, torch.Tensor]) -> None:
    """Restore the weights `fuse` saved, bit for bit; the adapter runs beside them again."""
    for component, module in components(pipe).items():
        for path, layer in module.named_modules():
            key = f"{component}.{path}"
            if key in originals:
                layer.get_base_layer().weight.data = originals[key].clone()
                _activate(layer, [*layer.active_adapters, adapter_name])
                layer.sdtune_fused = getattr(layer, "sdtune_fused", set()) - {adapter_name}


def set_block_scales(pipe, adapter_name: str, scales: dict[str, float]) -> int:
    """Scale an adapter per UNet block, e.g. {"down_blocks.0": 0.0, "mid_block": 1.0, "up_blocks.1": 0.5}
    (kohya's "LoRA block weight"); layers outside the named blocks keep scale 1. Returns the layers scaled."""
    unknown = [b for b in scales if not any(p == b or p.startswith(b + ".") for p, _ in pipe.unet.named_modules())]
    if unknown:
        raise ValueError(f"No UNet block named {', '.join(unknown)}: use names like down_blocks.0, mid_block, up_blocks.1.")
    count = 0
    for path, layer in pipe.unet.named_modules():
        if isinstance(layer, BaseTunerLayer) and adapter_name in layer.scaling:
            block = max((b for b in scales if path == b or path.startswith(b + ".")), key=len, default=None)
            layer.set_scale(adapter_name, scales[block] if block else 1.0)
            count += block is not None
    return count
