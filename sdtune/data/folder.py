"""Training data as users prepare it: a folder of images with their captions.

Three conventions are read, the ones the ecosystem uses:

* kohya / sd-scripts: ``cat01.png`` + ``cat01.txt`` (the caption), side by side; ``caption_extension`` picks
  another extension (``.caption``);
* kohya's repeat folders: a subfolder ``10_sks toy/`` counts each of its images 10 times per epoch, and its
  images without a caption file are captioned with the folder's name after ``N_`` ("sks toy"). Images at the
  top level count once; subfolders not named ``N_name`` are ignored, with a warning;
* Hugging Face imagefolder: images plus one ``metadata.jsonl`` with lines ``{"file_name": ..., "text": ...}``.

An image without a caption takes its repeat folder's name, else the ``instance_prompt`` if one is given
(DreamBooth style), else it is an error. Every problem is found before training starts and reported with
the file and the fix. Empty captions are warned about, and a folder whose captions are all empty is refused
(see `scan_folder`). Handled, not refused: RGBA/LA/P/L/CMYK images are converted to RGB (transparent pixels
over white), phone photos are turned upright by their EXIF orientation, and images are resized to cover
their training size and center-cropped (`fit_image`; `sdtune.data.buckets` picks the size).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .buckets import Size, cover_and_crop

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SIDE_FILES = (".txt", ".caption", ".jsonl", ".json", ".md", ".npz", ".toml", ".yaml", ".yml")
REPEAT_FOLDER = re.compile(r"^(\d+)_(.*)$")  # kohya: "10_sks toy" -> 10 repeats, caption "sks toy"
ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class DatasetError(ValueError):
    """A dataset folder that cannot be trained on, with what to do about it."""


@dataclass(frozen=True)
class Example:
    image: Path
    caption: str
    repeats: int = 1  # times the image counts per epoch (kohya's N_name folders)


def scan_folder(folder: str | os.PathLike, instance_prompt: str | None = None, caption_extension: str = ".txt") -> list[Example]:
    """List the (image, caption, repeats) of a dataset folder, checking every file before any work starts.

    Some empty captions get a warning naming them; all empty is an error: it would train the model to draw
    these images for every prompt (an unconditional fine-tune), almost always an accident (empty caption
    files from a tagger that failed).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"Dataset folder {folder} does not exist or is not a folder: pass a folder of images.")
    extension = caption_extension if caption_extension.startswith(".") else f".{caption_extension}"
    examples = _scan_one(folder, extension, instance_prompt, repeats=1)
    ignored = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        match = REPEAT_FOLDER.match(sub.name)
        if match and int(match[1]) > 0:
            examples += _scan_one(sub, extension, match[2].strip() or instance_prompt, repeats=int(match[1]))
        elif any(p.suffix.lower() in IMAGE_EXTENSIONS for p in sub.iterdir()):
            ignored.append(sub.name)
    if ignored:
        logger.warning("Ignored subfolder(s) of %s: %s. Name a subfolder N_name (e.g. 1_%s) to train on its images "
                       "N times per epoch (kohya's layout).", folder, ", ".join(ignored), ignored[0])
    if not examples:
        raise DatasetError(
            f"No images in {folder}: add {', '.join(IMAGE_EXTENSIONS)} files, each with a same-name {extension} caption "
            "(or a metadata.jsonl, or pass an instance prompt), or subfolders named like '10_sks toy'."
        )
    empty = [str(e.image) for e in examples if not e.caption.strip()]
    if len(empty) == len(examples):
        raise DatasetError(
            f"Every caption in {folder} is empty: the model would learn these images for every prompt. Write the "
            f"captions, or delete the empty {extension} files and pass an instance prompt (e.g. 'a photo of sks toy')."
        )
    if empty:
        logger.warning("%d of %d images have an empty caption (trained as the empty prompt): %s%s", len(empty), len(examples),
                       ", ".join(empty[:5]), ", ..." if len(empty) > 5 else "")
    return examples


