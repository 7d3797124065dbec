"""Sampling speed of the tiny model on this machine: seconds per 64x64 image.

    python benchmarks/sample_speed.py

Target: <= 0.3 s per image at sdtune's defaults (DDIM, 25 steps, guidance 4), one image at a time, on 2 CPU
cores. Printed beside it: a batch of 16 (per image), and diffusers' own pipeline defaults (50 steps,
guidance 7.5) as the reference point.
"""

import time

import torch

import sdtune
from sdtune.sampling import TINY_GUIDANCE, TINY_STEPS

TARGET = 0.3


def seconds_per_image(pipe, batch: int, steps: int, guidance: float, repeats: int) -> float:
    prompts = ["a red circle on a white background"] * batch
    sdtune.sample(pipe, prompts, steps, guidance, seed=0)  # warm-up
    start = time.perf_counter()
    for r in range(repeats):
        sdtune.sample(pipe, prompts, steps, guidance, seed=r)
    return (time.perf_counter() - start) / (repeats * batch)


def main() -> None:
    pipe = sdtune.load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = [
        ("sdtune defaults, batch 1", 1, TINY_STEPS, TINY_GUIDANCE, 10),
        ("sdtune defaults, batch 16", 16, TINY_STEPS, TINY_GUIDANCE, 3),
        ("diffusers defaults (50 steps, cfg 7.5), batch 1", 1, 50, 7.5, 5),
    ]
    print(f"{'setting':<50} {'s/image':>8}")
    for name, batch, steps, guidance, repeats in rows:
        s = seconds_per_image(pipe, batch, steps, guidance, repeats)
        note = f"  (target <= {TARGET} s: {'met' if s <= TARGET else 'MISSED'})" if batch == 1 and steps == TINY_STEPS else ""
        print(f"{name:<50} {s:8.3f}{note}")


if __name__ == "__main__":
    main()
