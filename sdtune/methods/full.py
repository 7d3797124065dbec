"""Full fine-tuning: every weight of the UNet trains (and, with train_text_encoder, of the text encoders).

The baseline every adapter is compared with: the most capacity, the largest file (a whole pipeline folder), and
the most memory (AdamW keeps two moments per weight). A caller's pipeline trains copies of what trains, so it
keeps its own weights.
"""

from __future__ import annotations

import copy
from pathlib import Path

from ..formats.adapters import components
from ..models.loading import quiet_diffusers
from .trainable import Trainable


class FullTraining(Trainable):
    """Every weight of the UNet (and, with train_text_encoder, of every text encoder). A caller's pipeline trains
    copies, so it keeps its weights; the result is a whole diffusers pipeline folder."""

    def attach(self, pipe, copy_weights: bool):
        trained = {n: m for n, m in components(pipe).items() if n == "unet" or self.cfg.train_text_encoder}
        copies = {n: copy.deepcopy(m) if copy_weights else m for n, m in trained.items()}
        for module in copies.values():
            module.requires_grad_(True)
        with quiet_diffusers():  # from_pipe warns about an empty list of float32 modules
            # dtype: from_pipe casts every component, the caller's shared ones too, to float32 unless told otherwise
            trained_pipe = type(pipe).from_pipe(pipe, **copies, dtype=pipe.unet.dtype) if copy_weights else pipe
        self.unet = copies["unet"]
        self.text_encoders = [copies[n] for n in copies if n != "unet"]
        return trained_pipe

    def save(self, pipe, folder: Path, name: str, resolution: int) -> None:
        pipe.save_pretrained(folder)

    def detach(self, pipe) -> None:
        pass  # the caller's pipeline was never touched (copies trained), or the caller asked for it to train in place