def _scan_one(folder: Path, extension: str, fallback: str | None, repeats: int) -> list[Example]:
    """The examples of one folder (not its subfolders); `fallback` captions images that have no caption."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    strange = [p.name for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS + SIDE_FILES and not p.name.endswith(extension)]
    if strange:
        raise DatasetError(
            f"{folder} holds files that are neither images ({', '.join(IMAGE_EXTENSIONS)}) nor captions: "
            f"{', '.join(strange[:5])}. Move them out of the dataset folder."
        )
    metadata = folder / "metadata.jsonl"
    captions = _read_metadata(metadata) if metadata.is_file() else {}
    image_stems = {p.stem for p in images}
    orphans = [p.name for p in files if p.name.endswith(extension) and p.name[: -len(extension)] not in image_stems]
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
        caption_file = image.with_name(image.stem + extension)
        if caption_file.is_file():
            text = caption_file.read_text(encoding="utf-8").strip()
        elif image.name in captions:
            text = captions[image.name]
        elif fallback is not None:
            text = fallback
        else:
            others = [image.with_suffix(s).name for s in (".txt", ".caption") if s != extension and image.with_suffix(s).is_file()]
            hint = f" ({others[0]} is there: pass its extension as the caption extension)" if others else ""
            raise DatasetError(
                f"{image} has no caption: add {caption_file.name} beside it, a line in metadata.jsonl, or pass an instance prompt{hint}."
            )
        examples.append(Example(image, text, repeats))
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


def image_size(path: Path) -> Size:
    """(height, width) of an image as it will be trained on (upright), from its header: no pixels decoded."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            raw = im.info.get("exif")
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(f"Cannot read image {path} ({error}): replace or remove the file.") from None
    exif = Image.Exif()
    if raw:
        exif.load(raw)
    return (width, height) if exif.get(0x0112) in ROTATED else (height, width)


def read_image(path: Path) -> Image.Image:
    """An image as upright RGB: EXIF-rotated (phone photos), transparent pixels over white."""
    try:
        with Image.open(path) as im:
            im.load()
            image = ImageOps.exif_transpose(im)
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
    return image


def fit_image(image: Image.Image, size: Size) -> tuple[np.ndarray, Size]:
    """Resize to cover `size` (height, width) and center-crop to it: RGB uint8 (h, w, 3) and the crop's top-left."""
    (rh, rw), (top, left) = cover_and_crop(image.height, image.width, size)
    if (rh, rw) != (image.height, image.width):
        image = image.resize((rw, rh), Image.BICUBIC)
    return np.asarray(image.crop((left, top, left + size[1], top + size[0])), dtype=np.uint8), (top, left)


def warn_small_images(paths: list[Path], sizes: list[Size], targets: list[Size]) -> None:
    """A visible warning naming the images upscaled more than 4x per side to their training size."""
    small = [f"{p} ({w}x{h})" for p, (h, w), (th, tw) in zip(paths, sizes, targets) if max(th / h, tw / w) > 4]
    if small:
        logger.warning("%d image(s) are smaller than a quarter of their training size and will be upscaled into blurs: %s%s. "
                       "Use larger images or remove these.", len(small), ", ".join(small[:5]), ", ..." if len(small) > 5 else "")


def load_image(path: Path, resolution: int) -> np.ndarray:
    """Open an image as RGB uint8 (resolution, resolution, 3): converted, resized and center-cropped as needed."""
    return fit_image(read_image(path), (resolution, resolution))[0]


def load_examples(examples: list[Example], resolution: int) -> torch.Tensor:
    """All images of a scanned folder as a (N, 3, R, R) float tensor in [-1, 1] (the VAE's input range).

    Holds every image in memory at once: `sdtune.data.latents.prepare_latents` encodes them in batches instead.
    """
    warn_small_images([e.image for e in examples], [image_size(e.image) for e in examples], [(resolution, resolution)] * len(examples))
    arrays = np.stack([load_image(e.image, resolution) for e in examples]).astype(np.float32)
    return torch.from_numpy(arrays / 127.5 - 1).permute(0, 3, 1, 2).contiguous()
