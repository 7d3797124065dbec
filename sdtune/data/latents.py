"""The latents a run trains on: images read and encoded a batch at a time, kept per bucket, cached on disk.

The VAE is frozen, so each image's latent distribution is computed once:

    mean, std = VAE.encode(x) * scaling_factor         z0 = mean + std * eps,  eps ~ N(0, I)  at every step

Memory holds the latents and one batch of pixels, never the whole folder's pixels (kohya's
``cache_latents``). With ``cache_dir`` each image's latents are also written to a file, reused by later runs
(kohya's ``cache_latents_to_disk``) as long as its key matches: the image file (path, size, modification
time), its bucket, the flip, and the VAE (a hash of its weights and config). Anything else is recomputed.
The default folder, `default_cache_folder`, is hidden inside the dataset folder, where `scan_folder` does
not look. The VAE encodes in float32 when its config says ``force_upcast`` (SDXL's VAE overflows in float16;
diffusers' pipelines upcast it likewise), and is cast back afterwards.

Batches are drawn within one bucket: a bucket with probability proportional to its images times their
repeats, then images within it in proportion to their repeats, all from the trainer's `torch.Generator`,
so that a run resumed from a checkpoint (which saves the generator's state) draws the same batches.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..io import read_safetensors, staged_file
from .buckets import DEFAULT_STEP, Size, bucket_sizes, cover_and_crop, nearest_bucket
from .folder import Example, fit_image, image_size, read_image, warn_small_images

CACHE_FOLDER = ".sdtune-cache"  # hidden: scan_folder skips it
CACHE_FORMAT = "1"  # raise when the way pixels are made from an image changes: older entries are then recomputed
PIXELS_PER_BATCH = 32 * 64 * 64  # pixels encoded at once: 32 images at 64 px, 2 at 256 px, 1 from 256x512 up


@dataclass
class Bucket:
    """The latents of the images of one training size."""

    size: Size  # (height, width) in pixels
    items: torch.Tensor  # (n,) the LatentSet's item of each row
    mean: torch.Tensor  # (n, C, height / f, width / f): the VAE's mean times scaling_factor (f: the VAE's factor)
    std: torch.Tensor  # same shape: its standard deviation times scaling_factor


@dataclass
class Batch:
    """Images drawn for one step, all of one bucket."""

    latents: torch.Tensor  # (B, C, h, w): z0 = mean + std * eps
    items: torch.Tensor  # (B,) which items of the LatentSet
    captions: list[str]  # their captions, as written (shuffle them with sdtune.data.captions.shuffle_caption)
    size: Size  # the bucket's (height, width) in pixels


@dataclass
class LatentSet:
    """Latents of a folder by bucket, and per item (an image, or with flip its mirror image too, items n..2n-1)
    its caption, repeats and, for SDXL, original size and crop."""

    buckets: list[Bucket]
    images: list[Path]  # per item
    captions: list[str]
    repeats: torch.Tensor  # (N,) times each item counts per epoch
    original_sizes: torch.Tensor  # (N, 2) the image's (height, width) before resizing
    crops: torch.Tensor  # (N, 2) the crop's (top, left) in the resized (for a mirror item: mirrored) image

    def __len__(self) -> int:
        return len(self.images)

    def draw(self, batch_size: int, generator: torch.Generator) -> Batch:
        """`batch_size` items of one bucket (with replacement) and their sampled latents, from `generator` alone."""
        bucket = self.buckets[0]
        if len(self.buckets) > 1:  # P(bucket) = sum of its items' repeats / sum of all repeats
            weights = torch.stack([self.repeats[b.items].sum() for b in self.buckets]).double()
            bucket = self.buckets[int(torch.multinomial(weights, 1, generator=generator))]
        repeats = self.repeats[bucket.items]
        if bool((repeats == repeats[0]).all()):  # uniform: the same draws as sdtune's square trainer made before buckets
            rows = torch.randint(0, len(bucket.items), (batch_size,), generator=generator)
        else:  # P(item) = its repeats / the bucket's
            rows = torch.multinomial(repeats.double(), batch_size, replacement=True, generator=generator)
        mean = bucket.mean[rows]
        latents = mean + bucket.std[rows] * torch.randn(mean.shape, generator=generator)
        items = bucket.items[rows]
        return Batch(latents, items, [self.captions[i] for i in items.tolist()], bucket.size)

    def time_ids(self, batch: Batch) -> torch.Tensor:
        """SDXL's micro-conditioning, one row per image: original_size + crops_coords_top_left + target_size,
        each (height, width) as in diffusers' StableDiffusionXLPipeline._get_add_time_ids; (B, 6) float32."""
        target = torch.tensor(batch.size).expand(len(batch.items), 2)
        return torch.cat([self.original_sizes[batch.items], self.crops[batch.items], target], dim=1).float()


