"""Caption shuffling (kohya's ``--shuffle_caption`` and ``--keep_tokens``) for tag-style captions.

"sks toy, red, on a table, studio light" is a list of comma-separated tags; shuffling the tags at every step
stops the model from tying a concept to a tag's position, and keeping the first N in place keeps the trigger
("sks toy") first. A shuffled caption differs at each step, so its text embedding cannot be computed once
and cached: the trainer calls `shuffle_caption` per step and runs the (frozen) text encoder on the result.
"""

from __future__ import annotations

import torch


def shuffle_caption(caption: str, keep_tokens: int, generator: torch.Generator) -> str:
    """The caption's tags after the first `keep_tokens` in a random order drawn from `generator` (the trainer's,
    so that a resumed run shuffles as the uninterrupted one did); tags are rejoined with ", "."""
    if keep_tokens < 0:
        raise ValueError(f"keep_tokens must be >= 0 (the leading tags kept in place), got {keep_tokens}.")
    tags = [tag.strip() for tag in caption.split(",") if tag.strip()]
    kept, shuffled = tags[:keep_tokens], tags[keep_tokens:]
    order = torch.randperm(len(shuffled), generator=generator).tolist()
    return ", ".join(kept + [shuffled[i] for i in order])
