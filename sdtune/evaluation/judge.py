"""The judge: a small CNN that names what a toy-world image shows.

Four heads read one shared feature vector and name the image's shape, colour, background and style
(novel concepts included). It is the course's stand-in for CLIP score: where a paper reports "CLIP-T
went up", a chapter here reports "the judge sees stripes in 86% of samples".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from ..data import toyworld
from ..io import ASSETS
from .stats import Rate

JUDGE_DIR = ASSETS / "judge"
UNSURE = "unsure"  # what the judge answers where it is not sure enough (see `Judge.sure`)
# The judge's probability of the value it names, at or above which it counts as sure. Fixed on the images of the
# judge-agreement study (benchmarks/judge_agreement.py, sampling seeds 7, 1007, 2007) after a person's audit found
# that the judge and the pixel checker disagree on images with no nameable value (benchmarks/judge_audit.py), then
# tested on fresh images (--seed-shift 50000).
SURE = 0.9


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.SiLU())


class Judge(nn.Module):
    """Multi-head classifier: 64x64 RGB in [0, 1] -> logits per attribute."""

    def __init__(self, attributes: dict[str, Sequence[str]] | None = None, width: int = 24, sure: float = 0.0) -> None:
        super().__init__()
        self.attributes = {k: list(v) for k, v in (attributes or toyworld.ATTRIBUTES).items()}
        self.width = width
        self.sure = check_sure(sure)  # `predict` names a value only where its probability is at least this
        w = width
        self.features = nn.Sequential(
            _block(3, w, 1),  # 64x64: edges, stripes and dots are fine detail
            _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1),  # 32x32
            _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 1),  # 16x16
            _block(4 * w, 4 * w, 2),  # 8x8
        )
        self.heads = nn.ModuleDict({k: nn.Linear(8 * w, len(v)) for k, v in self.attributes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x * 2 - 1)
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return {k: head(h) for k, head in self.heads.items()}

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor | Sequence[Image.Image], batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Per attribute, an (N, values) tensor: the softmax over that attribute's values for each image."""
        x = images if isinstance(images, torch.Tensor) else to_tensor(images)
        was_training = self.training
        self.eval()
        chunks = [self(chunk.float()) for chunk in x.split(batch_size)]
        self.train(was_training)
        return {k: torch.cat([c[k] for c in chunks]).softmax(dim=1) for k in self.attributes}

    def predict(self, images: torch.Tensor | Sequence[Image.Image], batch_size: int = 256) -> dict[str, list[str]]:
        """Name each attribute of each image: its most probable value, or "unsure" where that value's probability is
        below `self.sure` (0 names every value). `images`: PIL images or a (N, 3, 64, 64) tensor in [0, 1]."""
        return self.name(self.probabilities(images, batch_size))

    def name(self, probabilities: dict[str, torch.Tensor], sure: float | None = None) -> dict[str, list[str]]:
        """`predict`'s rule on probabilities already computed (`probabilities`), at this judge's `sure` or another:
        one forward pass can then be named both ways."""
        sure = self.sure if sure is None else check_sure(sure)
        named = {}
        for k, p in probabilities.items():
            best, index = p.max(1)
            named[k] = [self.attributes[k][i] if q >= sure else UNSURE for q, i in zip(best.tolist(), index.tolist())]
        return named

    def confidence(self, images: torch.Tensor | Sequence[Image.Image], batch_size: int = 256) -> dict[str, list[float]]:
        """How sure the judge is of each name it gives: the softmax probability of that value, per attribute and image."""
        return {k: p.max(1).values.tolist() for k, p in self.probabilities(images, batch_size).items()}

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"attributes": self.attributes, "width": self.width}, indent=1))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))


def to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images -> (N, 3, H, W) float tensor in [0, 1]."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def check_sure(sure: float) -> float:
    """`sure` is a probability below 1 (at 1 the judge would never name anything)."""
    if not 0 <= sure < 1:
        raise ValueError(f"sure={sure}: the judge's threshold is a probability in [0, 1): 0 names every value, "
                         f"{SURE} names a value only where the judge is sure of it.")
    return float(sure)


def load_judge(folder: str | Path = JUDGE_DIR, sure: float = SURE) -> Judge:
    """Load the shipped judge (or one saved with `Judge.save`). It answers "unsure" wherever its probability of the
    value it would name is below `sure`: `SURE`, the threshold the course measured, by default; 0 names every value."""
    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"No judge weights in {folder}: the shipped judge lives in sdtune/assets/judge; "
            "reinstall sdtune or train one with `python -m sdtune.models.pretrain`."
        )
    config = json.loads((folder / "config.json").read_text())
    judge = Judge(config["attributes"], config["width"], sure)
    judge.load_state_dict(load_file(str(folder / "model.safetensors")))
    return judge.eval()


CONTENT = ("shape", "colour", "background")  # what a prompt asks of every image, whatever its style


def as_asked(predicted: dict[str, list[str]], scenes: Sequence[toyworld.Scene],
             attributes: Sequence[str] = CONTENT) -> dict[str, list[bool]]:
    """Per image: did the judge name each of `attributes` as its scene asks, and "all": every one of them at once."""
    for k in attributes:
        if len(predicted[k]) != len(scenes):
            raise ValueError(f"{len(predicted[k])} predicted {k}s for {len(scenes)} scenes: pass one scene per image.")
    right = {k: [p == getattr(s, k) for p, s in zip(predicted[k], scenes)] for k in attributes}
    right["all"] = [all(r) for r in zip(*right.values())]
    return right


def agreement_rates(predicted: dict[str, list[str]], scenes: Sequence[toyworld.Scene]) -> dict[str, Rate]:
    """Per attribute predicted: k of n images named as their scene asks (`as_asked`), with its Wilson 95% interval."""
    right = as_asked(predicted, scenes, list(predicted))
    return {k: Rate.of(right[k]) for k in predicted}


def agreement(predicted: dict[str, list[str]], scenes: Sequence[toyworld.Scene]) -> dict[str, float]:
    """Fraction of images whose predicted attribute equals the scene's, per attribute (`agreement_rates`' values)."""
    return {k: rate.value for k, rate in agreement_rates(predicted, scenes).items()}