def default_cache_folder(data: str | os.PathLike) -> Path:
    """Where the disk cache of a dataset folder lives: a hidden folder inside it."""
    return Path(data) / CACHE_FOLDER


def prepare_latents(pipe, examples: list[Example], resolution: int, *, buckets: bool = False, step: int = DEFAULT_STEP,
                    flip: bool = False, cache_dir: str | os.PathLike | None = None, batch_size: int | None = None) -> LatentSet:
    """Encode the examples' images with `pipe.vae`, a batch at a time, into a LatentSet.

    buckets: aspect-ratio buckets of about resolution^2 pixels, sides multiples of `step` (see
    sdtune.data.buckets); off, every image is center-cropped to resolution x resolution. flip: also the mirror
    images. cache_dir: read and write each image's latents there (e.g. default_cache_folder(data)); None
    keeps them in memory only. batch_size: images per VAE call (default: PIXELS_PER_BATCH pixels' worth).
    """
    cache_dir = _writable(Path(cache_dir)) if cache_dir is not None else None
    sizes = [image_size(e.image) for e in examples]  # headers only: every unreadable file is found before any encoding
    choices = bucket_sizes(resolution, step) if buckets else [(resolution, resolution)]
    targets = [nearest_bucket(h, w, choices) for h, w in sizes]
    warn_small_images([e.image for e in examples], sizes, targets)
    n, copies = len(examples), 2 if flip else 1
    original, crops = torch.zeros(copies * n, 2, dtype=torch.long), torch.zeros(copies * n, 2, dtype=torch.long)
    vae, factor = pipe.vae, pipe.vae_scale_factor
    model = vae_fingerprint(vae) if cache_dir else ""
    groups: dict[Size, list[int]] = {}
    for i, size in enumerate(targets):
        groups.setdefault(size, []).append(i)
    result = []
    with torch.no_grad(), _encoding_precision(vae), tqdm(total=n, desc="latents", unit="image", mininterval=1.0, leave=False) as bar:
        for size, members in sorted(groups.items()):
            m = len(members)  # bucket rows: j for its image members[j], m + j for that image's mirror
            mean = torch.empty(copies * m, vae.config.latent_channels, size[0] // factor, size[1] // factor)
            std = torch.empty_like(mean)
            per_call = batch_size or max(1, PIXELS_PER_BATCH // (size[0] * size[1] * copies))
            for start in range(0, m, per_call):
                chunk = members[start:start + per_call]
                entries = _entries(vae, [examples[i].image for i in chunk], size, flip, cache_dir, model)
                for j, i, entry in zip(range(start, start + len(chunk)), chunk, entries):
                    rows, its = [j, m + j][:copies], [i, n + i][:copies]
                    mean[rows], std[rows] = entry["mean"], entry["std"]
                    original[its], crops[its] = entry["original_size"], entry["crops"]
                bar.update(len(chunk))
            items = members + ([n + i for i in members] if flip else [])
            result.append(Bucket(size, torch.tensor(items), mean, std))
    return LatentSet(result, [e.image for e in examples] * copies, [e.caption for e in examples] * copies,
                     torch.tensor([e.repeats for e in examples] * copies), original, crops)


def _entries(vae, paths: list[Path], size: Size, flip: bool, cache_dir: Path | None, model: str) -> list[dict[str, torch.Tensor]]:
    """Each image's latents (see _encode_batch): from its cache entry when one matches, else encoded, in one
    VAE call for all that are missing, and written to the cache."""
    keys = [_cache_key(path, cache_dir, size, flip, model) for path in paths] if cache_dir else [{}] * len(paths)
    entries = [_read_cache(cache_dir, key) for key in keys] if cache_dir else [None] * len(paths)
    missing = [k for k, entry in enumerate(entries) if entry is None]
    if missing:
        for k, entry in zip(missing, _encode_batch(vae, [paths[k] for k in missing], size, flip)):
            entries[k] = entry
            if cache_dir:
                with staged_file(_cache_path(cache_dir, keys[k])) as tmp:
                    save_file(entry, str(tmp), metadata=keys[k])
    return entries


def _encode_batch(vae, paths: list[Path], size: Size, flip: bool) -> list[dict[str, torch.Tensor]]:
    """Read, fit and encode images (and their mirrors) in one VAE call; per image: its latents' mean and std
    (copies, C, h, w), original_size (2,) and crops (copies, 2), the format of a cache file."""
    arrays, placements = [], []
    for path in paths:
        image = read_image(path)
        pixels, (top, left) = fit_image(image, size)
        resized_width = cover_and_crop(image.height, image.width, size)[0][1]
        mirror_left = resized_width - size[1] - left  # the same crop, measured in the mirrored image
        placements.append((torch.tensor([image.height, image.width]), torch.tensor([[top, left], [top, mirror_left]][: 1 + flip])))
        arrays.append(pixels)
    x = torch.from_numpy(np.stack(arrays).astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2).contiguous()  # [0, 255] -> [-1, 1]
    if flip:
        x = torch.cat([x, x.flip(-1)])
    dist = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
    scale = vae.config.scaling_factor
    mean, std = dist.mean.float().cpu() * scale, dist.std.float().cpu() * scale
    k = len(paths)
    return [{"mean": mean[[r, k + r][: 1 + flip]].contiguous(), "std": std[[r, k + r][: 1 + flip]].contiguous(),
             "original_size": original_size, "crops": crops} for r, (original_size, crops) in enumerate(placements)]


def vae_fingerprint(vae) -> str:
    """A hash of everything the cached latents depend on in the VAE: its weights, config and encoding dtype."""
    h = hashlib.sha256()
    config = {k: v for k, v in vae.config.items() if not k.startswith("_")}  # not _name_or_path: where it was loaded from
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(str(_encode_dtype(vae)).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _encode_dtype(vae) -> torch.dtype:
    return torch.float32 if getattr(vae.config, "force_upcast", False) else vae.dtype


@contextmanager
def _encoding_precision(vae) -> Iterator[None]:
    """Upcast a half-precision VAE to float32 while it encodes, when its config asks (force_upcast)."""
    dtype = vae.dtype
    if _encode_dtype(vae) == dtype:
        yield
        return
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # not "modules ... should be kept in float32: []" at each cast
    try:
        vae.to(torch.float32)
        yield
    finally:
        vae.to(dtype)
        diffusers_logging.set_verbosity(verbosity)


def _writable(cache_dir: Path) -> Path:
    """The cache folder, created; one clear error before any work if it cannot be written."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(f"Cannot create the latent cache folder {cache_dir} ({error}): pass another one, "
                      "or turn the disk cache off.") from None
    if not os.access(cache_dir, os.W_OK):
        raise PermissionError(f"The latent cache folder {cache_dir} is not writable: pass another one, or turn the disk cache off.")
    return cache_dir


def _cache_key(image: Path, cache_dir: Path, size: Size, flip: bool, model: str) -> dict[str, str]:
    """What a cache entry must match to be used; relative to the dataset folder, so the folder may move."""
    stat = image.stat()
    name = os.path.relpath(image.resolve(), cache_dir.resolve().parent)
    return {"format": CACHE_FORMAT, "image": name, "bytes": str(stat.st_size), "mtime_ns": str(stat.st_mtime_ns),
            "bucket": f"{size[0]}x{size[1]}", "flip": str(flip), "vae": model}


def _cache_path(cache_dir: Path, key: dict[str, str]) -> Path:
    return cache_dir / key["vae"][:16] / f"{hashlib.sha256(key['image'].encode()).hexdigest()[:24]}.safetensors"


def _read_cache(cache_dir: Path, key: dict[str, str]) -> dict[str, torch.Tensor] | None:
    """The entry's tensors if it exists and was made for exactly this key; None means: encode again."""
    path = _cache_path(cache_dir, key)
    if not path.is_file():
        return None
    try:
        tensors, metadata = read_safetensors(path, "latent cache")
    except ValueError:  # damaged (an interrupted copy): recomputed and replaced
        return None
    return tensors if metadata == key else None
