"""Measuring personalization: is the subject there, does the prompt still steer, was the class forgotten?

A subject (say, a star) is taught under a phrase: "sks diamond" for DreamBooth, "<star>" for Textual
Inversion. Three numbers, from the judge, over every base colour x background:

- fidelity:    "a {colour} {phrase} on a {background} background" -> the judge sees the subject's shape;
- editability: in those images, the judge sees the prompted colour and background (mean of the two);
- class kept:  "a {colour} {class} on a {background} background" -> the judge still sees the class's shape
               (DreamBooth's language drift shows here as the class word turning into the subject).
"""

from __future__ import annotations

import itertools

import numpy as np

from ..data import toyworld
from ..sampling import TINY_GUIDANCE, sample
from .judge import Judge


def subject_prompts(phrase: str) -> list[tuple[str, str, str]]:
    """(prompt, colour, background) for every base colour x background."""
    return [(f"a {c} {phrase} on a {b} background", c, b)
            for c, b in itertools.product(toyworld.BASE_COLOURS, toyworld.BASE_BACKGROUNDS)]


def _judged(pipe, judge: Judge, phrase: str, seeds: int, num_inference_steps: int, guidance_scale: float):
    rows = subject_prompts(phrase)
    images = []
    for seed in range(seeds):
        images += sample(pipe, [p for p, _, _ in rows], num_inference_steps, guidance_scale, seed=1000 * seed)
    return rows * seeds, judge.predict(images)


def subject_scores(pipe, judge: Judge, phrase: str, subject: str, class_noun: str, seeds: int = 2,
                   num_inference_steps: int = 15, guidance_scale: float = TINY_GUIDANCE) -> dict[str, float]:
    """Fidelity, editability and class kept (fractions, see the module docstring) of `pipe` as it is now."""
    rows, seen = _judged(pipe, judge, phrase, seeds, num_inference_steps, guidance_scale)
    _, class_seen = _judged(pipe, judge, class_noun, seeds, num_inference_steps, guidance_scale)
    colour = np.mean([p == c for p, (_, c, _) in zip(seen["colour"], rows)])
    background = np.mean([p == b for p, (_, _, b) in zip(seen["background"], rows)])
    return {
        "fidelity": float(np.mean([p == subject for p in seen["shape"]])),
        "editability": float((colour + background) / 2),
        "class kept": float(np.mean([p == class_noun for p in class_seen["shape"]])),
    }
