"""Aspect-ratio buckets (kohya's ``--enable_bucket``): train on portrait and landscape images without
cutting off their top and bottom.

A square crop of a 3:4 portrait loses a quarter of its height, often a head and feet. Instead, every image
goes to the *bucket* (a training size) nearest its own shape, and each batch holds images of one bucket, so
the UNet sees whole pictures at several shapes. The buckets, all sizes as (height, width) in pixels:

    h * w <= R^2,   h and w multiples of `step`,   R / 2 <= h, w <= 2 R      (R: the model's resolution)

for each width the tallest height that fits the area (kohya's ``make_bucket_resolutions``, with its default
side limits of R/2 and 2R at 512 px), plus the square. The step: SD and SDXL's UNet halves its latent three
times and the VAE divides pixels by 8, so sides in steps of 8 x 2^3 = 64 px pass through the UNet without
rounding (the convention). The least step is the VAE's factor 8 (a latent has whole sides); in between the
UNet interpolates its upsampled features to the skip connections' odd sizes (diffusers'
``forward_upsample_size``), which works but is not what the model saw in pretraining. The tiny model's
64 px leaves only 64x64 and 32x128 with a 32 px step (VAE 8 x its UNet's 2^2), so buckets there need step 8.
"""

from __future__ import annotations

import math

DEFAULT_STEP = 64

Size = tuple[int, int]  # (height, width), the order of tensor shapes and of SDXL's time ids


def bucket_sizes(resolution: int, step: int = DEFAULT_STEP) -> list[Size]:
    """Every bucket (height, width) of about `resolution`^2 pixels, sides multiples of `step` in [R/2, 2R]."""
    if step <= 0 or resolution % step:
        raise ValueError(f"Bucket step {step} must divide the resolution {resolution} (e.g. 64 for SD and SDXL, 8 for 64 px).")
    area, low, high = resolution**2, resolution // 2, 2 * resolution
    sizes = {(resolution, resolution)}
    for width in range(math.ceil(low / step) * step, high + 1, step):
        height = area // width // step * step  # the tallest multiple of step with h * w <= R^2
        if low <= height <= high:
            sizes |= {(height, width), (width, height)}
    return sorted(sizes)


def nearest_bucket(height: int, width: int, buckets: list[Size]) -> Size:
    """The bucket whose aspect ratio is nearest the image's on a log scale: the one that crops the least.

    Scaled to cover a bucket of aspect b, an image of aspect a keeps min(a/b, b/a) = exp(-|ln a - ln b|) of
    its area, so the smallest |ln a - ln b| crops the least (kohya compares |a - b|, which favours wide buckets).
    """
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[1] / b[0]) - aspect), b))


def cover_and_crop(height: int, width: int, bucket: Size) -> tuple[Size, Size]:
    """Where an image of (height, width) goes in a bucket: its resized size, scaled to cover the bucket, and the
    top-left corner of the bucket-sized center crop of it (SDXL's crops_coords_top_left)."""
    bh, bw = bucket
    scale = max(bh / height, bw / width)  # the smallest scale at which the image covers the bucket
    rh, rw = max(bh, round(height * scale)), max(bw, round(width * scale))
    return (rh, rw), ((rh - bh) // 2, (rw - bw) // 2)
