"""Several LoRAs in one image: merge, switch and composite (Zhong et al. 2024, "Multi-LoRA Composition").

With n LoRAs loaded as named adapters, each denoising step can use them in three ways:

- merge:     one UNet with every update added, W' = W + sum_i w_i (alpha_i / r_i) B_i A_i; one pass per step.
             Cheap, but the updates interfere: each LoRA is diluted by the others.
- switch:    one LoRA at a time, the next every `switch_step` steps (step k uses LoRA floor(k / switch_step) mod n),
             through the pipeline's `callback_on_step_end`. One pass per step; each LoRA acts on part of the path.
- composite: every LoRA predicts the noise separately and the predictions are averaged, separately for the
             unconditional and the conditional half, before guidance:
                 eps_u = 1/n sum_i eps_i(z_t, empty),  eps_c = 1/n sum_i eps_i(z_t, prompt)
                 eps   = eps_u + g (eps_c - eps_u)
             n predictions per step, made here in ONE batched UNet call: the batch is repeated n times and every
             LoRA layer applies adapter i to its i-th copy (what peft's mixed-adapter batches do; sdtune's
             `grouped_lora` does it with contiguous slices, no index gather and scatter, at about the cost of one
             LoRA on the big batch).

`compose(pipe, names, method)` is a context manager for any diffusers SD or SDXL pipeline; it yields the extra
keyword arguments the pipeline call needs (switch's callback), and restores the pipeline's adapters after.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer

from .algebra import fused_adapters
from .formats.adapters import set_adapter_scale

METHODS = ("merge", "switch", "composite")


def loaded_adapters(pipe) -> list[str]:
    """Names of the adapters loaded in the pipeline's UNet."""
    return list(getattr(pipe.unet, "peft_config", {}))


def check_composition(pipe, names: Sequence[str], method: str, weights: Sequence[float] | None) -> list[float]:
    """Validate a composition request before any sampling; returns the weights (default 1 each)."""
    if method not in METHODS:
        raise ValueError(f"Unknown composition method {method!r}: choose one of {', '.join(METHODS)}.")
    if not names:
        raise ValueError("compose() needs at least one adapter name.")
    if method in ("switch", "composite") and len(names) < 2:
        raise ValueError(f"{method} alternates or averages several LoRAs: give at least two (one LoRA alone: use merge).")
    missing = [n for n in names if n not in loaded_adapters(pipe)]
    if missing:
        raise ValueError(f"No adapter named {', '.join(missing)} in the pipeline (loaded: {', '.join(loaded_adapters(pipe)) or 'none'}).")
    fused = sorted(set(names) & fused_adapters(pipe))
    if fused:
        raise ValueError(f"{', '.join(fused)} is fused into the base weights (sdtune.algebra.fuse): activating it again "
                         "would add its update twice. Unfuse it first (sdtune.algebra.unfuse) or leave it out.")
    merged = sorted({n for m in pipe.unet.modules() if isinstance(m, BaseTunerLayer) for n in m.merged_adapters})
    if merged:  # peft's merged layers compute W x alone: no other adapter acts there
        raise ValueError(f"{', '.join(merged)} is merged into the base weights by peft (pipe.fuse_lora()), and peft's merged "
                         "layers then ignore every other adapter. Call pipe.unfuse_lora() first, or fuse with "
                         "sdtune.algebra.fuse, which keeps the other adapters running.")
    weights = [1.0] * len(names) if weights is None else list(weights)
    if len(weights) != len(names):
        raise ValueError(f"{len(weights)} weights for {len(names)} LoRAs: give one weight per LoRA.")
    if method == "composite":
        mixed = [type(m).__name__ for m in pipe.unet.modules() if isinstance(m, BaseTunerLayer) and not isinstance(m, LoraLayer)]
        if mixed:
            raise ValueError(f"composite batches LoRA-family adapters; this UNet also holds {mixed[0]} layers (LoHa/LoKr): use merge or switch.")
        layers = [m for m in pipe.unet.modules() if isinstance(m, LoraLayer)]
        dora = sorted({n for m in layers for n in names if m.use_dora.get(n)})
        if dora:
            raise ValueError(f"composite adds plain LoRA updates per batch slice; {', '.join(dora)} is DoRA (its update rescales "
                             "the whole weight): use merge or switch.")
    return weights


