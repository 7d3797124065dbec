"""Chapter 10 exercises: LoRA switch's schedule, and the weights that give every method the same total push."""

from __future__ import annotations


def active_lora(step: int, switch_step: int, n: int) -> int:
    """Index of the LoRA that LoRA switch uses at denoising step `step` (0-based): the first `switch_step` steps use
    LoRA 0, the next `switch_step` LoRA 1, ..., and after the last LoRA the cycle starts again."""
    return (step // switch_step) % n


def equivalent_weights(weights: list[float], method: str) -> list[float]:
    """Weights that give `method`, to first order in the LoRA updates, the push that merge gives with `weights`.

    merge adds every update at every step: eps ~ eps_0 + sum_i w_i d_i. composite averages n predictions, so each
    update arrives divided by n: eps ~ eps_0 + (1/n) sum_i w_i d_i. switch uses one update per step, each for 1/n of
    the steps: on average over the steps the same 1/n. Both need n times the weights."""
    n = len(weights)
    if method == "merge":
        return list(weights)
    if method in ("switch", "composite"):
        return [n * w for w in weights]
    raise ValueError(f"unknown method {method!r}")
