"""A composition testbed on the toy world, in the spirit of ComposLoRA (Zhong et al. 2024).

Each LoRA carries one novel concept of one attribute (a colour, a background, a style, a shape). For every
combination of 2, 3 or 4 of them, prompts ask for all of its concepts at once ("a dotted pink star on a
checkerboard background"); each composition method draws them, and the judge says, per image, which of the
asked concepts are there. The paper scores with GPT-4V; here the judge counts, so every figure is a fraction
of images:

- presence: the mean over the combination's concepts of the fraction of images showing that concept;
- all:      the fraction of images showing every concept of the combination at once.
"""

from __future__ import annotations

import itertools
import time
from typing import Sequence

import numpy as np

from ..composition import METHODS, compose
from ..data import toyworld
from ..sampling import sample
from .judge import Judge


def combination_scenes(concepts: dict[str, tuple[str, str]], n: int, seed: int) -> list[toyworld.Scene]:
    """`n` scenes with the concepts' attribute values fixed, everything else random among the base values."""
    fixed = {f"{attribute}s": [value] for attribute, value in concepts.values()}
    return toyworld.sample_scenes(n, seed, **fixed)


def testbed(pipe, judge: Judge, concepts: dict[str, tuple[str, str]], sizes: Sequence[int] = (2, 3, 4),
            methods: Sequence[str] = METHODS, n: int = 8, num_inference_steps: int = 15, switch_step: int = 1,
            seed: int = 0) -> list[dict]:
    """Score every combination of the loaded LoRAs (adapter name -> (attribute, value)) with every method."""
    rows = []
    for size in sizes:
        for names in itertools.combinations(concepts, size):
            chosen = {name: concepts[name] for name in names}
            scenes = combination_scenes(chosen, n, seed)
            prompts = [toyworld.caption(s) for s in scenes]
            for method in methods:
                start = time.perf_counter()
                with compose(pipe, list(names), method, switch_step=switch_step) as extra:
                    images = sample(pipe, prompts, num_inference_steps, seed=seed, **extra)
                seconds = (time.perf_counter() - start) / n
                seen = judge.predict(images)
                shown = np.array([[seen[attribute][i] == value for attribute, value in chosen.values()] for i in range(n)])
                rows.append({"loras": "+".join(names), "size": size, "method": method, "presence": float(shown.mean()),
                             "all": float(shown.all(axis=1).mean()), "seconds_per_image": seconds})
    return rows
