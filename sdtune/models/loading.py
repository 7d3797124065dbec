"""One way in for every model: `load_pipeline("tiny")` and `load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5")`.

Both go through `DiffusionPipeline.from_pretrained`, so what a chapter does on the tiny model is
literally the code path it does on SD 1.5 or SDXL on a GPU.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Iterator

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils import logging as diffusers_logging

from ..io import ASSETS

TINY_PATH = ASSETS / "tiny-sd"
SUPPORTED = (StableDiffusionPipeline, StableDiffusionXLPipeline)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelError(ValueError):
    """A model name or folder that cannot be loaded, with what to do about it."""


def resolve_model(model: str | Path) -> str:
    """Turn 'tiny', a local pipeline folder or a hub id into what `from_pretrained` takes."""
    if str(model) == "tiny":
        if not (TINY_PATH / "model_index.json").is_file():
            raise ModelError(
                f"The tiny model's weights are not in {TINY_PATH}: train them with "
                f"`python -m sdtune.models.pretrain --out {ASSETS}` (about two hours on 2 CPU cores), "
                "or pass a pipeline folder or hub id instead of 'tiny'."
            )
        return str(TINY_PATH)
    path = Path(model).expanduser()
    if path.exists():
        if path.is_file():
            raise ModelError(
                f"{path} is a single file; sdtune loads diffusers pipeline folders (with model_index.json). "
                "Convert a single-file checkpoint once with `StableDiffusionPipeline.from_single_file(...).save_pretrained(DIR)`."
            )
        if not (path / "model_index.json").is_file():
            raise ModelError(
                f"{path} is not a diffusers pipeline folder: it has no model_index.json. "
                "Pass 'tiny', a hub id such as 'stable-diffusion-v1-5/stable-diffusion-v1-5', or a folder saved by save_pretrained."
            )
        return str(path)
    if _HUB_ID.match(str(model)):
        return str(model)
    raise ModelError(
        f"Unknown model {str(model)!r}: pass 'tiny', an existing pipeline folder, or a hub id of the form 'org/name'."
    )


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(
    model: str | Path = "tiny", device: str | None = None, dtype: torch.dtype | None = None
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """Load an SD 1.x/2.x or SDXL pipeline by name ('tiny'), folder or hub id.

    Defaults: float16 on CUDA, float32 on the CPU (diffusers' advice: half precision is a GPU thing).
    """
    source = resolve_model(model)
    device = device or default_device()
    if dtype is None:
        dtype = torch.float16 if device.startswith("cuda") and source != str(TINY_PATH) else torch.float32
    try:
        pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype)
    except OSError as error:
        raise ModelError(
            f"Could not load {source!r} ({error}). A hub id needs the internet or a copy in the Hugging Face cache; "
            "offline, pass a local folder or 'tiny'."
        ) from None
    if not isinstance(pipe, SUPPORTED):
        raise ModelError(
            f"{source} is a {type(pipe).__name__}; sdtune fine-tunes Stable Diffusion 1.x/2.x and SDXL pipelines."
        )
    return pipe.to(device)


@contextlib.contextmanager
def quiet_diffusers() -> Iterator[None]:
    """Only diffusers' errors inside the block (e.g. from_pipe's warning about an empty list of float32 modules)."""
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
