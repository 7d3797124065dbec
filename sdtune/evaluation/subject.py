"""Measuring personalization: is the subject there, does the prompt still steer, was the class forgotten?

A subject (say, a star) is taught under a phrase: "sks diamond" for DreamBooth, "<star>" for Textual
Inversion. Three numbers, from the judge, over every base colour x background:

- fidelity:    "a {colour} {phrase} on a {background} background" -> the judge sees the subject's shape;
- editability: in those images, the judge sees the prompted colour and background (mean of the two);
- class kept:  "a {colour} {class} on a {background} background" -> the judge still sees the class's shape
               (DreamBooth's language drift shows here as the class word turning into the subject).

`subject_outcomes` measures a subject the judge has no name for (a user's own toy: `split_disc`), image by image,
with a rule `shows(image) -> bool` that sees it; its outcomes are the booleans that `stats.Rate.of` counts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

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


@dataclass
class SubjectOutcomes:
    """Per image: what `subject_outcomes` sampled and what it saw (`outcomes`: measure -> one bool per image)."""

    subject_prompts: list[str]
    subject_backgrounds: list[str]
    subject_images: list[Image.Image]
    class_prompts: list[str]  # the class in each base colour, the class prompt itself, the class on each background
    class_images: list[Image.Image]
    outcomes: dict[str, list[bool]] = field(default_factory=dict)


def subject_outcomes(pipe, judge: Judge, phrase: str, class_noun: str, shows: Callable[[Image.Image], bool],
                     backgrounds: Sequence[str] = toyworld.BASE_BACKGROUNDS, images_per_prompt: int = 8,
                     num_inference_steps: int = 15, guidance_scale: float = TINY_GUIDANCE, seed: int = 0) -> SubjectOutcomes:
    """Sample the subject and its class, and judge every image. `shows(image)` says whether an image shows the subject.

    Prompts, for each of `backgrounds`: `images_per_prompt` images of the subject, "a {phrase} on a {background}
    background"; one image of the class in each base colour, "a {colour} {class_noun} on a {background} background"
    (the class's variety); `images_per_prompt` images of the class on the background, "a {class_noun} on a {background}
    background"; and as many of the class prompt itself, "a {class_noun}". Outcomes, one bool per image:

    - fidelity:         a subject image shows the subject;
    - editability:      a subject image is on the prompted background (the judge);
    - class kept:       a coloured class image is the class in the prompted colour (the judge);
    - class drift:      an image of the class prompt shows the subject: the class word has turned into it (language
                        drift, on the very prompt prior preservation trains);
    - drift in context: an image of the class on a background shows the subject (the prompt differs from the subject's
                        training captions by the identifier alone).
    """
    subject_backgrounds = [b for b in backgrounds for _ in range(images_per_prompt)]
    subject_prompts = [f"a {phrase} on a {b} background" for b in subject_backgrounds]
    coloured = list(itertools.product(toyworld.BASE_COLOURS, backgrounds))
    class_prompts = [f"a {c} {class_noun} on a {b} background" for c, b in coloured]
    in_context = [f"a {class_noun} on a {b} background" for b in subject_backgrounds]
    bare = [f"a {class_noun}"] * len(subject_backgrounds)
    images = sample(pipe, subject_prompts + class_prompts + bare + in_context, num_inference_steps, guidance_scale, seed=seed)
    n_subject, n_coloured, n_bare = len(subject_prompts), len(class_prompts), len(bare)
    subject_images, class_images = images[:n_subject], images[n_subject:]
    seen, class_seen = judge.predict(subject_images), judge.predict(class_images[:n_coloured])
    outcomes = {
        "fidelity": [bool(shows(im)) for im in subject_images],
        "editability": [p == b for p, b in zip(seen["background"], subject_backgrounds)],
        "class kept": [s == class_noun and p == c for s, p, (c, _) in zip(class_seen["shape"], class_seen["colour"], coloured)],
        "class drift": [bool(shows(im)) for im in class_images[n_coloured : n_coloured + n_bare]],
        "drift in context": [bool(shows(im)) for im in class_images[n_coloured + n_bare :]],
    }
    return SubjectOutcomes(subject_prompts, subject_backgrounds, subject_images, class_prompts + bare + in_context,
                           class_images, outcomes)
