"""A subject the tiny model never drew: a disc split down the middle into two colours, and a rule that sees it.

The toy world draws every object in one colour, so a disc whose left half is one palette colour and whose right
half another is new to the tiny model, the way a user's own toy is new to Stable Diffusion. It is drawn here, with
numpy, outside the toy world's concepts (the judge has no name for it), to test personalization as a user meets it:
a few unlabeled images of an object, trained under "a sks toy".

Whether an image shows the subject is decided by a rule on its pixels, so it needs no classifier that knows it:

1. background: the median colour of a 3-pixel border; foreground: the pixels farther than 0.25 from it (RGB in
   [0, 1]), its holes filled;
2. round: the foreground's bounding box is about square (sides within 25% of each other) and it fills about
   pi/4 of it (0.60 to 0.90: a square fills 1, a diamond or a triangle 1/2), and the disc of the same area at its
   centroid covers at least 80% of it (intersection over union);
3. split: the median colour of the foreground's pixels left of the centroid is within 0.25 of the subject's left
   colour (`toyworld.COLOURS_RGB`), that of the pixels right of it within 0.25 of the right colour.

`shows` is checked on clean renders (every one passes) and on near misses (a one-colour disc, the halves swapped,
a split square, a blank image: none passes) in `tests/test_defaults.py`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from ..data import toyworld
from ..io import check_output_folder, staged_folder
from .checker import fill_holes
from .stats import Rate

BORDER = 3  # pixels of the image's edge read as background
FOREGROUND_DISTANCE = 0.25  # RGB distance (channels in [0, 1]) from the background beyond which a pixel is the object
# how far a half's median colour may be from the subject's: less than the distance between the palette's closest colours
# (yellow-orange 0.30, red-orange 0.39, blue-purple 0.42), so a neighbour colour never passes for the subject's
COLOUR_TOLERANCE = 0.25
PALETTE = {name: np.array(rgb, dtype=float) / 255 for name, rgb in toyworld.COLOURS_RGB.items()}


def render(left: str, right: str, background: str = "white", cx: float = 32.0, cy: float = 32.0, radius: float = 16.0,
           shape: str = "circle") -> Image.Image:
    """A 64x64 disc (or another toy-world `shape`) whose left half is colour `left`, right half `right`."""
    for colour in (left, right):
        if colour not in PALETTE:
            raise ValueError(f"Unknown colour {colour!r}: choose one of {', '.join(PALETTE)}.")
    ys, xs = np.mgrid[0 : toyworld.SIZE, 0 : toyworld.SIZE].astype(np.float64) + 0.5
    coverage = np.clip(0.5 - toyworld.shape_sdf(shape, xs - cx, ys - cy, radius), 0, 1)[..., None]
    share_right = np.clip(xs - cx + 0.5, 0, 1)[..., None]  # anti-aliased split line at x = cx
    fill = (1 - share_right) * PALETTE[left] + share_right * PALETTE[right]
    img = (1 - coverage) * toyworld.background_image(background) + coverage * fill
    return Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), mode="RGB")


def training_images(left: str, right: str, n: int = 6, seed: int = 0, backgrounds: Sequence[str] = ("white",)) -> list[Image.Image]:
    """`n` renders of the subject at random sizes (radius 12-18 px) and places, backgrounds taken in turn."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        radius = float(rng.uniform(12, 18))
        cx, cy = (float(rng.uniform(radius + 3, toyworld.SIZE - radius - 3)) for _ in range(2))
        images.append(render(left, right, backgrounds[i % len(backgrounds)], cx, cy, radius))
    return images


def write_folder(folder: str | os.PathLike, images: Iterable[Image.Image], overwrite: bool = False) -> Path:
    """Save images as `0000.png`, ... with no captions: a DreamBooth folder, captioned by the instance prompt."""
    folder = check_output_folder(folder, overwrite)
    with staged_folder(folder) as tmp:
        for i, image in enumerate(images):
            image.save(tmp / f"{i:04d}.png")
    return folder


def shows(image: Image.Image, left: str, right: str) -> bool:
    """True when the image shows a round object whose left half is `left` and right half `right` (module docstring)."""
    x = np.asarray(image.convert("RGB"), dtype=float) / 255
    h, w, _ = x.shape
    border = np.ones((h, w), bool)
    border[BORDER:-BORDER, BORDER:-BORDER] = False
    background = np.median(x[border], axis=0)
    foreground = fill_holes(np.linalg.norm(x - background, axis=-1) > FOREGROUND_DISTANCE)
    area = int(foreground.sum())
    if area < 40:  # nothing drawn (a disc of radius 12 has 450 pixels)
        return False
    ys, xs = np.nonzero(foreground)
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    extent = area / (width * height)
    if not (0.8 <= width / height <= 1.25 and 0.60 <= extent <= 0.90):
        return False
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    gy, gx = np.mgrid[0:h, 0:w] + 0.5
    disc = np.hypot(gx - cx, gy - cy) <= np.sqrt(area / np.pi)
    if (disc & foreground).sum() / (disc | foreground).sum() < 0.8:
        return False
    pixels = x[foreground]
    on_left, on_right = xs + 0.5 < cx - 1, xs + 0.5 > cx + 1  # a pixel's width either side of the split left out
    if not (on_left.any() and on_right.any()):
        return False
    medians = np.median(pixels[on_left], axis=0), np.median(pixels[on_right], axis=0)
    return all(np.linalg.norm(m - PALETTE[c]) < COLOUR_TOLERANCE for m, c in zip(medians, (left, right)))


def background_of(image: Image.Image) -> str:
    """The plain toy-world background ('white', 'black' or 'gray') nearest the median of the image's border."""
    x = np.asarray(image.convert("RGB"), dtype=float) / 255
    border = np.concatenate([x[:BORDER].reshape(-1, 3), x[-BORDER:].reshape(-1, 3), x[:, :BORDER].reshape(-1, 3),
                             x[:, -BORDER:].reshape(-1, 3)])
    median = np.median(border, axis=0)
    return min(toyworld.BACKGROUNDS_RGB, key=lambda b: np.linalg.norm(median - np.array(toyworld.BACKGROUNDS_RGB[b]) / 255))


def rate(images: Sequence[Image.Image], left: str, right: str, background: str | None = None) -> Rate:
    """How many images show the subject (and, if `background` is given, on that background), with its interval."""
    return Rate.of(shows(im, left, right) and (background is None or background_of(im) == background) for im in images)
