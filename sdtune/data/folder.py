"""Training data as users prepare it: a folder of images with their captions.

Two conventions are read, the two the ecosystem uses:

* kohya / sd-scripts: ``cat01.png`` + ``cat01.txt`` (the caption), side by side;
* Hugging Face imagefolder: images plus one ``metadata.jsonl`` with lines ``{"file_name": ..., "text": ...}``.

An image without a caption takes the ``instance_prompt`` if one is given (DreamBooth style), else it is
an error. Every problem is found before training starts and reported with the file and the fix.
Handled and logged, not refused: RGBA/LA/P/L/CMYK images are converted to RGB (transparent pixels over
white), and images of other sizes are resized (shorter side) and center-cropped to the resolution.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SIDE_FILES = (".txt", ".jsonl", ".json", ".md", ".npz", ".toml", ".yaml", ".yml")


class DatasetError(ValueError):
    """A dataset folder that cannot be trained on, with what to do about it."""


@dataclass(frozen=True)
class Example:
    image: Path
    caption: str


def scan_folder(folder: str | os.PathLike, instance_prompt: str | None = None) -> list[Example]:
    """List (image, caption) pairs of a dataset folder, checking every file before any work starts."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"Dataset folder {folder} does not exist or is not a folder: pass a folder of images.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    strange = [p.name for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS + SIDE_FILES]
    if strange:
        raise DatasetError(
            f"{folder} holds files that are neither images ({', '.join(IMAGE_EXTENSIONS)}) nor captions: "
            f"{', '.join(strange[:5])}. Move them out of the dataset folder."
        )
    if not images:
        raise DatasetError(
            f"No images in {folder}: add {', '.join(IMAGE_EXTENSIONS)} files, each with a same-name .txt caption "
            "(or a metadata.jsonl, or pass an instance prompt)."
        )
    metadata = folder / "metadata.jsonl"
    captions = _read_metadata(metadata) if metadata.is_file() else {}
    image_stems = {p.stem for p in images}
    orphans = [p.name for p in files if p.suffix == ".txt" and p.stem not in image_stems]
    if orphans:
        raise DatasetError(
            f"Caption file(s) without an image in {folder}: {', '.join(orphans[:5])}. "
            "Add the image (same name, an image extension) or delete the caption."
        )
    unknown = sorted(set(captions) - {p.name for p in images})
    if unknown:
        raise DatasetError(f"{metadata} names images that are not in the folder: {', '.join(unknown[:5])}.")
    examples = []
    for image in images:
        txt = image.with_suffix(".txt")
        if txt.is_file():
            text = txt.read_text(encoding="utf-8").strip()
        elif image.name in captions:
            text = captions[image.name]
        elif instance_prompt is not None:
            text = instance_prompt
        else:
            raise DatasetError(
                f"{image} has no caption: add {txt.name} beside it, a line in metadata.jsonl, or pass an instance prompt."
            )
        examples.append(Example(image, text))
    return examples


def _read_metadata(path: Path) -> dict[str, str]:
    captions = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            captions[row["file_name"]] = str(row["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise DatasetError(
                f'{path}, line {number}: expected {{"file_name": "...", "text": "..."}} ({error}).'
            ) from None
    return captions


def load_image(path: Path, resolution: int) -> np.ndarray:
    """Open an image as RGB uint8 (resolution, resolution, 3): converted, resized and center-cropped as needed."""
    try:
        with Image.open(path) as im:
            im.load()
            image = im.copy()
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(f"Cannot read image {path} ({error}): replace or remove the file.") from None
    if image.mode != "RGB":
        logger.info("%s: converting %s to RGB", path.name, image.mode)
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        else:
            image = image.convert("RGB")
    if image.size != (resolution, resolution):
        logger.info("%s: resizing %dx%d and center-cropping to %d", path.name, *image.size, resolution)
        scale = resolution / min(image.size)
        w, h = max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))
        image = image.resize((w, h), Image.BICUBIC)
        left, top = (w - resolution) // 2, (h - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    return np.asarray(image, dtype=np.uint8)


def load_examples(examples: list[Example], resolution: int) -> torch.Tensor:
    """All images of a scanned folder as a (N, 3, R, R) float tensor in [-1, 1] (the VAE's input range)."""
    arrays = np.stack([load_image(e.image, resolution) for e in examples]).astype(np.float32)
    return torch.from_numpy(arrays / 127.5 - 1).permute(0, 3, 1, 2).contiguous()
