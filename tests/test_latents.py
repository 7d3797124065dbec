"""prepare_latents: today's latents without buckets, a disk cache that is reused and never stale, float32 encoding."""

import copy
import logging
import os
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from sdtune.data import toyworld
from sdtune.data.folder import load_examples, scan_folder
from sdtune.data.latents import CACHE_FOLDER, default_cache_folder, prepare_latents
from sdtune.models.tiny import new_vae


@pytest.fixture
def data(tmp_path):
    return toyworld.write_dataset(toyworld.sample_scenes(5, seed=2), tmp_path / "data")


@pytest.fixture
def vae():
    torch.manual_seed(0)
    return new_vae().eval()


def _pipe(vae):
    return SimpleNamespace(vae=vae, vae_scale_factor=8)


class Counter:
    """Counts the images the VAE encodes."""

    def __init__(self, vae, monkeypatch):
        self.images, encode = 0, vae.encode

        def counted(x, *args, **kwargs):
            self.images += len(x)
            return encode(x, *args, **kwargs)

        monkeypatch.setattr(vae, "encode", counted)


@pytest.mark.parametrize("flip", [False, True])
def test_square_latents_equal_the_old_whole_folder_path(data, vae, flip):
    examples = scan_folder(data)
    pixels = load_examples(examples, 64)  # the old path: the whole folder in one tensor, then one VAE call
    with torch.no_grad():
        dist = vae.encode(torch.cat([pixels, pixels.flip(-1)]) if flip else pixels).latent_dist
    mean, std = dist.mean * vae.config.scaling_factor, dist.std * vae.config.scaling_factor
    latents = prepare_latents(_pipe(vae), examples, 64, flip=flip, batch_size=2)
    (bucket,) = latents.buckets
    assert torch.allclose(bucket.mean, mean, atol=1e-5) and torch.allclose(bucket.std, std, atol=1e-5)
    assert torch.equal(bucket.items, torch.arange(len(mean)))  # items n..2n-1 are the mirror images, as before
    assert latents.captions == [e.caption for e in examples] * (1 + flip)


def test_disk_cache_is_reused_and_recomputed_when_a_file_changes(data, vae, monkeypatch):
    examples, cache = scan_folder(data), default_cache_folder(data)
    count = Counter(vae, monkeypatch)
    first = prepare_latents(_pipe(vae), examples, 64, flip=True, cache_dir=cache)
    assert count.images == 10  # 5 images and their mirrors
    files = sorted(cache.rglob("*"))
    assert all(f.is_dir() or f.suffix == ".safetensors" and not f.name.startswith(".") for f in files)  # no staged leftovers
    assert scan_folder(data) == examples  # the hidden cache does not disturb the folder's checks

    again = prepare_latents(_pipe(vae), examples, 64, flip=True, cache_dir=cache)
    assert count.images == 10  # nothing encoded: every entry reused
    assert torch.equal(again.buckets[0].mean, first.buckets[0].mean) and torch.equal(again.crops, first.crops)

    changed = examples[1].image
    Image.new("RGB", (64, 64), (250, 250, 0)).save(changed)  # new content, size and modification time
    os.utime(changed, ns=(1, 1))
    third = prepare_latents(_pipe(vae), examples, 64, flip=True, cache_dir=cache)
    assert count.images == 12  # only the changed image (and its mirror) encoded again
    assert not torch.allclose(third.buckets[0].mean[1], first.buckets[0].mean[1])
    assert torch.equal(third.buckets[0].mean[[0, 2, 3, 4]], first.buckets[0].mean[[0, 2, 3, 4]])

    prepare_latents(_pipe(vae), examples, 64, flip=False, cache_dir=cache)  # another flip setting: not the same entry
    prepare_latents(_pipe(vae), examples, 64, buckets=True, step=8, flip=False, cache_dir=cache)  # the bucket (64x64) is the same
    assert count.images == 17


def test_disk_cache_is_not_used_for_another_model(data, vae, monkeypatch):
    examples, cache = scan_folder(data), default_cache_folder(data)
    first = prepare_latents(_pipe(vae), examples, 64, cache_dir=cache)
    other = copy.deepcopy(vae)
    with torch.no_grad():
        other.encoder.conv_in.bias += 0.5
    count = Counter(other, monkeypatch)
    second = prepare_latents(_pipe(other), examples, 64, cache_dir=cache)
    assert count.images == 5 and not torch.allclose(second.buckets[0].mean, first.buckets[0].mean)
    prepare_latents(_pipe(other), examples, 64, cache_dir=cache)
    assert count.images == 5  # each model keeps its own entries


def test_damaged_entry_is_recomputed(data, vae, monkeypatch):
    examples, cache = scan_folder(data), default_cache_folder(data)
    first = prepare_latents(_pipe(vae), examples, 64, cache_dir=cache)
    entry = next(cache.rglob("*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:100])
    count = Counter(vae, monkeypatch)
    again = prepare_latents(_pipe(vae), examples, 64, cache_dir=cache)
    assert count.images == 1 and torch.allclose(again.buckets[0].mean, first.buckets[0].mean, atol=1e-5)  # alone, not in a batch of 5


def test_read_only_cache_folder_is_one_clear_error(data, vae, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(OSError, match="Cannot create the latent cache folder"):
        prepare_latents(_pipe(vae), scan_folder(data), 64, cache_dir=blocked / CACHE_FOLDER)


def test_half_precision_vae_encodes_in_float32_when_its_config_says_force_upcast(data, vae):
    """SDXL's VAE overflows in float16; diffusers upcasts it. The half VAE must give the float32 result of its own weights."""
    examples = scan_folder(data)
    half = copy.deepcopy(vae).half()
    reference = prepare_latents(_pipe(copy.deepcopy(half).float()), examples, 64)
    assert half.config.force_upcast
    upcast = prepare_latents(_pipe(half), examples, 64)
    assert half.dtype == torch.float16  # cast back afterwards
    assert torch.equal(upcast.buckets[0].mean, reference.buckets[0].mean)
    half.register_to_config(force_upcast=False)  # the check can fail: in float16 the result differs
    assert not torch.equal(prepare_latents(_pipe(half), examples, 64).buckets[0].mean, reference.buckets[0].mean)


def test_tiny_images_are_warned_about_by_name(tmp_path, vae, caplog):
    folder = tmp_path / "data"
    folder.mkdir()
    for name, side in (("tiny.png", 8), ("small.png", 20)):
        Image.new("RGB", (side, side), (90, 10, 10)).save(folder / name)
        (folder / name).with_suffix(".txt").write_text("a square")
    with caplog.at_level(logging.WARNING):
        prepare_latents(_pipe(vae), scan_folder(folder), 64)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "tiny.png (8x8)" in warnings[0] and "small.png" not in warnings[0]  # 64 / 20 = 3.2x: fine