@contextlib.contextmanager
def adapter_per_item(unet, names: list[str]) -> Iterator[None]:
    """Within the block, every LoRA layer of `unet` applies adapter names[i] to batch item i, in any order (peft's
    mixed-adapter batches: one call serves prompts that each want their own LoRA)."""

    def hook(module, args, kwargs):
        return args, kwargs | {"adapter_names": names}

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in unet.modules() if isinstance(m, LoraLayer)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _grouped_forward(layer: LoraLayer, names: list[str]):
    """A forward for one LoRA layer whose input holds n equal copies of the batch, copy i for adapter names[i]:

        y_i = W x_i + s_i B_i A_i x_i        (s_i = alpha_i / r_i times the adapter's weight)

    The base layer runs once on the whole batch; each adapter only on its own slice (a view: no gather)."""
    present = [name if name in layer.lora_A else None for name in names]  # a layer an adapter does not adapt: y_i = W x_i

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = layer.base_layer(x, *args, **kwargs)
        if layer.disable_adapters:
            return result
        outputs = []
        for name, x_i, y_i in zip(present, x.chunk(len(names)), result.chunk(len(names))):
            if name is not None:
                lora_A, lora_B = layer.lora_A[name], layer.lora_B[name]
                x_i = layer.lora_dropout[name](x_i.to(lora_A.weight.dtype))
                y_i = y_i + (lora_B(lora_A(x_i)) * layer.scaling[name]).to(y_i.dtype)
            outputs.append(y_i)
        return torch.cat(outputs)

    return forward


@contextlib.contextmanager
def grouped_lora(unet, names: list[str]) -> Iterator[None]:
    """Within the block, every LoRA layer of `unet` applies adapter names[i] to the i-th of n equal batch slices."""
    layers = [m for m in unet.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        layer.forward = _grouped_forward(layer, names)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # back to peft's forward


def _repeat(value, batch: int, n: int):
    """Repeat every per-item tensor (first dimension = batch) n times, copy after copy: [a, b] -> [a, b, a, b]."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return value.repeat(n, *[1] * (value.ndim - 1))
    if isinstance(value, dict):
        return {k: _repeat(v, batch, n) for k, v in value.items()}
    return value


def composite_forward(unet, names: list[str]):
    """A replacement for `unet.forward`: n adapters' predictions from one batched call, averaged per item."""
    forward = unet.forward
    n = len(names)

    def composite(sample, timestep, encoder_hidden_states, *args, return_dict: bool = True, **kwargs):
        batch = sample.shape[0]
        args = [_repeat(a, batch, n) for a in args]
        kwargs = {k: _repeat(v, batch, n) for k, v in kwargs.items()}
        with grouped_lora(unet, names):  # copy i -> adapter i
            out = forward(_repeat(sample, batch, n), _repeat(timestep, batch, n), _repeat(encoder_hidden_states, batch, n),
                          *args, return_dict=False, **kwargs)[0]
        mean = out.view(n, batch, *out.shape[1:]).mean(dim=0)  # eps = 1/n sum_i eps_i, per item (uncond and cond alike)
        return UNet2DConditionOutput(sample=mean) if return_dict else (mean,)

    return composite


@contextlib.contextmanager
def compose(pipe, names: Sequence[str], method: str = "merge", weights: Sequence[float] | None = None,
            switch_step: int = 1) -> Iterator[dict]:
    """Use several loaded LoRAs together while the block runs; yields extra keyword arguments for the pipeline call.

        with compose(pipe, ["style", "subject"], "composite") as extra:
            images = pipe(prompt, **extra).images
    """
    names = list(names)
    weights = check_composition(pipe, names, method, weights)
    if switch_step <= 0:
        raise ValueError(f"switch_step must be a positive number of denoising steps, got {switch_step}.")
    before = pipe.unet.active_adapters()
    extra: dict = {}
    try:
        # set_adapters also resets each adapter's scale to 1, so the weights are applied after it
        if method == "merge":
            pipe.set_adapters(names, weights)
        if method == "switch":
            scale = dict(zip(names, weights))

            def use(pipeline, name: str) -> None:
                pipeline.set_adapters(name)
                set_adapter_scale(pipeline, name, scale[name])

            use(pipe, names[0])

            def next_lora(pipeline, step: int, timestep, callback_kwargs: dict) -> dict:
                use(pipeline, names[((step + 1) // switch_step) % len(names)])
                return callback_kwargs

            extra = {"callback_on_step_end": next_lora}
        if method == "composite":
            pipe.set_adapters(names)  # every adapter active; each copy of the batch picks one (grouped_lora)
            for name, weight in zip(names, weights):
                set_adapter_scale(pipe, name, weight)
            pipe.unet.forward = composite_forward(pipe.unet, names)
        yield extra
    finally:
        if "forward" in vars(pipe.unet):
            del pipe.unet.forward  # back to the class's forward
        for name in names:
            set_adapter_scale(pipe, name, 1.0)
        if before:
            pipe.set_adapters(before)
