"""What a training run trains, behind one small interface, so that the training loop names no method.

    method = trainable_for(cfg)
    pipe = method.attach(pipe, copy_weights)   # create or unfreeze what trains; returns the pipeline to train
    ... every step: loss.backward(); optimizer.step(); method.after_step()
    method.save(pipe, folder, name, resolution)    # the method's result files
    method.detach(pipe)                        # the caller's pipeline as it came, also after an error

`method.unet` is the UNet the loop calls, `method.text_encoders` the text encoders that must run with gradients
on every batch (empty: the captions' embeddings are computed once and cached). The trainable weights are the
parameters with `requires_grad` set in those modules.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..formats.adapters import components


class Trainable:
    """The default: nothing to do after a step. Subclasses implement attach, save and detach."""

    unet: torch.nn.Module
    text_encoders: list[torch.nn.Module]

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def attach(self, pipe, copy_weights: bool):
        raise NotImplementedError

    def after_step(self) -> None:
        pass

    def save(self, pipe, folder: Path, name: str, resolution: int) -> None:
        raise NotImplementedError

    def detach(self, pipe) -> None:
        raise NotImplementedError


def trained_text_encoders(pipe, cfg) -> list[torch.nn.Module]:
    """The text encoders whose weights (or adapters) train: all of them with train_text_encoder, else none."""
    return [m for n, m in components(pipe).items() if n != "unet"] if cfg.train_text_encoder else []


def trainable_for(cfg) -> Trainable:
    """The method that trains `cfg.adapter`: a peft adapter unless it is full, textual-inversion or hypernetwork."""
    from .adapters import PeftAdapterTraining
    from .full import FullTraining
    from .hypernetwork import HypernetworkTraining
    from .textual_inversion import TextualInversionTraining

    kinds = {"full": FullTraining, "textual-inversion": TextualInversionTraining, "hypernetwork": HypernetworkTraining}
    return kinds.get(cfg.adapter, PeftAdapterTraining)(cfg)
