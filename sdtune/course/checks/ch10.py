"""Chapter 10's exercises: LoRA switch's schedule, and the weights that give every method merge's first-order push."""

from __future__ import annotations

import numpy as np

from sdtune.course.check import Exercise
from sdtune.course.solutions import ch10 as solutions

# sdtune's switch (sdtune.composition.compose), recorded step by step in the chapter: LoRA index per step 0..11
SCHEDULES = {
    (2, 1): [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1],
    (3, 2): [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2],
    (3, 5): [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2],
    (4, 5): [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2],
    (2, 3): [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1],
}


def check_schedule(fn) -> bool:
    """The LoRA index at each of 12 steps, for several numbers of LoRAs n and switch intervals k."""
    ok = True
    for (n, k), expected in SCHEDULES.items():
        got = [fn(step, k, n) for step in range(len(expected))]
        good = got == expected
        ok &= good
        print(f"{'✓' if good else '✗'} n={n}, switch_step={k}: {expected}" + ("" if good else f", yours {got}"))
    return ok


def check_weights(fn) -> bool:
    """merge keeps its weights; switch and composite deliver 1/n of each LoRA to first order, so they need n times."""
    ok = True
    for weights, method, expected in (([1.0, 0.5], "merge", [1.0, 0.5]), ([1.0, 0.5], "composite", [2.0, 1.0]),
                                      ([0.8, 0.8, 0.8], "switch", [2.4, 2.4, 2.4]), ([1.0] * 4, "composite", [4.0] * 4),
                                      ([0.5, 1.0, 1.5], "switch", [1.5, 3.0, 4.5])):
        got = fn(weights, method)
        good = len(got) == len(expected) and np.allclose(got, expected)
        ok &= good
        print(f"{'✓' if good else '✗'} {method} {weights}: {[round(float(g), 3) for g in got]}" + ("" if good else f", expected {expected}"))
    return ok


def _equivalent(weights, method, factor):
    return list(weights) if method == "merge" else [factor(len(weights)) * w for w in weights]


ACTIVE_LORA = Exercise("active_lora", check_schedule, solutions.active_lora, wrong={
    "switch_step and n swapped": lambda step, switch_step, n: (step // n) % switch_step,
    "a new LoRA every step, whatever switch_step": lambda step, switch_step, n: step % n,
    "no cycle after the last LoRA": lambda step, switch_step, n: min(step // switch_step, n - 1),
})
EQUIVALENT_WEIGHTS = Exercise("equivalent_weights", check_weights, solutions.equivalent_weights, wrong={
    "divided by n instead of multiplied": lambda weights, method: _equivalent(weights, method, lambda n: 1 / n),
    "switch left at merge's weights": lambda weights, method: list(weights) if method != "composite"
    else [len(weights) * w for w in weights],
    "the square root of n (a norm, not a sum)": lambda weights, method: _equivalent(weights, method, lambda n: n ** 0.5),
})
EXERCISES = [ACTIVE_LORA, EQUIVALENT_WEIGHTS]
