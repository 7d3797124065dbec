"""Aspect-ratio buckets: whole subjects kept, one shape per batch, batches drawn by bucket and repeats, SDXL time ids."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image

from sdtune.data.buckets import bucket_sizes, cover_and_crop, nearest_bucket
from sdtune.data.folder import Example, fit_image, image_size, load_image, read_image
from sdtune.data.latents import Bucket, LatentSet, prepare_latents
from sdtune.models.tiny import new_vae

GREEN, BLUE, RED = (0, 200, 0), (0, 0, 220), (220, 0, 0)


def _person(path: Path, width: int, height: int) -> Path:
    """A red figure from the top edge to the bottom: green head in the top tenth, blue feet in the bottom tenth."""
    pixels = np.full((height, width, 3), 255, np.uint8)
    x0, x1 = width * 2 // 5, width * 3 // 5
    pixels[:, x0:x1] = RED
    pixels[: height // 10, x0:x1] = GREEN
    pixels[-(height // 10):, x0:x1] = BLUE
    Image.fromarray(pixels).save(path)
    return path


def _shows(pixels: np.ndarray, colour) -> bool:
    return bool((np.abs(pixels.astype(int) - colour).sum(-1) < 60).any())


def test_buckets_keep_about_the_area_in_steps():
    assert (768, 1344) in bucket_sizes(1024) and (1344, 768) in bucket_sizes(1024)  # SDXL's familiar 1344x768
    for resolution, step in ((512, 64), (1024, 64), (64, 8)):
        sizes = bucket_sizes(resolution, step)
        assert (resolution, resolution) in sizes
        for h, w in sizes:
            assert h % step == 0 and w % step == 0 and h * w <= resolution**2
            assert h * w > (resolution - step) * resolution * 0.8  # about constant area, not just "fits"
            assert resolution // 2 <= min(h, w) and max(h, w) <= 2 * resolution
    with pytest.raises(ValueError, match="must divide the resolution"):
        bucket_sizes(64, 48)


def test_nearest_bucket_crops_least():
    sizes = bucket_sizes(512)
    for h, w in ((4032, 3024), (1080, 1920), (1000, 1000), (300, 1200), (1000, 1138)):  # 1000x1138: |a - b| picks the square
        bucket = nearest_bucket(h, w, sizes)
        kept = lambda b: min(w / h / (b[1] / b[0]), (b[1] / b[0]) / (w / h))  # fraction of the image a cover-crop keeps
        assert kept(bucket) == max(kept(b) for b in sizes)


def test_portrait_subject_is_not_cropped_away(tmp_path):
    """A 3:4 portrait whose figure touches the top and bottom: the old square crop cuts off head and feet."""
    path = _person(tmp_path / "portrait.png", 96, 128)
    square = load_image(path, 64)  # today's center crop
    assert not _shows(square, GREEN) and not _shows(square, BLUE)  # the failure buckets fix
    bucket = nearest_bucket(*image_size(path), bucket_sizes(64, 8))
    pixels, (top, left) = fit_image(read_image(path), bucket)
    assert bucket == (72, 56) and pixels.shape == (72, 56, 3) and (top, left) == (1, 0)
    assert _shows(pixels, GREEN) and _shows(pixels, BLUE) and _shows(pixels, RED)
    assert _shows(fit_image(read_image(path), (64, 64))[0], GREEN) is False  # the same function, square: as before


def _mixed_folder(folder: Path) -> list[Example]:
    folder.mkdir()
    sizes = {"portrait": (96, 128), "tall": (60, 120), "landscape": (160, 90), "wide": (128, 72), "square": (80, 80), "square2": (64, 64)}
    return [Example(_person(folder / f"{name}.png", w, h), name) for name, (w, h) in sizes.items()]


def test_each_batch_is_one_bucket_and_time_ids_are_right(tmp_path):
    examples = _mixed_folder(tmp_path / "data")
    pipe = SimpleNamespace(vae=new_vae().eval(), vae_scale_factor=8)
    latents = prepare_latents(pipe, examples, 64, buckets=True, step=8, flip=True)
    assert sorted(b.size for b in latents.buckets) == [(48, 80), (64, 64), (72, 56), (88, 40)]
    bucket_of = {e.caption: nearest_bucket(*image_size(e.image), bucket_sizes(64, 8)) for e in examples}
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(40):
        batch = latents.draw(4, gen)
        h, w = batch.size
        assert batch.latents.shape == (4, 8, h // 8, w // 8)
        assert all(bucket_of[c] == batch.size for c in batch.captions)
        seen.add(batch.size)
    assert len(seen) == 4
    # SDXL micro-conditioning, (height, width) each: original size, crop top-left in the resized image, bucket
    portrait = [i for i, p in enumerate(latents.images) if p.name == "portrait.png"]
    landscape = [i for i, p in enumerate(latents.images) if p.name == "landscape.png"]
    ids = lambda items: latents.time_ids(SimpleNamespace(items=torch.tensor(items), size=bucket_of[latents.captions[items[0]]]))
    # 96x128 portrait -> bucket 72x56: scaled to 75x56, 3 extra rows, crop top 1; its mirror crops the same
    assert ids(portrait).tolist() == [[128, 96, 1, 0, 72, 56], [128, 96, 1, 0, 72, 56]]
    # 160x90 landscape -> bucket 48x80: scaled to 48x85, crop left 2; in the mirrored image the crop starts at 85-80-2 = 3
    assert ids(landscape).tolist() == [[90, 160, 0, 2, 48, 80], [90, 160, 0, 3, 48, 80]]
    mirror_left = cover_and_crop(90, 160, (48, 80))[0][1] - 80 - 2
    assert mirror_left == 3


def test_sdxl_unet_takes_every_bucket_with_its_time_ids(tmp_path):
    """Batches of each bucket, with their time ids, through a tiny random SDXL UNet (as tests/test_sdxl.py builds)."""
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(16, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8, sample_size=64)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 32, norm_num_groups=8,
    )
    pipe = SimpleNamespace(vae=vae.eval(), vae_scale_factor=8)
    latents = prepare_latents(pipe, _mixed_folder(tmp_path / "data"), 64, buckets=True, step=8)
    gen = torch.Generator().manual_seed(1)
    for _ in range(12):
        batch = latents.draw(2, gen)
        cond = {"text_embeds": torch.randn(2, 32), "time_ids": latents.time_ids(batch)}
        with torch.no_grad():
            out = unet(batch.latents, torch.tensor([10, 500]), encoder_hidden_states=torch.randn(2, 7, 64), added_cond_kwargs=cond).sample
        assert out.shape == batch.latents.shape and torch.isfinite(out).all()


def _toy_set(counts: list[int], repeats: list[int]) -> LatentSet:
    """A LatentSet of len(counts) buckets (no encoding): bucket k holds counts[k] items; item i has repeats[i]."""
    buckets, first = [], 0
    for k, count in enumerate(counts):
        items = torch.arange(first, first + count)
        buckets.append(Bucket((8 * (k + 1), 8), items, items.float().view(-1, 1, 1, 1).expand(-1, 1, k + 1, 1).clone(),
                              torch.zeros(count, 1, k + 1, 1)))
        first += count
    n = first
    return LatentSet(buckets, [Path(f"{i}.png") for i in range(n)], [str(i) for i in range(n)], torch.tensor(repeats),
                     torch.zeros(n, 2, dtype=torch.long), torch.zeros(n, 2, dtype=torch.long))


@pytest.mark.parametrize("counts, repeats, share", [([1, 3], [1, 1, 1, 1], 0.25), ([1, 3], [3, 1, 1, 1], 0.5), ([1, 3], [1, 3, 3, 3], 0.1)])
def test_buckets_are_drawn_by_images_times_repeats(counts, repeats, share):
    latents, gen = _toy_set(counts, repeats), torch.Generator().manual_seed(0)
    first = sum(latents.draw(2, gen).size == (8, 8) for _ in range(4000)) / 4000
    assert abs(first - share) < 0.03


def test_items_within_a_bucket_are_drawn_by_repeats_and_latents_match_items():
    latents, gen = _toy_set([2], [1, 3]), torch.Generator().manual_seed(0)
    items = torch.cat([latents.draw(8, gen).items for _ in range(500)])
    assert abs((items == 1).float().mean().item() - 0.75) < 0.03
    batch = latents.draw(8, gen)
    assert torch.equal(batch.latents.flatten(), batch.items.float())  # row r of the batch is item items[r] (std 0)


def test_draws_depend_only_on_the_generator_state():
    latents, gen = _toy_set([2, 3, 1], [1, 2, 1, 1, 4, 1]), torch.Generator().manual_seed(7)
    for _ in range(3):
        latents.draw(4, gen)
    state = gen.get_state()
    first = [latents.draw(4, gen) for _ in range(5)]
    gen.set_state(state)
    again = [latents.draw(4, gen) for _ in range(5)]
    assert all(torch.equal(a.items, b.items) and torch.equal(a.latents, b.latents) for a, b in zip(first, again))
